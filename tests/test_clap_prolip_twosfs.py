"""CLAP, ProLIP and 2SFS: the official formulas, initialisations and which tensors learn (tiny backbones)."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import method_model, small_resnet_clip
from vlprompt.clip import build_clip_model
from vlprompt.clip.tokenizer import tokenize
from vlprompt.engine.methods import load_plugins

load_plugins()

from trainers import clap as clap_mod  # noqa: E402
from trainers import prolip as prolip_mod  # noqa: E402
from trainers import twosfs as twosfs_mod  # noqa: E402

NAMES = ["red_circle", "blue square", "green star"]


def tiny():
    torch.manual_seed(0)
    return build_clip_model("test-vit-tiny", random_init=True).eval()


# ----------------------------------------------------------------------------------------------- CLAP
def test_clap_zero_shot_init_is_the_raw_template_mean_without_name_cleaning():
    clip = tiny()
    model = method_model("CLAP", clip, NAMES, dataset="OxfordPets")
    templates = clap_mod.clap_templates("OxfordPets")
    imagenet = clap_mod.clap_templates("ImageNet")
    assert len(imagenet) == 8 and imagenet[-1] == "a photo of a {}." and templates == ["a photo of a {}, a type of pet."]
    with torch.no_grad():  # raw (unnormalised) features; 'red_circle' formatted as given (official quirk)
        want = torch.stack([clip.encode_text(tokenize([t.format(n) for t in templates], model=clip)).mean(0)
                            for n in NAMES])
    assert torch.allclose(model.adapter.prototypes, want, atol=1e-6)
    assert torch.equal(model.adapter.base_text_features, model.adapter.prototypes.detach())
    assert not torch.allclose(want.norm(dim=-1), torch.ones(3))


def test_clap_multipliers_penalty_and_logits():
    torch.manual_seed(1)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    zs = torch.randn(6, 3)
    p = torch.softmax(zs, -1)
    want = torch.tensor([p[:2, 0].mean(), p[2:3, 1].mean(), p[3:, 2].mean()])
    lam = clap_mod.class_multipliers(labels, zs, 3, "l2")
    assert torch.allclose(lam, want, atol=1e-6)
    assert torch.allclose(clap_mod.class_multipliers(labels, zs, 3, "l2_corrected"), want * 3 / want.sum(), atol=1e-6)
    assert torch.equal(clap_mod.class_multipliers(labels, zs, 3, "l2_balanced"), torch.ones(3))
    assert torch.allclose(clap_mod.class_multipliers(labels, zs, 3, "l2_constant"), want.mean().expand(3), atol=1e-6)

    clip = tiny()
    model = method_model("CLAP", clip, NAMES)
    ad = model.adapter
    ad.alpha_constraint.copy_(lam)
    with torch.no_grad():
        ad.prototypes.add_(torch.randn_like(ad.prototypes))
    term = ad.constraint_term()
    assert torch.allclose(term, (lam * ((ad.prototypes - ad.base_text_features) ** 2).sum(-1)).mean())
    f = torch.randn(5, ad.prototypes.shape[1])
    logits = model.logits_from_image_features(f)
    want_logits = clip.logit_scale.exp() * F.normalize(f, dim=-1) @ F.normalize(ad.prototypes, dim=-1).t()
    assert torch.allclose(logits, want_logits, atol=1e-5)
    (F.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1])) + term).backward()
    assert ad.prototypes.grad is not None and ad.prototypes.grad.abs().sum() > 0
    # the adaptative outer step: lambda <- max(0, lambda + rho h) (rho 0 at first), rho <- h
    h = ((ad.prototypes - ad.base_text_features) ** 2).sum(-1).detach()
    ad.outer_step()
    assert torch.allclose(ad.alpha_constraint, lam) and torch.allclose(ad.penalty_parameter, h)
    ad.outer_step()
    assert torch.allclose(ad.alpha_constraint, lam + h * h)


def test_clap_epoch_batches_follow_the_image_loader():
    feats, labels = torch.arange(40.0).view(20, 2), torch.arange(20)
    src = clap_mod.PoolSource(feats, labels, batch_size=8, n_batches=1, device="cpu")
    (batch,), = list(src)
    assert len(src) == 1 and batch["feat"].shape == (8, 2)
    assert torch.equal(batch["feat"][:, 0] / 2, batch["label"].float())  # rows keep their labels


# ----------------------------------------------------------------------------------------------- ProLIP
@pytest.mark.parametrize("backbone", ["vit", "rn"])
def test_prolip_projection_is_taken_out_exactly(backbone):
    clip = tiny() if backbone == "vit" else small_resnet_clip()
    img = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = clip.encode_image(img)
    model = method_model("ProLIP", clip, NAMES)
    with torch.no_grad():
        x_before = model.image_encoder(img)
        got = model.proj(x_before)
    assert x_before.shape[1] != got.shape[1] or backbone == "rn"
    assert torch.allclose(got, want, atol=1e-5)
    trainable = [n for n, p in model.proj.named_parameters()]
    assert trainable == (["vit_proj"] if backbone == "vit" else ["linear.weight"])  # RN bias frozen (a buffer)


def test_prolip_loss_and_gradients():
    clip = tiny()
    model = method_model("ProLIP", clip, NAMES)
    x = torch.randn(6, model.proj.vit_proj.shape[0])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        model.proj.vit_proj.add_(0.01 * torch.randn_like(model.proj.vit_proj))
    logits = model.logits_from_image_features(x)
    t = model.text_head.text_features()
    assert torch.allclose(logits, 100.0 * F.normalize(x @ model.proj.vit_proj, dim=-1) @ t.t(), atol=1e-4)
    reg = model.reg()
    assert torch.allclose(reg, F.mse_loss(model.proj.vit_proj, model.proj.w0, reduction="sum"))
    (F.cross_entropy(logits, y) + 0.1 * reg).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {"proj.vit_proj"}


def test_prolip_view_order_and_lambda_rules():
    class T:
        method_cfg = type("M", (), {"AUG_VIEWS": 300})()
    order = [prolip_mod.ProLIP.view_of_epoch(T, e) for e in range(301)]
    assert order[:3] == [1, 2, 3] and order[298:301] == [299, 0, 1]


# ----------------------------------------------------------------------------------------------- 2SFS
def test_twosfs_trains_only_block_layernorms_in_stage_one():
    clip = tiny()
    chosen = twosfs_mod.trainable_layernorms(clip)
    names = [n for side in ("vision", "text") for n, _ in chosen[side]]
    assert names and all("resblocks." in n for n in names)
    assert not any(k in n for n in names for k in ("ln_pre", "ln_post", "ln_final"))
    outer = twosfs_mod.trainable_layernorms(clip, outer=True)
    extra = {n for side in ("vision", "text") for n, _ in outer[side]} - set(names)
    assert extra == {"visual.ln_pre", "visual.ln_post", "ln_final"}
    later = twosfs_mod.trainable_layernorms(clip, vision_start=1, modality="vision")
    assert later["text"] == [] and all(".resblocks.0." not in n for n, _ in later["vision"])


def _grads(model):
    return {n for n, p in model.twostage.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_twosfs_stage_gradients_and_classifier_init():
    clip = tiny()
    model = method_model("TwoSFS", clip, NAMES)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.twostage.parameters():
        p.requires_grad_(True)
    img, y = torch.randn(3, 3, 224, 224), torch.tensor([0, 1, 2])
    model.twostage.train()
    model.stage = 1
    F.cross_entropy(model(img), y).backward()
    g1 = _grads(model)
    assert g1 and all(n.startswith("ln.") for n in g1)
    assert any(n.startswith("ln.text.") for n in g1) and any(n.startswith("ln.vision.") for n in g1)
    model.twostage.zero_grad(set_to_none=True)
    with torch.no_grad():  # the adapted text encoder differs from the pretrained one
        for p in model.twostage.ln.parameters():
            p.add_(0.05)
    model.init_classifier()
    ids = tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES], model=clip)
    with torch.no_grad():
        want = F.normalize(clip.encode_text(ids).float(), dim=-1)
    assert torch.allclose(model.twostage.head.classifier, want, atol=1e-5)
    model.stage = 2
    F.cross_entropy(model(img), y).backward()
    assert _grads(model) == {"head.classifier"}
    # selective inference: known classes use the classifier rows, a novel one its adapted text feature
    with torch.no_grad():
        model.twostage.head.classifier.mul_(-1)
    model.twostage.eval()
    model.set_classnames(["green star", "yellow moon"])
    w = model.inference_classifier()
    ids = tokenize(["a photo of a yellow moon."], model=clip)
    with torch.no_grad():
        novel = F.normalize(clip.encode_text(ids).float(), dim=-1)[0]
    assert torch.allclose(w[0], -want[2], atol=1e-5) and torch.allclose(w[1], novel, atol=1e-5)


def test_twosfs_budget_source_follows_the_official_passes():
    class Head:
        initialised = torch.tensor(False)

    class T:  # a trainer with a loader of 3 batches, budget 7 = 4 (stage 1) + 3 (stage 2), 2 engine epochs
        train_loader_x = ["a", "b", "c"]
        total_iters, stage1_iters, max_epoch, count_iters, _pass = 7, 4, 2, 0, None
        precision = type("P", (), {"autocast": staticmethod(contextlib.nullcontext)})()

        def __init__(self):
            self.model = type("M", (), {"stage": 1, "twostage": type("S", (), {"head": Head()})(),
                                        "init_classifier": lambda m: setattr(Head, "initialised", torch.tensor(True))})()

        enter_stage = twosfs_mod.TwoSFS.enter_stage
        epoch_iterations = twosfs_mod.TwoSFS.epoch_iterations

    t, seen = T(), []
    for epoch in range(2):
        for (b,) in twosfs_mod.BudgetSource(t, t.epoch_iterations(epoch), last=epoch == 1):
            seen.append((t.model.stage, b))
            t.count_iters += 1
    # stage 1: a, b, c, a (the 2nd pass cut at 4); stage 2 starts a fresh pass; the pass crosses the epoch border
    assert seen == [(1, "a"), (1, "b"), (1, "c"), (1, "a"), (2, "a"), (2, "b"), (2, "c")]
    assert bool(Head.initialised) and [t.epoch_iterations(e) for e in range(2)] == [3, 4]


# ----------------------------------------------------------------------------------------------- ProLIP's search
@pytest.mark.parametrize("split", ["val", "test"])
def test_prolip_search_reads_only_the_selection_split(split, tmp_path, monkeypatch):
    import vlprompt.features.extract as extract
    from tests.helpers import make_cfg, make_image_folder
    from vlprompt.engine import build_trainer
    from vlprompt.utils import restore_stdout

    make_image_folder(str(tmp_path / "four"), n_classes=4, n_per_class=6)
    seen, real = {}, extract.loader_features

    def spy(trainer, loader, name, view=None, seed=None):
        seen.setdefault(name, set()).update(str(it.impath) for it in loader.dataset.data_source)
        return real(trainer, loader, name, view=view, seed=seed)

    monkeypatch.setattr(extract, "loader_features", spy)
    opts = ["TRAINER.PROLIP.PREC", "fp32", "TRAINER.PROLIP.AUG_VIEWS", "2", "TRAINER.PROLIP.LR_GRID", "[0.1, 0.001]",
            "TRAINER.PROLIP.LAMBDA_GRID", "[1.0, 0.0]", "OPTIM.MAX_EPOCH", "2", "TEST.NO_TEST", "True",
            "FEATURES.DIR", str(tmp_path / "store"), "TEST.SELECTION_SPLIT", split]
    cfg = make_cfg(str(tmp_path), trainer="ProLIP", folder="four", output_dir=str(tmp_path / "out"), opts=opts)
    cfg.freeze()
    try:
        t = build_trainer(cfg)
        t.train()
    finally:
        restore_stdout()
    paths = {n: {str(it.impath) for it in ld.dataset.data_source} for n, ld in (("val", t.val_loader),
                                                                              ("test", t.test_loader))}
    assert seen.get(split) == paths[split]  # the search read its split ...
    other = "test" if split == "val" else "val"
    assert other not in seen  # ... and nothing of the other (no final test here)
    sel = t.hp_selection
    assert sel["split"] == split and len(sel["grid"]) == 4
    assert (sel["lr"], sel["lambda"]) == tuple(t.search_result[k] for k in ("lr", "lambda"))
    assert t._optimizers["proj"][0].param_groups[0]["initial_lr"] == sel["lr"]
