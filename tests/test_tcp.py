"""TCP: class-aware tokens (per class, only at the documented text block), the meta-net, templates,
the regulariser, configs, and the toy world.

Build, forward, step, checkpoint and resume are covered for every trainer by tests/test_contract.py;
here only what is specific to TCP. Small random backbone (``test-vit-tiny``, 12 text blocks) on CPU.
"""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from trainers.kgcoop import knowledge_gap
from trainers.tcp import (
    N_CLASS_TOKENS,
    TCP_PROMPT_TEMPLATES,
    TCPCLIP,
    TCPPromptLearner,
    tcp_templates,
)
from vlprompt.clip import build_clip_model, count_tokens, model_dims, tokenize
from vlprompt.clip.prompt_init import token_embeddings
from vlprompt.config import extend_cfg, get_cfg_default, merge_from_file

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSES = ["cat", "dog", "sea_lion"]


@pytest.fixture(scope="module")
def tiny():
    return build_clip_model("test-vit-tiny").requires_grad_(False)


def _model(tiny, classes=CLASSES, layer=8, template="X X X X {}, a type of pet."):
    torch.manual_seed(0)
    learner = TCPPromptLearner(tiny, classes, template, n_ctx=4, class_token_layer=layer)
    return TCPCLIP(tiny, learner, "a photo of a {}, a type of pet.")


def _block_inputs(tiny, model):
    """The (K, L, d) input of every text block during one text-feature pass."""
    model.zero_shot.text_features()  # computed (and cached) first: it runs the same blocks
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
             for b in tiny.transformer.resblocks]
    try:
        with torch.no_grad():
            model.text_features()
    finally:
        for h in hooks:
            h.remove()
    if not getattr(tiny.transformer, "batch_first", True):
        seen = [x.transpose(0, 1) for x in seen]
    assert len(seen) == len(tiny.transformer.resblocks)
    return seen


def test_parameters_and_their_shapes(tiny):
    dims = model_dims(tiny)
    learner = _model(tiny).prompt_learner
    shapes = {n: tuple(p.shape) for n, p in learner.named_parameters()}
    d_e, d_t = dims["d_embed"], dims["d_text"]
    assert shapes == {"ctx": (4, d_t), "meta_net.linear1.weight": (d_e // 4, d_e),
                      "meta_net.linear1.bias": (d_e // 4,), "meta_net.linear2.weight": (4 * d_t, d_e // 4),
                      "meta_net.linear2.bias": (4 * d_t,)}
    assert set(learner.state_dict()) == set(shapes)  # class-derived buffers are never saved


@pytest.mark.parametrize("layer", [8, 3])
def test_class_aware_tokens_change_the_prompts_per_class_only_at_their_block(tiny, layer):
    model = _model(tiny, layer=layer)
    learner = model.prompt_learner
    inputs = _block_inputs(tiny, model)
    with torch.no_grad():
        tokens = learner.class_tokens(model.zero_shot.text_features())  # (K, 4, d_t)
    assert tokens.shape == (len(CLASSES), N_CLASS_TOKENS, learner.ctx_dim)
    assert not torch.allclose(tokens[0], tokens[1])  # per class
    slots = slice(1, 1 + N_CLASS_TOKENS)
    for i, x in enumerate(inputs):
        if i == layer:  # replaced at the input of this block
            assert torch.equal(x[:, slots], tokens.to(x.dtype)), i
        elif i < layer:  # before: the shared context, the same for every class
            assert torch.allclose(x[0, slots], x[1, slots]) and torch.allclose(x[1, slots], x[2, slots]), i
        else:  # after: whatever the previous block made (not re-inserted)
            assert not torch.equal(x[:, slots], tokens.to(x.dtype)), i
    assert torch.allclose(inputs[0][:, slots], (learner.ctx + tiny.positional_embedding[slots]).expand(3, -1, -1),
                          atol=1e-6)

    # the hidden states before the block do not depend on the meta-net; from it on they do
    with torch.no_grad():
        learner.meta_net.linear2.bias.add_(1.0)
    moved = _block_inputs(tiny, model)
    assert all(torch.equal(inputs[i], moved[i]) for i in range(layer))
    assert not any(torch.equal(inputs[i], moved[i]) for i in range(layer, len(inputs)))


def test_meta_net_reads_the_zero_shot_features_of_the_current_classes(tiny):
    model = _model(tiny)
    zs = model.zero_shot.text_features()
    with torch.no_grad():
        expected = model.prompt_learner.meta_net(zs).view(3, 4, -1)
        assert torch.allclose(model.prompt_learner.class_tokens(zs), expected)
        before = model.text_features()
        model.set_classnames(["red star", "cat", "blue ring", "dog"])  # another label space
        after = model.text_features()
    assert after.shape[0] == 4 and model.zero_shot.text_features().shape[0] == 4
    assert torch.allclose(after[1], before[0], atol=1e-5)  # "cat" keeps its features


def test_prompt_text_and_templates(tiny):
    learner = _model(tiny).prompt_learner
    text = token_embeddings(tiny, tokenize(["X X X X cat, a type of pet."]))
    n = learner.text_length
    assert torch.equal(learner.token_suffix[0, : n - 5], text[0, 5:n])
    prompt, teacher = tcp_templates("FGVCAircraft")
    assert (prompt, teacher) == ("X X X X {}, a type of aircraft.", "a photo of an aircraft {}.")
    assert tcp_templates("Food101")[1] == "a photo of a {}, a type of food."
    assert tcp_templates("StanfordCars")[0] == "X X X X {}, a type of car"  # sic, as officially
    assert tcp_templates("ImageFolder") == ("X X X X {}.", "a photo of a {}.")
    for name, template in TCP_PROMPT_TEMPLATES.items():  # room for the 4 context tokens everywhere
        assert count_tokens(template.split("{}")[0].strip()) >= 4, name


def test_loss_terms_and_bad_settings(tmp_path):
    from tests.helpers import make_cfg, make_image_folder
    from vlprompt.config import ConfigError
    from vlprompt.engine import build_trainer
    from vlprompt.utils import restore_stdout

    make_image_folder(str(tmp_path / "five"), n_classes=5, n_per_class=4)

    def build(*opts):
        cfg = make_cfg(tmp_path, trainer="TCP", folder="five", output_dir=str(tmp_path / "o"),
                       opts=["TRAINER.TCP.PREC", "fp32", *opts])
        cfg.freeze()
        try:
            return build_trainer(cfg)
        finally:
            restore_stdout()

    t = build()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    terms, logits = t.loss_terms(images, torch.tensor([0, 3]))
    assert set(terms) == {"ce", "kg"}
    assert torch.allclose(terms["ce"], F.cross_entropy(logits, torch.tensor([0, 3])))
    expected = 8.0 * knowledge_gap(t.model.text_features(), t.model.zero_shot.text_features())
    assert torch.allclose(terms["kg"], expected) and terms["kg"].item() > 0
    assert "eps" not in t.optim.param_groups[0]  # SGD here: untouched
    adam = build("OPTIM.NAME", "adam")
    assert adam.optim.param_groups[0]["eps"] == 1e-3  # the official (patched Dassl) Adam eps
    assert build("OPTIM.NAME", "adam", "TRAINER.TCP.ADAM_EPS", "0.0").optim.param_groups[0]["eps"] == 1e-8
    with pytest.raises(ConfigError, match="TRAINER.TCP.CLASS_TOKEN_LAYER"):
        build("TRAINER.TCP.CLASS_TOKEN_LAYER", "12")
    with pytest.raises(ConfigError, match="TRAINER.TCP.N_CTX"):
        build("TRAINER.TCP.N_CTX", "5")  # "X X X X {}." has 4 tokens before the class name


def test_config_defaults_and_files():
    import trainers  # noqa: F401

    cfg = get_cfg_default()
    extend_cfg(cfg)
    node = cfg.TRAINER.TCP
    assert (node.N_CTX, node.CTX_INIT, node.PREC, node.KG_WEIGHT, node.CLASS_TOKEN_LAYER) == (4, False, "fp16", 8.0, 8)
    assert node.ADAM_EPS == 1e-3
    merge_from_file(cfg, osp.join(ROOT, "configs", "trainers", "TCP", "vit_b16_ep100_ctxv1.yaml"))
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH) == ("adam", 0.002, 50)
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.TEST.BATCH_SIZE) == (32, 500)
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == (1, "constant", 1e-5)
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16" and cfg.TRAINER.TCP.N_CTX == 4 and not cfg.TRAINER.TCP.CTX_INIT
