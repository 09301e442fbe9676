"""Test-time adaptation (vlprompt/tta, trainers/tta): selection, marginal entropy, ECE, TPT's AdamW step against
the official per-image computation, episodic reset, online state, refusals, views, and the CLI on the toy world."""
import json
import math
import os.path as osp
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, "benchmarks"))

import trainers  # noqa: E402,F401  (registers the trainers and the test-time procedures)
from vlprompt.tta import TTA_REGISTRY, BaseModel, Sample, TTAError  # noqa: E402
from vlprompt.tta import TestTimeProcedure as Procedure  # noqa: E402
from vlprompt.tta.objectives import avg_entropy, expected_calibration_error, select_confident  # noqa: E402

CLASSES = ["red square", "green circle", "blue triangle"]


def tiny_clip():
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = open_clip.model.CLIP(
            embed_dim=24, quick_gelu=True,
            vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=16, head_width=16, mlp_ratio=2.0),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2, mlp_ratio=2.0),
        ).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def zs_base(clip_model):
    from vlprompt.clip.blocks import ZeroShotHead

    head = ZeroShotHead(clip_model, CLASSES, "a photo of a {}.")
    return BaseModel("ZeroshotCLIP", "zero_shot", clip_model, CLASSES, head.logit_scale, head.image_features,
                     head.text_features, torch.device("cpu"))


def tta_cfg(method="TPT", **node):
    from vlprompt.config import extend_cfg, get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TTA.METHOD = method
    cfg.TTA.N_VIEWS = 8
    for k, v in node.items():
        setattr(cfg.TTA[method.upper() if method != "CTPT" else "CTPT"], k, v)
    return cfg


# ------------------------------------------------------------------------------------------- objectives


def test_select_confident_keeps_int_n_p_lowest_entropy_views_in_order():
    logits = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [1.0, 0.0, 0.0], [9.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    out, idx = select_confident(logits, 0.5)  # int(5 * 0.5) = 2
    assert idx.tolist() == [3, 1]
    assert torch.equal(out, logits[[3, 1]])
    assert select_confident(logits, 0.1)[1].numel() == 0  # int(0.5) = 0: floor, as the official code
    assert select_confident(torch.randn(64, 7), 0.1)[1].numel() == 6


def test_avg_entropy_is_the_entropy_of_the_mean_distribution():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    p = logits.softmax(-1).mean(0)
    assert avg_entropy(logits).item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-12)
    per_view = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
    assert avg_entropy(logits).item() > per_view.item()  # not the mean of the per-view entropies


def test_ece_uses_c_tpt_bins():
    # bins of width 0.05, lower < conf <= upper: 0.89 lies in (0.85, 0.9], 0.92 in (0.9, 0.95]
    conf = [0.89, 0.92, 0.3]
    correct = [True, False, True]
    expected = (abs(1 - 0.89) * 1 + abs(0 - 0.92) * 1 + abs(1 - 0.3) * 1) / 3
    assert expected_calibration_error(conf, correct) == pytest.approx(expected, abs=1e-6)
    # the official bin edges are float32 (torch.linspace(...).item()): 0.9 > float32(0.9), so a confidence of
    # exactly 0.9 shares the (0.9, 0.95] bin with 0.92: accuracy 0.5 at mean confidence 0.91
    official = (abs(0.5 - 0.91) * 2 + abs(1 - 0.3)) / 3
    assert expected_calibration_error([0.9, 0.92, 0.3], correct) == pytest.approx(official, abs=1e-6)
    assert expected_calibration_error([0.0], [True]) == 0.0  # confidence 0 falls in no bin (official quirk)


# ------------------------------------------------------------------------------------------- TPT


@pytest.fixture(scope="module")
def clip_model():
    return tiny_clip()


def _views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def test_tpt_step_equals_the_official_computation_and_one_adamw_step_by_hand(clip_model):
    from tta_reference import OfficialTPT

    base = zs_base(clip_model)
    tpt = TTA_REGISTRY.get("TPT")(tta_cfg("TPT", SELECTION_P=0.25), base)
    learner = tpt.model.prompt_learner
    assert learner.n_ctx == 4 and learner.prompt_prefix == "a photo of a"
    ref = OfficialTPT(clip_model, learner, selection_p=0.25)
    views = _views()
    ctx0 = tpt.ctx.detach().clone()

    # the gradient of the official loss at the initial context, for the hand-computed AdamW step
    ctx = ctx0.clone().requires_grad_(True)
    from tta_reference import official_text_features

    text = official_text_features(clip_model, ctx, learner.token_prefix, learner.token_suffix,
                                  learner.tokenized_prompts)
    img = clip_model.encode_image(views)
    img, text = img / img.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    logits = clip_model.logit_scale.exp() * img @ text.t()
    sel_logits, sel = select_confident(logits, 0.25)
    (grad,) = torch.autograd.grad(avg_entropy(sel_logits), ctx)
    lr, wd, eps = 5e-3, 0.01, 1e-8
    by_hand = ctx0 * (1 - lr * wd) - lr * grad / (grad.abs() + eps)  # AdamW step 1: m̂ = g, v̂ = g²

    tpt.reset()
    out = tpt.step(Sample(views=views, image_features=base.image_features(views), index=0, position=0))
    ref_out, ref_sel, ref_loss = ref(views)
    assert tpt.last["selected"].tolist() == ref_sel.tolist() == sel.tolist()
    assert tpt.last["entropy"] == pytest.approx(ref_loss, rel=1e-5)
    torch.testing.assert_close(tpt.ctx.detach(), ref.ctx.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tpt.ctx.detach(), by_hand, atol=1e-6, rtol=1e-5)
    assert not torch.equal(tpt.ctx.detach(), ctx0)
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)


def test_tpt_episodic_reset_restores_context_and_optimizer(clip_model):
    base = zs_base(clip_model)
    tpt = TTA_REGISTRY.get("TPT")(tta_cfg("TPT", SELECTION_P=0.25, STEPS=2), base)
    ctx0 = tpt.ctx.detach().clone()
    views = _views(seed=1)
    s = Sample(views=views, image_features=base.image_features(views), index=0, position=0)
    tpt.reset()
    first = tpt.step(s)
    assert tpt.optim.state[tpt.ctx]["step"].item() == 2
    tpt.reset()
    assert torch.equal(tpt.ctx.detach(), ctx0) and len(tpt.optim.state) == 0
    torch.testing.assert_close(tpt.step(s), first, atol=0, rtol=0)


def test_ctpt_adds_minus_lambda_atfd(clip_model):
    from trainers.tta.ctpt import atfd, ctpt_lambda

    t = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # normalised rows (1,0), (0,1); mean (.5,.5); each at distance sqrt(.5)
    assert atfd(t).item() == pytest.approx(math.sqrt(0.5))
    assert ctpt_lambda("auto", "ImageNetA") == 20 and ctpt_lambda("auto", "ImageNet") == 50
    assert ctpt_lambda("auto", "DescribableTextures") == 50 and ctpt_lambda("tta_vlm", "ImageNet") == 20
    base = zs_base(clip_model)
    cfg = tta_cfg("CTPT", SELECTION_P=0.25)
    cfg.DATASET.NAME = "OxfordPets"
    c = TTA_REGISTRY.get("CTPT")(cfg, base)
    views = _views(seed=2)
    c.reset()
    c.step(Sample(views=views, image_features=base.image_features(views), index=0, position=0))
    assert set(c.last) == {"selected", "entropy", "atfd"} and c.last["atfd"] < 0


# ------------------------------------------------------------------------------------------- refusals


def test_tpt_refuses_learners_it_cannot_tune(clip_model):
    from tests.helpers import method_model

    for name, kw, why in (("MaPLe", {"PROMPT_DEPTH": 2}, "CoOp-style shared text context"),
                          ("CoOp", {"CSC": True, "CTX_INIT": ""}, "class-specific contexts")):
        model = method_model(name, clip_model, CLASSES, **kw)
        base = BaseModel(name, "prompt_learner", clip_model, CLASSES, model.logit_scale, model.image_features,
                         model.class_text_features, torch.device("cpu"), prompted=model)
        reason = TTA_REGISTRY.get("TPT").refusal(base)
        assert reason and why in reason and "\n" not in reason
    coop = method_model("CoOp", clip_model, CLASSES, CTX_INIT="a photo of a")
    base = BaseModel("CoOp", "prompt_learner", clip_model, CLASSES, coop.logit_scale, coop.image_features,
                     coop.class_text_features, torch.device("cpu"), prompted=coop)
    assert TTA_REGISTRY.get("TPT").refusal(base) is None


# ------------------------------------------------------------------------------------------- views


def test_views_are_seeded_per_image_and_view0_is_the_centre_crop():
    from PIL import Image

    from vlprompt.tta.views import ViewMaker, augmix_for_dataset

    img = Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy())
    a = ViewMaker(5, size=16, augmix=True, seed=0)
    v1, v2 = a(img, 3), a(img, 3)
    assert v1.shape == (5, 3, 16, 16) and torch.equal(v1, v2)
    assert not torch.equal(a(img, 4)[1:], v1[1:])
    assert torch.equal(a(img, 4)[0], v1[0])  # view 0 is deterministic
    assert not augmix_for_dataset("auto", "ImageNetA") and augmix_for_dataset("auto", "OxfordPets")
    assert augmix_for_dataset("on", "ImageNet") and not augmix_for_dataset("off", "Food101")


# ------------------------------------------------------------------------------------------- runner


class _Counter(Procedure):
    """Counts what it has seen since its last reset; logits favour class (seen % K)."""

    N_VIEWS = 1

    def __init__(self, cfg, base):
        super().__init__(cfg, base)
        self.resets = 0

    def reset(self):
        self.seen = 0
        self.resets += 1

    def step(self, sample):
        self.seen += 1
        out = torch.zeros(len(self.base.classnames))
        out[self.seen % len(out)] = 1.0
        return out


@pytest.fixture
def counters():
    classes = {}
    for name, episodic in (("_TestEpisodic", True), ("_TestOnline", False)):
        cls = type(name, (_Counter,), {"EPISODIC": episodic})
        TTA_REGISTRY._do_register(name, cls)
        classes[name] = cls
    yield classes
    for name in classes:
        TTA_REGISTRY._obj_map.pop(name, None)


def _toy_root():
    from tests.toy_methods import toy_root

    return toy_root()


def _cli(tmp_path, out, trainer, *opts, model_dir=None):
    import train

    train.import_plugins()  # the toy datasets register

    args = ["--root", _toy_root(), "--trainer", trainer, "--dataset-config-file",
            osp.join(ROOT, "configs/datasets/toy_shapes.yaml"), "--config-file",
            osp.join(ROOT, "configs/trainers/CoOp/toy.yaml"), "--output-dir", str(out), "--seed", "1"]
    if model_dir is not None or trainer == "ZeroshotCLIP":
        args += ["--eval-only"]
    if model_dir is not None:
        args += ["--model-dir", str(model_dir), "--load-epoch", "1"]
    from vlprompt.utils import restore_stdout

    try:
        train.main(train.build_parser().parse_args(args + list(opts)))
    finally:
        restore_stdout()
    with open(osp.join(str(out), "results.json")) as f:
        return json.load(f)


def test_runner_resets_episodic_per_image_and_online_once_with_a_recorded_order(tmp_path, counters):
    seen = {}
    orig_init = _Counter.__init__

    def spy(self, cfg, base):
        orig_init(self, cfg, base)
        seen[type(self).__name__] = self

    _Counter.__init__ = spy
    try:
        r_ep = _cli(tmp_path, tmp_path / "ep", "ZeroshotCLIP", "TTA.METHOD", "_TestEpisodic", "TTA.MAX_IMAGES", "6")
        r_on = _cli(tmp_path, tmp_path / "on", "ZeroshotCLIP", "TTA.METHOD", "_TestOnline", "TTA.MAX_IMAGES", "6",
                    "TTA.ORDER_SEED", "5")
    finally:
        _Counter.__init__ = orig_init
    assert seen["_TestEpisodic"].resets == 6 and seen["_TestOnline"].resets == 1
    assert r_ep["tta"]["mode"] == "episodic" and r_ep["tta"]["order"] == "dataset"
    assert r_on["tta"]["mode"] == "online" and r_on["tta"]["order"] == "shuffle" and r_on["tta"]["order_seed"] == 5
    with open(tmp_path / "on" / "tta_outputs.json") as f:
        out = json.load(f)
    import random

    order = list(range(r_on["num_test"]))
    random.Random(5).shuffle(order)
    assert out["index"] == order[:6]
    K = r_on["num_classes"]
    assert out["prediction"] == [(i + 1) % K for i in range(6)]  # online: the count runs on across images
    with open(tmp_path / "ep" / "tta_outputs.json") as f:
        ep = json.load(f)
    assert ep["index"] == list(range(6)) and ep["prediction"] == [1] * 6  # reset before every image


def test_cli_tpt_on_zero_shot_and_on_a_trained_coop_run(tmp_path):
    small = ["TTA.MAX_IMAGES", "3", "TTA.N_VIEWS", "10"]
    r = _cli(tmp_path, tmp_path / "zs_tpt", "ZeroshotCLIP", "TTA.METHOD", "TPT", *small)
    assert r["tta"]["method"] == "TPT" and r["tta"]["base_kind"] == "zero_shot" and r["tta"]["n_views"] == 10
    assert set(r["metrics"]) >= {"accuracy", "ece"} and r["tta"]["n_images"] == 3
    run = tmp_path / "coop"
    _cli(tmp_path, run, "CoOp", "DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0")
    r = _cli(tmp_path, tmp_path / "coop_tpt", "CoOp", "TTA.METHOD", "TPT", *small, model_dir=run)
    assert r["tta"]["base_model"] == "CoOp" and r["tta"]["base_kind"] == "prompt_learner"
    with open(tmp_path / "coop_tpt" / "tta_outputs.json") as f:
        assert len(json.load(f)["prediction"]) == 3


def test_cli_refuses_tta_without_eval_only(tmp_path):
    import train

    train.import_plugins()
    with pytest.raises(train.RunError) as e:
        train.main(train.build_parser().parse_args(
            ["--root", _toy_root(), "--trainer", "CoOp", "--dataset-config-file",
             osp.join(ROOT, "configs/datasets/toy_shapes.yaml"), "--output-dir", str(tmp_path / "x"),
             "TTA.METHOD", "TPT"]))
    assert "--eval-only" in str(e.value)
    with pytest.raises(TTAError, match="Unknown test-time procedure 'NOPE'"):
        from vlprompt.tta import get_procedure

        get_procedure("NOPE")


# ------------------------------------------------------------------------------------------- protocol, sweep, tables


def test_sweep_plans_procedures_on_one_shared_source_run():
    from vlprompt.protocol import parse_run_dir
    from vlprompt.sweep.protocols import expand

    runs = {}
    for m in ("TPT", "CTPT"):
        for r in expand("CoOp", "test_time", ["dtd", "imagenet_a"], seeds=[1], output_root="/o",
                        opts=["TTA.METHOD", m]):
            runs.setdefault(r.output_dir, r)
    sources = [r for r in runs.values() if r.role == "source"]
    assert len(sources) == 1 and not any(o.startswith("TTA.") for o in sources[0].opts)
    assert sources[0].output_dir.endswith("imagenet/CoOp/vit_b16_ep50_ctxv1_16shots/seed1")
    tta = sorted(r.output_dir for r in runs.values() if r.role == "tta")
    assert tta[0].endswith("test_time/CoOp/vit_b16_ep50_ctxv1_methodCTPT_16shots/dtd/seed1") and len(tta) == 4
    r = runs[tta[0]]
    assert r.opts[-2:] == ["TTA.METHOD", "CTPT"] and r.model_dir == sources[0].output_dir
    assert parse_run_dir(tta[0])["protocol"] == "test_time" and parse_run_dir(tta[0])["role"] == "tta"


def test_test_time_tables_put_base_and_procedures_side_by_side_with_group_averages():
    from vlprompt.results.aggregate import test_time_tables
    from vlprompt.results.records import Record

    def rec(trainer, method, d, acc, ece):
        return Record(trainer=trainer, config="cfg", protocol="test_time", role="tta", dataset=d, shots=16, seed=1,
                      metrics={"accuracy": acc, "ece": ece}, path=f"{trainer}{method}{d}", origin="json",
                      config_dict={"TTA": {"METHOD": method}})

    ood = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    recs = [rec("ZeroshotCLIP", "none", d, 50 + i, 5) for i, d in enumerate(ood)]
    recs += [rec("ZeroshotCLIP", "TPT", d, 60 + i, 7) for i, d in enumerate(ood)]
    recs += [rec("ZeroshotCLIP", "TPT", "dtd", 40, 9)]
    acc, ece = test_time_tables(recs, "test_time", seeds=[1])
    labels = [row["cells"][0] for row in acc.rows]
    assert labels == ["ZeroshotCLIP", "ZeroshotCLIP + TPT"]
    col = acc.columns.index("OOD avg.")
    assert acc.rows[0]["cells"][col].mean == pytest.approx(51.5)
    assert acc.rows[1]["cells"][col].mean == pytest.approx(61.5)
    xd = acc.rows[1]["cells"][acc.columns.index("Cross-domain avg.")]
    assert xd.mean == 40 and xd.marks == "*"  # 1 of the 10 fine-grained sets
    assert ece.rows[1]["cells"][col].mean == pytest.approx(7)
