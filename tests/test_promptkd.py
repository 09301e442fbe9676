"""PromptKD (trainers/promptkd.py): the KD term against a hand computation, what gets gradients (the teacher is
frozen), the unlabelled batches of every class (no label reaches the loss), evaluation as the official slices of
the all-class teacher features, the transductive marks (results.json, tables), the teacher from a vlprompt run
folder or an official checkpoint file, and the refusal of teachers that cannot serve. Tiny backbone, a fabricated
5-class folder and a fabricated teacher run (the card's ``fixture``); the generic checks are the contract suite's.
"""
import json
import math
import os
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import trainers.promptkd as promptkd
from tests.helpers import make_cfg, make_image_folder
from tests.test_results import b2n
from vlprompt.config import ConfigError
from vlprompt.data.batch_sources import UnlabelledSource
from vlprompt.engine import build_trainer
from vlprompt.engine.methods import method_card
from vlprompt.engine.results_record import build_results_record
from vlprompt.errors import UserError
from vlprompt.results import build_tables, collect
from vlprompt.utils import restore_stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("promptkd")
    make_image_folder(str(r / "five"), n_classes=5, n_per_class=4)
    return r


def _trainer(root, out, subsample="base", opts=()):
    cfg = make_cfg(root, trainer="PromptKD", folder="five", output_dir=str(out),
                   opts=["TRAINER.PROMPTKD.PREC", "fp32", "DATASET.SUBSAMPLE_CLASSES", subsample,
                         "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", 2, *opts])
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


@pytest.fixture(scope="module")
def base_run(root, tmp_path_factory):
    return _trainer(root, tmp_path_factory.mktemp("base_out"))


def test_kd_loss_is_the_official_kl_by_hand():
    stu = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    tea = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    for t in (1.0, 2.0):
        total = 0.0
        for i in range(2):
            zs = sum(math.exp(v / t) for v in stu[i].tolist())
            zt = sum(math.exp(v / t) for v in tea[i].tolist())
            for j in range(3):
                p = math.exp(tea[i, j].item() / t) / zt
                log_q = stu[i, j].item() / t - math.log(zs)
                total += p * (math.log(p) - log_q)
        want = total * t * t / 6  # summed, times T^2, divided by B x C
        assert promptkd.kd_loss(stu, tea, t).item() == pytest.approx(want, rel=1e-6)


def test_unlabelled_batches_of_every_class_and_only_the_student_learns(base_run):
    t = base_run
    assert len(t.dm.dataset.classnames) == 3 and len(t.all_classnames) == 5  # evaluated: base half; trained: all
    assert {d.label for d in t.unlabelled_items()} == set(range(5))
    source = t.batch_source()
    assert isinstance(source, UnlabelledSource)
    (batch,) = next(iter(source))
    assert "label" not in batch and batch["img"].shape[0] == 4
    learner = t._models["VLPromptLearner"]
    names = {n for n, _ in learner.named_parameters()}
    assert names == {"vision_ctx", "deep_vision_prompts.0", "VPT_image_trans.conv1.0.weight",
                     "VPT_image_trans.conv1.0.bias", "VPT_image_trans.conv1.1.weight", "VPT_image_trans.conv1.1.bias",
                     "VPT_image_trans.conv1.3.weight", "VPT_image_trans.conv1.3.bias"}
    teacher = {n: p.detach().clone() for n, p in t.model.teacher.named_parameters()}
    assert teacher and not any(p.requires_grad for p in t.model.teacher.parameters())
    t.set_model_mode("train")
    t.epoch, t.batch_idx, t.num_batches = 0, 0, 2
    summary = t.forward_backward(batch)
    assert set(summary) == {"loss"} and math.isfinite(summary["loss"]) and summary["loss"] > 0
    for n, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    for n, p in t.model.teacher.named_parameters():
        assert p.grad is None and torch.equal(p.detach(), teacher[n]), n
    for n, p in t.model.named_parameters():
        if not n.startswith("prompt_learner."):
            assert p.grad is None, n


def test_the_loss_is_the_kd_term_over_all_classes(base_run):
    t = base_run
    t.set_model_mode("eval")  # BatchNorm statistics fixed, so two calls agree
    img = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        terms, stu = t.loss_terms(img)
        again, _ = t.loss_terms(img, label=torch.tensor([0, 1, 2]))  # a label changes nothing
        tea = t.model.teacher_logits(img, t.all_classnames)
    assert set(terms) == {"kd"} and torch.equal(terms["kd"], again["kd"])
    assert stu.shape == tea.shape == (3, 5)
    want = float(t.method_cfg.KD_WEIGHT)
    assert terms["kd"].item() == pytest.approx(want * promptkd.kd_loss(stu, tea, 1.0).item(), rel=1e-6)
    # student logits: the student's logit scale x cos(proj(image features), teacher text features)
    with torch.no_grad():
        f = F.normalize(t.model.student_features(img), dim=-1)
        txt = t.model.teacher_text(t.all_classnames)
        assert torch.allclose(stu, t.model.logit_scale.exp() * f @ txt.t(), atol=1e-4)


def test_evaluation_is_the_official_base_and_novel_slice(base_run):
    t = base_run
    t.set_model_mode("eval")
    img = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        every = t.model.logits_over(img, t.all_classnames)
        base = t.model_inference(img)
        t.set_classnames(t.all_classnames[3:])  # the novel run's class list
        novel = t.model_inference(img)
        t.set_classnames(t.all_classnames[:3])
    assert torch.allclose(base, every[:, :3], atol=1e-5) and torch.allclose(novel, every[:, 3:], atol=1e-5)


def test_results_json_and_tables_mark_the_transductive_runs(base_run, tmp_path):
    assert build_results_record(base_run, {"accuracy": 50.0})["transductive"] is True
    assert method_card("PromptKD").transductive and not method_card("PromptSRC").transductive
    out = str(tmp_path)
    for s in (1, 2, 3):
        b2n(out, "PromptSRC", "vit_b16", "dtd", s, 80.0, 60.0)
        b2n(out, "PromptKD", "vit_b16", "dtd", s, 85.0, 70.0)
        b2n(out, "PromptKD", "toy_transductive", "dtd", s, 85.0, 70.0)  # the sweep's folder mark (no field)
    for dirpath, _, files in os.walk(out):
        if "results.json" in files and "/PromptKD/vit_b16/" in dirpath + "/":
            p = osp.join(dirpath, "results.json")
            data = json.load(open(p))
            data["transductive"] = True
            json.dump(data, open(p, "w"))
    records, problems = collect(out)
    assert problems == []
    t = {t.name: t for t in build_tables(records)}["base2new"]
    labels = {r["cells"][1] for r in t.rows}
    assert {"PromptSRC", "PromptKD (vit_b16) [transductive]", "PromptKD (toy_transductive) [transductive]"} <= labels
    assert any("[transductive]: trained on unlabelled training images of every class" in n for n in t.notes)


def test_teacher_from_an_official_checkpoint_file(root, tmp_path, monkeypatch):
    monkeypatch.setattr(promptkd, "OFFICIAL_TEACHER", dict(N_CTX_TEXT=4, PROMPT_DEPTH_TEXT=2, N_CTX_VISION=4,
                                                           PROMPT_DEPTH_VISION=2))
    g = torch.Generator().manual_seed(3)
    # the official teacher's whole CustomCLIP_teacher; the widths are read from a teacher built on the same backbone
    ref = promptkd.PromptKD.fabricate_teacher(str(root), "test-vit-tiny")
    t0 = _trainer(root, tmp_path / "a", opts=ref)
    d_t = t0.model.teacher.prompt_learner.ctx.shape[1]
    d_v = t0.model.teacher.dims["d_vision"]
    state = {"prompt_learner.ctx": torch.randn(4, d_t, generator=g),
             "prompt_learner.token_prefix": torch.zeros(3, 1, d_t),
             "image_encoder.VPT": torch.randn(4, d_v, generator=g),
             "image_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(4, d_v, generator=g),
             "text_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(4, d_t, generator=g),
             "image_encoder.conv1.weight": torch.zeros(1),  # frozen CLIP weights beside them: ignored
             "prompt_learner.ZS_image_encoder.proj": torch.zeros(1)}
    path = str(tmp_path / "model-best.pth.tar")
    torch.save({"state_dict": state, "epoch": 20}, path)
    t = _trainer(root, tmp_path / "b", opts=["TRAINER.PROMPTKD.TEACHER_DIR", "", "TRAINER.PROMPTKD.TEACHER_CKPT", path,
                                            "TRAINER.PROMPTKD.TEACHER_NAME", "test-vit-tiny"])
    learner = t.model.teacher.prompt_learner
    assert t._teacher.trainer.__name__ == "PromptSRC"
    assert torch.equal(learner.ctx, state["prompt_learner.ctx"])
    assert torch.equal(learner.vision_ctx, state["image_encoder.VPT"])
    assert torch.equal(learner.deep_vision_prompts[0], state["image_encoder.transformer.resblocks.1.VPT_shallow"])
    assert torch.equal(learner.deep_text_prompts[0], state["text_encoder.transformer.resblocks.1.VPT_shallow"])


def _teacher_dir(root, name, config, state=None):
    d = osp.join(str(root), name)
    os.makedirs(osp.join(d, "VLPromptLearner"), exist_ok=True)
    with open(osp.join(d, "config.yaml"), "w") as f:
        f.write(config)
    if state is not None:
        torch.save({"state_dict": state, "epoch": 1}, osp.join(d, "VLPromptLearner", "model-best.pth.tar"))
    return d


def test_teachers_that_cannot_serve_are_refused_with_one_line(root, tmp_path):
    def refused(opts, match, err=UserError):
        with pytest.raises(err, match=match) as e:
            _trainer(root, tmp_path / "r", opts=opts)
        restore_stdout()
        return str(e.value)

    # no teacher at all (the fixture's default is replaced by an empty value)
    refused(["TRAINER.PROMPTKD.TEACHER_DIR", ""], "PromptKD needs a teacher: set TRAINER.PROMPTKD.TEACHER_DIR", ConfigError)
    # a folder that is no finished run
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(["TRAINER.PROMPTKD.TEACHER_DIR", str(empty)], "TEACHER_DIR .*no config.yaml there")
    # learned state of other prompt settings than its config says (a class-list/geometry mismatch)
    good = promptkd.PromptKD.fabricate_teacher(str(root), "test-vit-tiny")[1]
    text = open(osp.join(good, "config.yaml")).read().replace("N_CTX_TEXT: 2", "N_CTX_TEXT: 3")
    state = torch.load(osp.join(good, "VLPromptLearner", "model-best.pth.tar"))["state_dict"]
    bad = _teacher_dir(tmp_path, "bad", text, state)
    msg = refused(["TRAINER.PROMPTKD.TEACHER_DIR", bad], "TEACHER_DIR: this teacher cannot serve")
    assert "\n" not in msg and "another shape" in msg
    # a trainer whose model gives no text/image features apart
    zs = _teacher_dir(tmp_path, "zs", "TRAINER:\n  NAME: ZeroshotCLIP\nMODEL:\n  BACKBONE:\n    NAME: test-vit-tiny\n")
    refused(["TRAINER.PROMPTKD.TEACHER_DIR", zs], "teacher run's trainer 'ZeroshotCLIP' is not a CLIP prompt-learning",
            ConfigError)
    # a teacher backbone at another input resolution than the student's batches
    small = _teacher_dir(tmp_path, "small", text.replace("test-vit-tiny", "toy-clip").replace("N_CTX_TEXT: 3",
                                                                                               "N_CTX_TEXT: 2"), state)
    refused(["TRAINER.PROMPTKD.TEACHER_DIR", small], "does not take the student's \\(224, 224\\) images", ConfigError)


def test_the_sweep_files_promptkd_runs_under_a_transductive_config_folder(tmp_path):
    from vlprompt.engine.methods import repo_root
    from vlprompt.sweep import expand

    out = str(tmp_path / "out")
    runs = expand("PromptKD", "base2new", ["dtd", "eurosat"], [1], output_root=out, root=repo_root())
    assert [osp.relpath(r.output_dir, out) for r in runs] == [
        "base2new/train_base/dtd/shots_16/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx_kd200_transductive/seed1",
        "base2new/test_new/dtd/shots_16/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx_kd200_transductive/seed1",
        "base2new/train_base/eurosat/shots_16/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx_transductive/seed1",
        "base2new/test_new/eurosat/shots_16/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx_transductive/seed1"]
    assert "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx_kd200.yaml" in runs[0].train_args("/data")


def test_an_official_student_checkpoint_maps_onto_the_learner(base_run):
    own = base_run.learnable_module().state_dict()
    official = {"image_encoder.VPT": own["vision_ctx"] + 1, "image_encoder.conv1.weight": torch.zeros(1),
                "image_encoder.transformer.resblocks.1.VPT_shallow": own["deep_vision_prompts.0"] + 2,
                **{k: v + 3 for k, v in own.items() if k.startswith("VPT_image_trans.")}}
    got = base_run.convert_legacy_state_dict(official)
    assert set(got) == set(own)
    assert torch.equal(got["vision_ctx"], own["vision_ctx"] + 1)
    assert torch.equal(got["deep_vision_prompts.0"], own["deep_vision_prompts.0"] + 2)
