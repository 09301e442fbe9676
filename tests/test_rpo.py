"""RPO: the official init, the read-only masks, the forward against the official computation (written out on
open_clip's blocks: the full 77-token text pass with one mask per class repeated over the heads, the visual
mask on every block), the read-only property (the frozen CLIP's class and EOT features are untouched), class
names with underscores, configs and the ViT-B/16 parameter count.

Build, forward, step, checkpoint onto another class list and resume are covered for every trainer by
tests/test_contract.py. Small random backbone (``test-vit-tiny``: 12 + 12 blocks, widths 32 / 48) on CPU.
"""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from trainers.rpo import RPOCLIP, text_read_only_mask, vision_read_only_mask
from vlprompt.clip import build_clip_model, tokenize
from vlprompt.config import ConfigError, extend_cfg, get_cfg_default, merge_from_file
from vlprompt.engine import build_trainer
from vlprompt.utils import restore_stdout

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSES = ["cat", "sea_lion", "a very long class name"]
K = 3


@pytest.fixture(scope="module")
def tiny():
    return build_clip_model("test-vit-tiny").requires_grad_(False)


def _model(tiny, classes=CLASSES, k=K, **kw):
    torch.manual_seed(0)
    return RPOCLIP(tiny, classes, k=k, **kw)


def _images(n=3, seed=1):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _official(tiny, model, image):
    """The official CustomCLIP forward (mlvlab/RPO ``trainers/rpo.py``) on open_clip's blocks."""
    tp, ip = model.prompt_learner.text_prompt, model.prompt_learner.img_prompt
    k = tp.shape[0]
    ids = tokenize([model.prompt.replace("_", c) for c in model.classnames])
    lens = ids.argmax(-1) + 1
    x = tiny.token_embedding(ids) + tiny.positional_embedding
    x = x.clone()
    for i in range(k):
        x[torch.arange(x.shape[0]), lens + i, :] = tp[i, :].repeat(x.shape[0], 1)
    heads = tiny.transformer.resblocks[0].attn.num_heads
    masks = []
    for idx in lens:
        m = torch.empty(77, 77).fill_(float("-inf")).triu_(1)
        m[:, idx:] = float("-inf")
        masks.append(m.repeat(heads, 1, 1))
    mask = torch.cat(masks)
    for block in tiny.transformer.resblocks:
        x = block(x, attn_mask=mask)
    x = tiny.ln_final(x)
    text_f = torch.stack([x[torch.arange(x.shape[0]), lens + i] for i in range(k)], dim=1) @ tiny.text_projection
    v = tiny.visual
    b = image.shape[0]
    z = v.conv1(image).reshape(b, v.conv1.out_channels, -1).permute(0, 2, 1)
    z = torch.cat([v.class_embedding.repeat(b, 1, 1), z], 1) + v.positional_embedding
    z = torch.cat([z, ip.repeat(b, 1, 1)], dim=1)
    z = v.ln_pre(z)
    vmask = torch.zeros(z.shape[1], z.shape[1])
    vmask[:, -k:] = float("-inf")
    for block in v.transformer.resblocks:
        z = block(z, attn_mask=vmask)
    img_f = v.ln_post(z[:, -k:, :]) @ v.proj
    text_f = text_f / text_f.norm(dim=-1, keepdim=True)
    img_f = img_f / img_f.norm(dim=-1, keepdim=True)
    logits = torch.zeros(b, text_f.shape[0])
    for i in range(k):
        logits += tiny.logit_scale.exp() * img_f[:, i, :] @ text_f[:, i, :].t()
    return logits / k


def test_prompts_have_the_official_names_shapes_and_init(tiny):
    model = _model(tiny, k=4)
    learner = model.prompt_learner
    assert {k: tuple(v.shape) for k, v in learner.state_dict().items()} == {"text_prompt": (4, 32), "img_prompt": (4, 48)}
    torch.manual_seed(0)  # the official order: text noise, then image noise (global RNG), rows of unit norm
    nt, nv = torch.randn(4, 32), torch.randn(4, 48)
    eot = tiny.token_embedding(torch.tensor([49407]))
    torch.testing.assert_close(learner.text_prompt, eot.repeat(4, 1) + 0.1 * nt / nt.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(learner.img_prompt, tiny.visual.class_embedding.repeat(4, 1)
                               + 0.1 * nv / nv.norm(dim=-1, keepdim=True))


def test_masks_are_the_official_ones():
    eot = torch.tensor([3, 5])
    m = text_read_only_mask(eot, 2, 9)
    for c, e in enumerate(eot.tolist()):
        allowed = torch.isfinite(m[c])
        for r in range(9):
            assert allowed[r].nonzero().flatten().tolist() == list(range(min(r, e) + 1)), (c, r)
    vm = vision_read_only_mask(5, 2)
    assert vm.shape == (7, 7) and torch.isinf(vm[:, 5:]).all() and (vm[:, :5] == 0).all()


@pytest.mark.parametrize("fast", [True, False])
def test_forward_equals_the_official_computation_with_gradients(tiny, fast):
    model = _model(tiny)
    with torch.no_grad():  # prompts away from the EOT / class embeddings
        for p in model.prompt_learner.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    model.text_encoder.fast = model.image_encoder.fast = fast
    img = _images()
    ours = model(img)
    ref = _official(tiny, model, img)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)
    params = dict(model.prompt_learner.named_parameters())
    y = torch.tensor([0, 2, 1])
    g_ours = torch.autograd.grad(F.cross_entropy(ours, y), list(params.values()))
    g_ref = torch.autograd.grad(F.cross_entropy(ref, y), list(params.values()))
    for name, a, b in zip(params, g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5 * max(1.0, float(b.abs().max())), rtol=1e-4, msg=name)
        assert a.abs().sum() > 0, name


def test_read_only_prompts_leave_the_frozen_features_untouched(tiny):
    """The class token's and the EOT token's features of the prompted passes equal the frozen CLIP's, whatever
    the prompts; the prompt features change with the prompts."""
    model = _model(tiny)
    img = _images(2)
    ids = tokenize([model.prompt.replace("_", c) for c in model.classnames])
    frozen_txt, frozen_img = tiny.encode_text(ids), tiny.encode_image(img)
    learner = model.prompt_learner
    feats = []
    for shift in (0.0, 1.0):
        with torch.no_grad():
            for p in learner.parameters():
                p.add_(shift)
        cls, prompt_img = model.image_features(img)
        x = model.prompt_embeddings.scatter(
            1, model.read_idx.unsqueeze(-1).expand(-1, -1, 32), learner.text_prompt.unsqueeze(0).expand(3, -1, -1))
        both = torch.cat([model.eot_idx.unsqueeze(1), model.read_idx], dim=1)  # the EOT and the prompt positions
        t = model.text_encoder(x, model.eot_idx, attn_mask=model.text_mask, read_idx=both,
                               no_position=model.no_position)
        torch.testing.assert_close(cls, frozen_img, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(t[:, 0], frozen_txt, atol=1e-5, rtol=1e-5)
        feats.append((prompt_img, t[:, 1:]))
    assert not torch.allclose(feats[0][0], feats[1][0]) and not torch.allclose(feats[0][1], feats[1][1])


def test_prompts_get_no_positional_embedding(tiny):
    model = _model(tiny, classes=["cat"], k=2)
    e = int(model.eot_idx[0])
    assert model.no_position[0].nonzero().flatten().tolist() == [e + 1, e + 2]
    assert model.read_idx.tolist() == [[e + 1, e + 2]]


def test_class_names_keep_underscores_as_officially_unless_switched(tiny):
    raw = _model(tiny, classes=["sea_lion"])
    clean = _model(tiny, classes=["sea_lion"], raw_classnames=False)
    assert raw.classnames == ["sea_lion"] and clean.classnames == ["sea lion"]
    assert int(raw.eot_idx[0]) == int(clean.eot_idx[0]) + 1  # '_' is a token of its own: EOT moves by one
    assert int(tokenize(["a photo of a sea_lion."])[0].argmax()) == int(raw.eot_idx[0])


def _trainer(tmp_path, *opts, folder="five", n_classes=5):
    make_image_folder(str(tmp_path / folder), n_classes=n_classes, n_per_class=4)
    cfg = make_cfg(tmp_path, trainer="RPO", folder=folder, output_dir=str(tmp_path / f"out_{folder}"),
                   opts=["TRAINER.RPO.PREC", "fp32", *opts])
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def test_too_many_prompts_and_a_sentence_without_a_slot_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="TRAINER.RPO.K:.*context length 77"):
        _trainer(tmp_path, "TRAINER.RPO.K", "80")
    with pytest.raises(ConfigError, match='must contain "_"'):
        _trainer(tmp_path, "DATASET.PROMPT", "a photo of a {}.")


def test_the_dataset_prompt_reaches_the_text(tmp_path):
    t = _trainer(tmp_path, "DATASET.PROMPT", "a blurry picture of _.", "TRAINER.RPO.K", "2")
    assert t.model.prompt == "a blurry picture of _."
    ids = tokenize([f"a blurry picture of {c}." for c in t.model.classnames])
    assert t.model.eot_idx.tolist() == ids.argmax(-1).tolist()


def test_official_config_values_and_recipes():
    import trainers  # noqa: F401
    from vlprompt.engine.methods import method_spec

    node = get_cfg_default()
    extend_cfg(node)
    assert (node.TRAINER.RPO.K, node.TRAINER.RPO.CTX_INIT, node.TRAINER.RPO.PREC, node.TRAINER.RPO.RAW_CLASSNAMES) == (
        1, "", "fp16", True)
    assert node.DATASET.PROMPT == "a photo of a _."
    expect = {"main_K24": (24, 0.01), "main_K4": (4, 0.01), "main": (4, 0.01), "imagenet_k24_ep15": (24, 0.005)}
    for name, (k, lr) in expect.items():
        cfg = get_cfg_default()
        extend_cfg(cfg)
        merge_from_file(cfg, osp.join(ROOT, "configs", "trainers", "RPO", f"{name}.yaml"))
        assert (cfg.TRAINER.RPO.K, cfg.OPTIM.LR, cfg.TRAINER.RPO.PREC) == (k, lr, "fp16"), name
        assert (cfg.OPTIM.NAME, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE,
                cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == ("sgd", 15, 1, "constant", 4), name
    rec = method_spec("RPO").all_recipes()
    assert rec["base2new"] == {"config": "main_K24"}
    assert rec["cross_dataset"] == rec["domain_generalization"] == {"config": "imagenet_k24_ep15"}
    assert rec["few_shot"] == {"config": "main_K4"}

