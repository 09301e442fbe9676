"""MMRL: representation tokens inserted at the first representation layer and replaced after it, the
two heads (the representation head only for base classes), the loss terms, the official names and
per-dataset values, configs, checkpoints, and the toy world.

Build, forward, step, checkpoint and resume are covered for every trainer by tests/test_contract.py;
here only what is specific to MMRL. Small random backbone (``test-vit-tiny``: 12 + 12 blocks) on CPU.
The reference below writes the official computation (yunncheng/MMRL, ``clip/model_mmrl.py``) out on
open_clip's own blocks: tokens inserted right after SOS / the class token, a new causal mask over the
grown text sequence, the EOT feature at ``argmax + N``.
"""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from trainers.mmrl import (
    MMRL_DATASET_CONFIG,
    MMRLCLIP,
    check_rep_layers,
    mmrl_settings,
    uses_rep_head,
)
from vlprompt.clip import ArgError, build_clip_model, model_dims, tokenize
from vlprompt.config import ConfigError, extend_cfg, get_cfg_default, merge_from_file
from vlprompt.engine import build_trainer
from vlprompt.utils import restore_stdout

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG_DIR = osp.join(ROOT, "configs", "trainers", "MMRL")
CLASSES = ["cat", "dog", "sea_lion", "red star"]
LAYERS = [6, 7, 8, 9, 10, 11, 12]


@pytest.fixture(scope="module")
def tiny():
    return build_clip_model("test-vit-tiny").requires_grad_(False)


def _model(tiny, classes=CLASSES, template="a photo of a {}.", layers=LAYERS, perturb=True, **kw):
    torch.manual_seed(0)
    model = MMRLCLIP(tiny, classes, template, rep_layers=layers, **kw)
    if perturb:  # away from the identical initial projections, so that every layer's tokens differ
        with torch.no_grad():
            g = torch.Generator().manual_seed(3)
            for p in model.prompt_learner.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _images(n=3, seed=1):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _causal(n):
    m = torch.empty(n, n)
    m.fill_(float("-inf"))
    return m.triu_(1)


def _official(tiny, model, image):
    """The official CustomCLIP forward, written out on open_clip's blocks (see the module docstring)."""
    learner = model.prompt_learner
    rl = learner.representation_learner
    layers, n = learner.rep_layers, learner.n_rep_tokens
    r = rl.compound_rep_tokens
    t_tok = [proj(r) for proj in rl.compound_rep_tokens_r2tproj]
    v_tok = [proj(r) for proj in rl.compound_rep_tokens_r2vproj]
    ids = tokenize([model.template.format(c) for c in model.classnames])
    x = tiny.token_embedding(ids) + tiny.positional_embedding
    k = x.shape[0]
    mask, c = tiny.attn_mask, 0
    for i, block in enumerate(tiny.transformer.resblocks):
        layer = i + 1
        if layer in layers:
            tail = x[:, 1:] if layer == layers[0] else x[:, 1 + n:]
            x = torch.cat([x[:, :1], t_tok[c].expand(k, -1, -1), tail], 1)
            c += 1
        if layer >= layers[0]:
            mask = _causal(x.shape[1])
        x = block(x, attn_mask=mask)
    txt = tiny.ln_final(x)[torch.arange(k), ids.argmax(-1) + n] @ tiny.text_projection
    v = tiny.visual
    b = image.shape[0]
    y = v.conv1(image).reshape(b, v.conv1.out_channels, -1).permute(0, 2, 1)
    y = torch.cat([v.class_embedding + torch.zeros(b, 1, y.shape[-1]), y], 1) + v.positional_embedding
    y, c = v.ln_pre(y), 0
    for i, block in enumerate(v.transformer.resblocks):
        layer = i + 1
        if layer in layers:
            tail = y[:, 1:] if layer == layers[0] else y[:, 1 + n:]
            y = torch.cat([y[:, :1], v_tok[c].expand(b, -1, -1), tail], 1)
            c += 1
        y = block(y)
    rep = v.ln_post(y[:, 1:1 + n]).mean(dim=1) @ learner.image_encoder.proj_rep
    cls = v.ln_post(y[:, 0]) @ v.proj
    img_n, rep_n, txt_n = [t / t.norm(dim=-1, keepdim=True) for t in (cls, rep, txt)]
    logits, logits_rep = 100.0 * img_n @ txt_n.t(), 100.0 * rep_n @ txt_n.t()
    return logits, logits_rep, 0.7 * logits + (1 - 0.7) * logits_rep, img_n, txt_n


def _trainer(tmp_path, *opts, folder="five", n_classes=5):
    make_image_folder(str(tmp_path / folder), n_classes=n_classes, n_per_class=4)
    cfg = make_cfg(tmp_path, trainer="MMRL", folder=folder, output_dir=str(tmp_path / f"out_{folder}"),
                   opts=["TRAINER.MMRL.PREC", "fp32", *opts])
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


# ------------------------------------------------------------------------------------------------
# parameters, the official computation, the fast paths
# ------------------------------------------------------------------------------------------------


def test_parameters_have_the_official_names_shapes_and_init(tiny):
    dims = model_dims(tiny)
    d_t, d_v, d_e = dims["d_text"], dims["d_vision"], dims["d_embed"]
    learner = _model(tiny, perturb=False).prompt_learner
    shapes = {k: tuple(v.shape) for k, v in learner.state_dict().items()}
    expected = {"representation_learner.compound_rep_tokens": (5, 512), "image_encoder.proj_rep": (d_v, d_e)}
    for i in range(7):
        expected[f"representation_learner.compound_rep_tokens_r2tproj.{i}.weight"] = (d_t, 512)
        expected[f"representation_learner.compound_rep_tokens_r2tproj.{i}.bias"] = (d_t,)
        expected[f"representation_learner.compound_rep_tokens_r2vproj.{i}.weight"] = (d_v, 512)
        expected[f"representation_learner.compound_rep_tokens_r2vproj.{i}.bias"] = (d_v,)
    assert shapes == expected  # nothing class-derived is saved
    rl = learner.representation_learner
    for projs in (rl.compound_rep_tokens_r2tproj, rl.compound_rep_tokens_r2vproj):  # deep copies of one Linear
        assert all(torch.equal(p.weight, projs[0].weight) and torch.equal(p.bias, projs[0].bias) for p in projs)
        assert projs[0].weight.data_ptr() != projs[1].weight.data_ptr()  # copies, not one shared module
    assert 0.015 < rl.compound_rep_tokens.std().item() < 0.025  # N(0, 0.02^2)
    assert abs(learner.image_encoder.proj_rep.std().item() - d_v ** -0.5) < 0.2 * d_v ** -0.5
    assert not torch.allclose(learner.image_encoder.proj_rep, tiny.visual.proj)  # not a copy of proj


@pytest.mark.parametrize("layers", [LAYERS, [1, 4, 12], [12]])
def test_forward_equals_the_official_computation_with_gradients(tiny, layers):
    model = _model(tiny, layers=layers)
    img = _images()
    ours = model.forward_all(img)
    ref = _official(tiny, model, img)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    params = dict(model.prompt_learner.named_parameters())

    def loss(out):
        logits, logits_rep, _, img_n, txt_n = out
        y = torch.tensor([0, 2, 3])
        return (F.cross_entropy(logits, y) + F.cross_entropy(logits_rep, y) + img_n.sum() + txt_n.sum())

    g_ours = torch.autograd.grad(loss(ours), list(params.values()))
    g_ref = torch.autograd.grad(loss(ref), list(params.values()))
    for name, a, b in zip(params, g_ours, g_ref):
        # float32 sums in another order (and another GEMM kernel on AVX2 than on AVX-512): ~3e-6 of the
        # largest gradient, so the absolute tolerance scales with it
        torch.testing.assert_close(a, b, atol=1e-5 * max(1.0, float(b.abs().max())), rtol=1e-4, msg=name)
        assert a.abs().sum() > 0, name  # every learnable tensor gets a gradient


@pytest.mark.parametrize("template", ["a photo of a {}.", "{} texture."])
@pytest.mark.parametrize("per_class", [False, True])
def test_text_fast_paths_equal_the_plain_pass_with_gradients(tiny, template, per_class):
    """Shared prefix (SOS + shared words, or SOS alone: "{} texture."), length groups and fast attention
    with the inserted tokens, against open_clip's blocks on every class (fp32, 1e-6 with gradients)."""
    model = _model(tiny, classes=["cat", "sea lion", "a very long name of a class", "x"], template=template)
    enc, learner = model.text_encoder, model.prompt_learner
    tokens = learner.representation_learner()[0]
    if per_class:  # (K, N, d) tokens that differ per class: nothing after the insertion is shared
        tokens = [t.unsqueeze(0) + torch.arange(4.0).view(4, 1, 1) * 0.01 for t in tokens]
    insert, deep = learner.schedule(tokens)
    assert enc.shared_prefix_length(model.prompt_embeddings, model.eot_idx, deep, slice(1, 6), insert=insert) == (
        0 if per_class else 5 if template.startswith("a photo") else 1)
    outs, grads = [], []
    for fast in (True, False):
        enc.fast = fast
        out = enc(model.prompt_embeddings, model.eot_idx, deep, insert=insert)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
        outs.append(out)
        grads.append(torch.autograd.grad(out, learner.representation_learner.compound_rep_tokens, g,
                                         retain_graph=True)[0])
    enc.fast = None
    for a, b in ((outs[0], outs[1]), (grads[0], grads[1])):  # 1e-6 relative to the magnitude compared
        torch.testing.assert_close(a, b, atol=1e-6 * max(1.0, float(b.detach().abs().max())), rtol=1e-6)
    assert grads[0].abs().sum() > 0


def test_vision_fast_path_equals_the_plain_pass_with_inserted_tokens(tiny):
    model = _model(tiny)
    enc, learner = model.image_encoder, model.prompt_learner
    insert, deep = learner.schedule(learner.representation_learner()[1])
    img = _images(2)
    outs, grads = [], []
    for fast in (True, False):
        enc.fast = fast
        pooled, tokens = enc(img, deep_prompts=deep, insert=insert, return_prompt_tokens=True)
        assert tokens.shape == (2, 5, enc.width)
        out = torch.cat([pooled, tokens.flatten(1)], dim=1)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
        outs.append(out)
        grads.append(torch.autograd.grad(out, learner.representation_learner.compound_rep_tokens, g,
                                         retain_graph=True)[0])
    enc.fast = None
    for a, b in ((outs[0], outs[1]), (grads[0], grads[1])):
        torch.testing.assert_close(a, b, atol=1e-6 * max(1.0, float(b.detach().abs().max())), rtol=1e-6)
    assert grads[0].abs().sum() > 0


def test_tokens_enter_exactly_at_the_first_representation_layer(tiny):
    model = _model(tiny)
    learner = model.prompt_learner
    inputs = {"text": [], "vision": []}
    hooks = [b.register_forward_pre_hook(lambda m, a: inputs["text"].append(a[0].detach().clone()))
             for b in tiny.transformer.resblocks]
    hooks += [b.register_forward_pre_hook(lambda m, a: inputs["vision"].append(a[0].detach().clone()))
              for b in tiny.visual.transformer.resblocks]

    def run():
        for v in inputs.values():
            v.clear()
        with torch.no_grad():
            model.forward_all(_images(2))
        return {k: list(v) for k, v in inputs.items()}

    try:
        first = run()
        with torch.no_grad():
            t_tok, v_tok = learner.representation_learner()
        L = int(model.eot_idx.max()) + 1  # the EOT-truncated text pass
        assert [x.shape[1] for x in first["text"]] == [L] * 5 + [L + 5] * 7  # 5 inserted after SOS at block 5
        assert [x.shape[1] for x in first["vision"]] == [50] * 5 + [55] * 7  # 5 appended at block 5
        for k, block in enumerate(range(5, 12)):  # inserted / replaced: the projected tokens themselves
            assert torch.equal(first["text"][block][:, 1:6], t_tok[k].expand(4, -1, -1)), block
            assert torch.equal(first["vision"][block][:, -5:], v_tok[k].expand(2, -1, -1)), block
        # the projection of layer REP_LAYERS[k] changes block inputs from block REP_LAYERS[k] - 1 on only
        proj = learner.representation_learner.compound_rep_tokens_r2tproj[3]  # layer 9 = block 8
        vproj = learner.representation_learner.compound_rep_tokens_r2vproj[3]
        with torch.no_grad():
            proj.bias.add_(0.5)
            vproj.bias.add_(0.5)
        moved = run()
    finally:
        for h in hooks:
            h.remove()
    for tower in ("text", "vision"):
        same = [torch.equal(a, b) for a, b in zip(first[tower], moved[tower])]
        assert same == [True] * 8 + [False] * 4, tower


def test_bad_insertions_are_refused(tiny):
    model = _model(tiny)
    enc, venc = model.text_encoder, model.image_encoder
    t_tok, v_tok = model.prompt_learner.representation_learner()
    with pytest.raises(ValueError, match="must be None"):
        enc(model.prompt_embeddings, model.eot_idx, [t_tok[0]] + [None] * 5, insert=(5, t_tok[1]))
    with pytest.raises(ValueError, match="expected 5 tokens"):
        enc(model.prompt_embeddings, model.eot_idx, None, insert=(5, t_tok[0][:3]))
    with pytest.raises(ValueError, match="not a text block"):
        enc(model.prompt_embeddings, model.eot_idx, None, insert=(12, t_tok[0]))
    with pytest.raises(ValueError, match="exclusive"):
        venc(_images(1), v_tok[0], insert=(5, v_tok[1]))
    with pytest.raises(ValueError, match="width"):
        venc(_images(1), insert=(5, t_tok[0]))


def test_check_rep_layers():
    assert check_rep_layers([6, 7, 12], 12) == [6, 7, 12]
    for bad, msg in [([], "give the layers"), ([7, 6], "strictly increasing"), ([6, 6], "strictly increasing"),
                     ([0, 3], "1..12"), ([6, 13], "1..12")]:
        with pytest.raises(ArgError, match=msg):
            check_rep_layers(bad, 12)


# ------------------------------------------------------------------------------------------------
# heads, loss terms, per-dataset values (trainer)
# ------------------------------------------------------------------------------------------------


def test_eval_head_follows_the_official_test(tmp_path):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cases = [("B2N", "base", "OxfordPets", True), ("B2N", "new", "OxfordPets", False),
             ("B2N", "all", "OxfordPets", False), ("FS", "all", "DescribableTextures", True),
             ("CD", "all", "ImageNet", True), ("CD", "all", "ImageNetV2", False), ("CD", "all", "EuroSAT", False)]
    for task, sub, name, fused in cases:
        cfg.TASK, cfg.DATASET.SUBSAMPLE_CLASSES, cfg.DATASET.NAME = task, sub, name
        assert uses_rep_head(cfg) is fused, (task, sub, name)
    cfg.TASK = "XD"
    with pytest.raises(ConfigError, match="TASK must be one of"):
        uses_rep_head(cfg)


@pytest.mark.parametrize("sub", ["base", "new"])
def test_representation_head_is_used_only_for_base_classes(tmp_path, sub):
    t = _trainer(tmp_path, "DATASET.SUBSAMPLE_CLASSES", sub, folder="six", n_classes=6)
    assert t.num_classes == 3 and t.model.use_rep_head is (sub == "base")
    t.set_model_mode("eval")
    img = _images(4)
    with torch.no_grad():
        out = t.model_inference(img)
        logits, logits_rep, fusion, _, _ = t.model.forward_all(img)
        torch.testing.assert_close(out, fusion if sub == "base" else logits, atol=0, rtol=0)
        torch.testing.assert_close(fusion, 0.7 * logits + (1 - 0.7) * logits_rep)
        t.model.prompt_learner.image_encoder.proj_rep.mul_(-1.0)  # only the representation head uses it
        moved = t.model_inference(img)
    assert torch.equal(moved, out) is (sub == "new")


def test_loss_terms_equal_the_official_formulas(tmp_path):
    t = _trainer(tmp_path)
    img, y = _images(4), torch.tensor([0, 1, 3, 4])
    terms, logits = t.loss_terms(img, y)
    assert list(terms) == ["ce", "ce_rep", "reg_image", "reg_text"]
    model = t.model
    with torch.no_grad():
        ref_logits, ref_rep, fusion, img_n, txt_n = model.forward_all(img)
        zs_img = model.zero_shot.image_features(img)
        zs_img = zs_img / zs_img.norm(dim=-1, keepdim=True)
        zs_txt = model.zero_shot.text_features()
    torch.testing.assert_close(logits, fusion)  # the logged accuracy is the fused output's, as officially
    torch.testing.assert_close(terms["ce"], 0.7 * F.cross_entropy(ref_logits, y))
    torch.testing.assert_close(terms["ce_rep"], (1 - 0.7) * F.cross_entropy(ref_rep, y))
    torch.testing.assert_close(terms["reg_image"], 1.0 * (1 - F.cosine_similarity(img_n, zs_img, dim=1).mean()))
    torch.testing.assert_close(terms["reg_text"], 1.0 * (1 - F.cosine_similarity(txt_n, zs_txt, dim=1).mean()))
    assert all(v.item() > 0 for v in terms.values())
    sum(terms.values()).backward()
    learner = t._models["MultiModalRepresentationLearner"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
    assert all(p.grad is None for n, p in t.model.named_parameters() if not n.startswith("prompt_learner."))


def test_per_dataset_values_and_the_switch(tmp_path):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME = "StanfordCars"
    s = mmrl_settings(cfg)
    assert (s["REG_WEIGHT"], s["REP_DIM"], s["changed"]) == (7.0, 512, {"REG_WEIGHT": (1.0, 7.0)})
    cfg.DATASET.NAME = "EuroSAT"
    assert (mmrl_settings(cfg)["REG_WEIGHT"], mmrl_settings(cfg)["REP_DIM"]) == (0.01, 2048)
    cfg.TRAINER.MMRL.DATASET_CONFIG = False
    assert (mmrl_settings(cfg)["REG_WEIGHT"], mmrl_settings(cfg)["REP_DIM"]) == (1.0, 512)
    cfg.DATASET.NAME, cfg.TRAINER.MMRL.DATASET_CONFIG = "ImageFolder", True
    assert mmrl_settings(cfg)["changed"] == {}
    assert set(MMRL_DATASET_CONFIG) == {"StanfordCars", "FGVCAircraft", "SUN397", "DescribableTextures", "Food101",
                                        "OxfordFlowers", "UCF101", "ImageNet", "Caltech101", "OxfordPets", "EuroSAT"}


def test_reg_weight_and_rep_dim_reach_the_model(tmp_path):
    t = _trainer(tmp_path, "TRAINER.MMRL.REG_WEIGHT", "3.0", "TRAINER.MMRL.REP_DIM", "64",
                 "TRAINER.MMRL.N_REP_TOKENS", "2", "TRAINER.MMRL.REP_LAYERS", "[3, 5]")
    learner = t._models["MultiModalRepresentationLearner"]
    assert learner.representation_learner.compound_rep_tokens.shape == (2, 64)
    assert len(learner.representation_learner.compound_rep_tokens_r2tproj) == 2
    terms, _ = t.loss_terms(_images(2), torch.tensor([0, 1]))
    with torch.no_grad():
        _, _, _, img_n, _ = t.model.forward_all(_images(2))
        zs = t.model.zero_shot.image_features(_images(2))
    torch.testing.assert_close(terms["reg_image"], 3.0 * (1 - F.cosine_similarity(img_n, F.normalize(zs), dim=1).mean()))
    assert t.extra_results()["mmrl"] == {"REG_WEIGHT": 3.0, "REP_DIM": 64, "eval_output": "class_token"}


def test_bad_settings_name_the_key(tmp_path):
    for opts, key in [(["TRAINER.MMRL.REP_LAYERS", "[8, 6]"], "TRAINER.MMRL.REP_LAYERS"),
                      (["TRAINER.MMRL.REP_LAYERS", "[6, 13]"], "TRAINER.MMRL.REP_LAYERS"),
                      (["TRAINER.MMRL.N_REP_TOKENS", "0"], "TRAINER.MMRL.N_REP_TOKENS"),
                      (["TRAINER.MMRL.ALPHA", "1.5"], "TRAINER.MMRL.ALPHA"),
                      (["TASK", "XD"], "TASK")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            _trainer(tmp_path, *opts)


def test_eval_cache_follows_parameter_changes(tmp_path):
    t = _trainer(tmp_path)
    t.set_model_mode("eval")
    img = _images(2)
    with torch.no_grad():
        a = t.model_inference(img)
        assert torch.equal(t.model_inference(img), a)
        t._models["MultiModalRepresentationLearner"].representation_learner.compound_rep_tokens.add_(0.3)
        b = t.model_inference(img)
    assert not torch.equal(a, b)  # officially the text features of the first evaluation would be reused


# ------------------------------------------------------------------------------------------------
# checkpoints and configs
# ------------------------------------------------------------------------------------------------


def test_official_whole_model_checkpoint_loads_onto_another_class_list(tmp_path):
    t = _trainer(tmp_path)
    own = t._models["MultiModalRepresentationLearner"].state_dict()
    g = torch.Generator().manual_seed(5)
    official = {k: torch.randn(v.shape, generator=g) for k, v in own.items()}
    official.update({"prompt_embeddings": torch.zeros(5, 77, 32), "image_encoder.conv1.weight": torch.zeros(3),
                     "image_encoder.proj": torch.zeros(48, 40), "text_encoder.positional_embedding": torch.zeros(3)})
    folder = tmp_path / "official" / "MultiModalRepresentationLearner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": official, "epoch": 10}, str(folder / "model.pth.tar-10"))
    other = _trainer(tmp_path, folder="three", n_classes=3)
    try:
        other.load_model(str(tmp_path / "official"), epoch=10)
    finally:
        restore_stdout()
    mine = other._models["MultiModalRepresentationLearner"].state_dict()
    assert all(torch.equal(mine[k], official[k]) for k in own)
    with torch.no_grad():
        assert other.model_inference(_images(2)).shape == (2, 3)
    with pytest.raises(RuntimeError, match="another shape"):
        _trainer(tmp_path, "TRAINER.MMRL.REP_DIM", "64", folder="three", n_classes=3).load_model(
            str(tmp_path / "official"), epoch=10)


def _load_yaml(name):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, osp.join(CFG_DIR, name + ".yaml"))
    return cfg


def test_official_config_values_and_recipes():
    import trainers  # noqa: F401
    from vlprompt.engine.methods import method_spec

    node = get_cfg_default()
    extend_cfg(node)
    m = node.TRAINER.MMRL
    assert (m.ALPHA, m.REG_WEIGHT, list(m.REP_LAYERS), m.REP_DIM, m.N_REP_TOKENS, m.PREC, m.DATASET_CONFIG) == (
        0.7, 1.0, LAYERS, 512, 5, "fp16", True)
    assert node.TASK == "B2N"
    expect = {  # name: (batch, epochs, warmup, REG_WEIGHT, TASK, DATASET_CONFIG)
        "vit_b16": (4, 10, 1, 1.0, "B2N", True), "vit_b16_imagenet": (32, 5, 1, 1.0, "B2N", True),
        "vit_b16_few_shot": (32, 50, 1, 0.5, "FS", True), "vit_b16_imagenet_few_shot": (32, 5, 1, 1.0, "FS", True),
        "vit_b16_cross_datasets": (32, 1, 0, 0.2, "CD", False)}
    for name, (bs, ep, wu, rw, task, dc) in expect.items():
        cfg = _load_yaml(name)
        m = cfg.TRAINER.MMRL
        assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.WARMUP_EPOCH, m.REG_WEIGHT,
                cfg.TASK, m.DATASET_CONFIG) == (bs, ep, wu, rw, task, dc), name
        assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.WARMUP_CONS_LR) == (
            "adamw", 0.001, "cosine", 1e-5), name
        assert (m.ALPHA, list(m.REP_LAYERS), m.REP_DIM, m.N_REP_TOKENS, m.PREC) == (0.7, LAYERS, 512, 5, "amp")
        assert (cfg.DATALOADER.TEST.BATCH_SIZE, tuple(cfg.INPUT.RRCROP_SCALE), cfg.MODEL.BACKBONE.NAME) == (
            250, (0.5, 1), "ViT-B/16"), name
    rec = method_spec("MMRL").all_recipes()
    assert rec["base2new"] == {"config": "vit_b16", "per_dataset": {"imagenet": "vit_b16_imagenet"}}
    assert rec["cross_dataset"] == rec["domain_generalization"] == {"config": "vit_b16_cross_datasets"}
    assert rec["few_shot"] == {"config": "vit_b16_few_shot", "per_dataset": {"imagenet": "vit_b16_imagenet_few_shot"}}
    assert method_spec("MMRL").order == 140 and method_spec("MMRL").model_name == "MultiModalRepresentationLearner"


def test_parameter_count_at_vit_b16():
    from trainers.mmrl import MMRLLearner

    clip = build_clip_model("ViT-B/16", random_init=True)
    learner = MMRLLearner(clip)
    n = sum(p.numel() for p in learner.parameters())
    assert n == 5 * 512 + 7 * (512 * 768 + 768) + 7 * (512 * 512 + 512) + 768 * 512 == 4_992_256
    assert sum(p.numel() for p in MMRLLearner(clip, rep_dim=2048).parameters()) == (
        5 * 2048 + 7 * (2048 * 768 + 768) + 7 * (2048 * 512 + 512) + 768 * 512)
