"""PromptSRC: what is specific to it (the contract suite covers build / step / checkpoint / resume).

* the frozen text side is the raw-feature mean over the official 60 templates, then normalised;
* every named loss term equals the official formula written out literally on the frozen open_clip
  model (no shared-block code in the oracle), and the frozen CLIP is shared, not copied;
* the Gaussian prompt aggregation: weights, the final prompts equal the Gaussian-weighted mean of the
  per-epoch prompts, in the last checkpoint and in the model tested, and a run killed between epochs
  resumes to the same aggregate bit for bit;
* official whole-model checkpoints load; the official config values; the ViT-B/16 parameter count;
* the toy world: PromptSRC beats zero-shot CLIP on the base classes.

Small models on CPU: the shipped toy CLIP (32x32 input, 10 layers) for training runs.
"""
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import train as train_mod
import trainers.promptsrc as promptsrc
from tests.helpers import make_cfg, make_image_folder
from trainers.promptsrc import (
    IMAGENET_TEMPLATES,
    EnsembleTeacher,
    GaussianPromptAggregation,
    PromptSRC,
    gpa_weights,
)
from vlprompt.clip import ZeroShotHead, tokenize
from vlprompt.config import ConfigError, merge_from_file
from vlprompt.engine import LAST_CHECKPOINT, build_trainer
from vlprompt.engine.methods import method_card
from vlprompt.utils import load_checkpoint, restore_stdout

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG_DIR = osp.join(ROOT, "configs", "trainers", "PromptSRC")
TOY = ["MODEL.BACKBONE.NAME", "toy-clip", "INPUT.SIZE", "(32, 32)", "TRAINER.PROMPTSRC.PREC", "fp32"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("promptsrc")
    make_image_folder(str(root / "five"), n_classes=5, n_per_class=4)
    make_image_folder(str(root / "three"), n_classes=3, n_per_class=4, seed=3, class_prefix="other")
    return root


def _trainer(data_root, out, folder="five", opts=()):
    cfg = make_cfg(data_root, trainer="PromptSRC", folder=folder, output_dir=str(out), opts=TOY + list(opts))
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def _batch(n=4, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % k


def _clip(trainer):
    return trainer.model.zero_shot._clip_model


# ------------------------------------------------------------------------------------------------
# the frozen side and the loss terms
# ------------------------------------------------------------------------------------------------


def test_templates_are_the_official_sixty():
    assert len(IMAGENET_TEMPLATES) == len(set(IMAGENET_TEMPLATES)) == 60
    assert IMAGENET_TEMPLATES[0] == "a photo of a {}." and IMAGENET_TEMPLATES[-1] == "itap of the {}."
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)


def test_teacher_averages_raw_features_then_normalises(data_root, tmp_path):
    t = _trainer(data_root, tmp_path)
    clip = _clip(t)
    names = [c.replace("_", " ") for c in t.dm.dataset.classnames]
    templates = IMAGENET_TEMPLATES[:3]
    teacher = EnsembleTeacher(clip, t.dm.dataset.classnames, templates)
    with torch.no_grad():
        raw = torch.stack([clip.encode_text(tokenize([tp.replace("{}", n) for n in names])) for tp in templates], 1)
    fixed = raw.mean(dim=1)
    expected = fixed / fixed.norm(dim=-1, keepdim=True)
    got = teacher.text_features()
    assert got.shape == (5, expected.shape[1])
    assert torch.allclose(got, expected, atol=1e-6)
    # not CLIP's per-template-normalised ensemble (the choice is visible)
    clip_style = ZeroShotHead(clip, t.dm.dataset.classnames, templates).text_features()
    assert (got - clip_style).abs().max() > 1e-4
    # the trainer's teacher uses all 60 templates, shares the frozen CLIP and follows the class list
    assert t.model.zero_shot.templates == IMAGENET_TEMPLATES
    t.set_classnames(["other_0", "other_1", "other_2"])
    t.model.zero_shot.templates = templates
    assert torch.equal(t.model.zero_shot.text_features(), EnsembleTeacher(clip, ["other_0", "other_1", "other_2"],
                                                                          templates).text_features())


def test_loss_terms_equal_the_official_formulas(data_root, tmp_path, monkeypatch):
    templates = IMAGENET_TEMPLATES[:4]  # fewer templates keep the oracle's full 77-token passes fast
    monkeypatch.setattr(promptsrc, "IMAGENET_TEMPLATES", templates)
    t = _trainer(data_root, tmp_path, opts=["TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "7",
                                            "TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT", "3"])
    model, clip = t.model, _clip(t)
    with torch.no_grad():  # move the prompts away from their init so that no term is trivially small
        for p in t._models["VLPromptLearner"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    image, label = _batch()
    t.set_model_mode("train")
    terms, logits = t.loss_terms(image, label)
    assert list(terms) == ["ce", "scl_text", "scl_image", "scl_logits"]

    # oracle: the official CustomCLIP.forward + PromptSRC.forward_backward, written out literally
    with torch.no_grad():
        text_features = model.text_features()
        image_features = model.image_features(image)
        names = [c.replace("_", " ") for c in t.dm.dataset.classnames]
        feats = [clip.encode_text(tokenize([tp.replace("{}", n) for n in names])).unsqueeze(1) for tp in templates]
        fixed_embeddings = torch.cat(feats, dim=1).mean(dim=1)
        logit_scale = clip.logit_scale.exp()
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        ref_logits = logit_scale * image_features @ text_features.t()
        fixed_embeddings = fixed_embeddings / fixed_embeddings.norm(dim=-1, keepdim=True)
        zero_shot_features = clip.encode_image(image)
        zero_shot_features = zero_shot_features / zero_shot_features.norm(dim=-1, keepdim=True)
        zero_shot_logits = logit_scale * zero_shot_features @ fixed_embeddings.t()
        ref = {
            "ce": F.cross_entropy(ref_logits, label),
            "scl_text": F.l1_loss(text_features, fixed_embeddings, reduction="mean") * 7,
            "scl_image": F.l1_loss(image_features, zero_shot_features, reduction="mean") * 3,
            "scl_logits": F.kl_div(F.log_softmax(ref_logits / 1, dim=1), F.log_softmax(zero_shot_logits / 1, dim=1),
                                   reduction="sum", log_target=True) * (1 * 1) / ref_logits.numel(),
        }
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    for k, v in ref.items():
        assert v.item() > 1e-4, k
        assert torch.allclose(terms[k], v, rtol=1e-5, atol=1e-7), (k, terms[k].item(), v.item())
    # KL is Σ_i Σ_c p_zs (log p_zs - log p) / (B K)
    p_zs = zero_shot_logits.softmax(1)
    by_hand = (p_zs * (p_zs.log() - ref_logits.log_softmax(1))).sum() / ref_logits.numel()
    assert torch.allclose(terms["scl_logits"], by_hand, rtol=1e-4)

    # gradients reach every prompt tensor, none reaches the frozen CLIP (one shared copy)
    sum(terms.values()).backward()
    learner = t._models["VLPromptLearner"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
    clip_ids = {id(p) for p in clip.parameters()}
    others = [n for n, p in model.named_parameters() if id(p) not in clip_ids and id(p) not in
              {id(q) for q in learner.parameters()}]
    assert others == [], f"parameters that are neither the frozen CLIP nor the prompts: {others}"
    assert all(p.grad is None for p in clip.parameters())


def test_terms_are_logged_by_name(data_root, tmp_path):
    t = _trainer(data_root, tmp_path)
    image, label = _batch()
    t.set_model_mode("train")
    t.epoch, t.batch_idx, t.num_batches = 0, 0, 2
    summary = t.forward_backward({"img": image, "label": label})
    assert set(summary) == {"loss", "ce", "scl_text", "scl_image", "scl_logits"}
    assert math.isclose(summary["loss"], sum(summary[k] for k in ("ce", "scl_text", "scl_image", "scl_logits")),
                        rel_tol=1e-5)


# ------------------------------------------------------------------------------------------------
# Gaussian prompt aggregation
# ------------------------------------------------------------------------------------------------


def test_gpa_weights():
    w = gpa_weights(20, 15, 1)
    dens = [math.exp(-0.5 * (e - 15) ** 2) / math.sqrt(2 * math.pi) for e in range(1, 21)]
    assert len(w) == 20 and math.isclose(sum(w), 1.0, rel_tol=1e-12)
    assert all(math.isclose(a, d / sum(dens), rel_tol=1e-12) for a, d in zip(w, dens))
    assert max(range(20), key=w.__getitem__) == 14  # peak at epoch 15
    assert math.isclose(w[13], w[15], rel_tol=1e-12)
    flat = gpa_weights(5, 3, 1e6)
    assert all(math.isclose(x, 0.2, rel_tol=1e-6) for x in flat)
    with pytest.raises(ValueError, match="underflow"):
        gpa_weights(5, 500, 1)
    with pytest.raises(ValueError, match="positive"):
        gpa_weights(5, 3, 0)


def test_bad_gpa_config_names_the_keys(data_root, tmp_path):
    with pytest.raises(ConfigError, match="TRAINER.PROMPTSRC.GPA_MEAN/GPA_STD"):
        _trainer(data_root, tmp_path, opts=["TRAINER.PROMPTSRC.GPA_STD", "0"])


class _Stop(Exception):
    pass


def _cli(data_root, out, epochs=3):
    argv = ["--root", str(data_root), "--seed", "1", "--trainer", "PromptSRC",
            "--dataset-config-file", str(data_root / "five.yaml"), "--output-dir", str(out), *TOY,
            "USE_CUDA", "False", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
            "OPTIM.MAX_EPOCH", str(epochs), "OPTIM.LR", "0.5", "OPTIM.WARMUP_EPOCH", "0", "TEST.NO_TEST", "True",
            "TRAINER.PROMPTSRC.GPA_MEAN", "2", "TRAINER.PROMPTSRC.GPA_STD", "1",
            "INPUT.TRANSFORMS", "('random_flip', 'normalize')"]
    try:
        return train_mod.cli(argv)
    finally:
        restore_stdout()


def test_gpa_is_the_gaussian_weighted_mean_and_survives_kill_and_resume(data_root, tmp_path, monkeypatch):
    (data_root / "five.yaml").write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    per_epoch = []
    original_after = GaussianPromptAggregation.after_epoch

    def recording_after_epoch(self):
        per_epoch.append({k: v.detach().clone() for k, v in self.trainer.learnable_module().state_dict().items()})
        return original_after(self)

    monkeypatch.setattr(GaussianPromptAggregation, "after_epoch", recording_after_epoch)
    full = tmp_path / "full"
    assert _cli(data_root, full) == 0
    assert len(per_epoch) == 3
    w = gpa_weights(3, 2, 1)
    final = load_checkpoint(str(full / "VLPromptLearner" / "model.pth.tar-3"))
    for k, v in final["state_dict"].items():
        expected = sum(wi * s[k] for wi, s in zip(w, per_epoch))
        assert torch.allclose(v, expected, atol=1e-7), k
        assert not torch.allclose(v, per_epoch[-1][k], atol=1e-4), f"{k}: the aggregate is just the last epoch"
    assert final["hooks"]["gpa"]["epochs"] == [1, 2, 3]

    # killed after two epochs, then resumed
    monkeypatch.setattr(GaussianPromptAggregation, "after_epoch", original_after)
    original_run = PromptSRC.run_epoch

    def run_epoch_then_stop(self):
        if self.epoch == 2:
            raise _Stop()
        return original_run(self)

    killed = tmp_path / "killed"
    monkeypatch.setattr(PromptSRC, "run_epoch", run_epoch_then_stop)
    with pytest.raises(_Stop):
        _cli(data_root, killed)
    restore_stdout()
    last = load_checkpoint(str(killed / "VLPromptLearner" / LAST_CHECKPOINT))
    state = last["hooks"]["gpa"]
    assert state["epochs"] == [1, 2]
    for k, v in state["total"].items():
        assert torch.allclose(v, w[0] * per_epoch[0][k] + w[1] * per_epoch[1][k], atol=1e-7), k
    monkeypatch.setattr(PromptSRC, "run_epoch", original_run)
    assert _cli(data_root, killed) == 0
    resumed = load_checkpoint(str(killed / "VLPromptLearner" / "model.pth.tar-3"))
    for k in final["state_dict"]:
        assert torch.equal(final["state_dict"][k], resumed["state_dict"][k]), k
    assert resumed["hooks"]["gpa"]["epochs"] == [1, 2, 3]


def test_resume_with_another_gpa_is_refused():
    hook = GaussianPromptAggregation(15, 1)
    with pytest.raises(RuntimeError, match="GPA_MEAN/GPA_STD changed"):
        hook.load_state_dict({"mean": 6.0, "std": 10.0, "epochs": [1]})


def test_final_test_runs_on_the_aggregate(data_root, tmp_path, monkeypatch):
    """The model evaluated after training holds the aggregated prompts (official behaviour)."""
    seen = []
    original_test = PromptSRC.test

    def recording_test(self, split=None):
        seen.append({k: v.detach().clone() for k, v in self.learnable_module().state_dict().items()})
        return original_test(self, split)

    monkeypatch.setattr(PromptSRC, "test", recording_test)
    t = _trainer(data_root, tmp_path, opts=["OPTIM.MAX_EPOCH", "2", "TRAINER.PROMPTSRC.GPA_MEAN", "1",
                                            "TRAINER.PROMPTSRC.GPA_STD", "1", "OPTIM.LR", "0.5"])
    t.train()
    restore_stdout()
    hook = t._hooks["gpa"]
    assert len(seen) == 1 and hook.epochs == [1, 2]
    for k, v in seen[0].items():
        assert torch.equal(v, hook.total[k]), k


# ------------------------------------------------------------------------------------------------
# checkpoints, configs, size
# ------------------------------------------------------------------------------------------------


def test_official_whole_model_checkpoint_loads(data_root, tmp_path):
    t = _trainer(data_root, tmp_path / "a")
    learner = t._models["VLPromptLearner"]
    g = torch.Generator().manual_seed(5)
    official = {"prompt_learner.ctx": torch.randn(learner.ctx.shape, generator=g),
                "prompt_learner.token_prefix": torch.zeros(5, 1, learner.ctx.shape[1]),
                "prompt_learner.ZS_image_encoder.conv1.weight": torch.zeros(3),
                "image_encoder.conv1.weight": torch.zeros(3), "logit_scale": torch.tensor(4.6),
                "image_encoder.VPT": torch.randn(learner.vision_ctx.shape, generator=g)}
    for i, p in enumerate(learner.deep_text_prompts):
        official[f"text_encoder.transformer.resblocks.{i + 1}.VPT_shallow"] = torch.randn(p.shape, generator=g)
    for i, p in enumerate(learner.deep_vision_prompts):
        official[f"image_encoder.transformer.resblocks.{i + 1}.VPT_shallow"] = torch.randn(p.shape, generator=g)
    folder = tmp_path / "official" / "VLPromptLearner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": official, "epoch": 20}, str(folder / "model.pth.tar-20"))
    other = _trainer(data_root, tmp_path / "b", folder="three")
    try:
        other.load_model(str(tmp_path / "official"), epoch=20)
    finally:
        restore_stdout()
    mine = other._models["VLPromptLearner"]
    assert torch.equal(mine.ctx, official["prompt_learner.ctx"])
    assert torch.equal(mine.vision_ctx, official["image_encoder.VPT"])
    for i, p in enumerate(mine.deep_text_prompts):
        assert torch.equal(p, official[f"text_encoder.transformer.resblocks.{i + 1}.VPT_shallow"])
    for i, p in enumerate(mine.deep_vision_prompts):
        assert torch.equal(p, official[f"image_encoder.transformer.resblocks.{i + 1}.VPT_shallow"])


def _load_yaml(name):
    from vlprompt.config import extend_cfg, get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, osp.join(CFG_DIR, name + ".yaml"))
    return cfg


def test_official_config_values_and_recipes():
    b2n = _load_yaml("vit_b16_c2_ep20_batch4_4+4ctx")
    m = b2n.TRAINER.PROMPTSRC
    assert (m.N_CTX_TEXT, m.N_CTX_VISION, m.PROMPT_DEPTH_TEXT, m.PROMPT_DEPTH_VISION) == (4, 4, 9, 9)
    assert (m.TEXT_LOSS_WEIGHT, m.IMAGE_LOSS_WEIGHT, m.GPA_MEAN, m.GPA_STD, m.PREC) == (25, 10, 15, 1, "fp16")
    assert (b2n.OPTIM.LR, b2n.OPTIM.MAX_EPOCH, b2n.DATALOADER.TRAIN_X.BATCH_SIZE) == (0.0025, 20, 4)
    xd = _load_yaml("vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets").TRAINER.PROMPTSRC
    assert (xd.PROMPT_DEPTH_TEXT, xd.PROMPT_DEPTH_VISION, xd.GPA_MEAN, xd.GPA_STD) == (3, 3, 6, 10)
    fs = _load_yaml("vit_b16_c2_ep50_batch4_4+4ctx_few_shot")
    assert (fs.OPTIM.MAX_EPOCH, fs.TRAINER.PROMPTSRC.GPA_MEAN, fs.TRAINER.PROMPTSRC.GPA_STD) == (50, 30, 30)
    fs45 = _load_yaml("vit_b16_c2_ep50_batch4_4+4ctx_few_shot_gpa45")
    assert (fs45.OPTIM.MAX_EPOCH, fs45.TRAINER.PROMPTSRC.GPA_MEAN, fs45.TRAINER.PROMPTSRC.GPA_STD) == (50, 45, 5)
    names = set()
    for recipe in method_card(PromptSRC).all_recipes().values():
        names.add(recipe["config"])
        names.update(recipe.get("per_dataset", {}).values())
    for n in names | {"toy"}:
        assert osp.isfile(osp.join(CFG_DIR, n + ".yaml")), n
    defaults = _load_yaml("toy").TRAINER.PROMPTSRC
    assert defaults.TEXT_LOSS_WEIGHT == 25 and defaults.IMAGE_LOSS_WEIGHT == 10


def test_parameter_count_at_vit_b16():
    from vlprompt.clip import IndependentPrompts, build_clip_model

    clip = build_clip_model("ViT-B/16", random_init=True)
    learner = IndependentPrompts(clip, ["a", "b"], n_ctx_text=4, depth_text=9, n_ctx_vision=4, depth_vision=9)
    assert sum(p.numel() for p in learner.parameters()) == 9 * 4 * 512 + 9 * 4 * 768 == 46080
    xd = IndependentPrompts(clip, ["a"], n_ctx_text=4, depth_text=3, n_ctx_vision=4, depth_vision=3)
    assert sum(p.numel() for p in xd.parameters()) == 3 * 4 * (512 + 768) == 15360
