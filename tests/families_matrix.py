"""The method x backbone-family matrix (docs/METHODS.md, "Which methods run on which family"), shared by
tests/test_families_methods.py (prompt-learning methods) and tests/test_families_methods_frozen.py
(zero-shot, feature-based and LoRA methods; two files so that each stays fast). Every registered method,
built by its trainer on the small random-weight family backbones, trains one step and evaluates, or
stops at build time with one clear error naming the supported image towers. Besides each method's
defaults, every cell also runs with the code-path switches of the method's shipped configs
(:func:`shipped_switches`: CTX_INIT, CSC, INJECTION, ...; ProGrad's ``CTX_INIT True`` once crashed on SigLIP).

Families: ``test-siglip-tiny`` / ``test-eva02-tiny`` / ``test-pecore-tiny`` (tower structure of
ViT-B-16-SigLIP, EVA02-B-16, PE-Core-B-16), ``test-rn-tiny`` (an open_clip CLIP with a ModifiedResNet
image tower, RN50's family) and, for "any other timm trunk", ``test-timm-resnet-tiny`` (a CustomTextCLIP
with a small timm ResNet trunk; one representative of the deep-vision methods, whose guard is shared). The CLIP
ViT column is every method's own test file.

:data:`REFUSED` is the table's "no" cells; every other (method, family) must run. A method registered
later and not listed here must run or be refused with a ``ConfigError`` that names the supported
towers (never a bare AttributeError / TypeError).
"""
import functools

import pytest
import torch

from vlprompt.config import ConfigError


FAMILIES = ["test-siglip-tiny", "test-eva02-tiny", "test-pecore-tiny", "test-rn-tiny", "test-timm-resnet-tiny"]
TOWERS = {
    "test-siglip-tiny": "text bidirectional, image timm_vit",
    "test-eva02-tiny": "text causal, image timm_eva",
    "test-pecore-tiny": "text causal, image timm_eva",
    "test-rn-tiny": "text causal, image resnet",
    "test-timm-resnet-tiny": "text causal, image other:ResNet",
}
#: image-tower class names of the towers without vision prompts
NO_PROMPTS = {"test-rn-tiny": "ModifiedResNet", "test-timm-resnet-tiny": "ResNet"}
DEEP_VISION = ("VPT", "IVLP", "MaPLe", "MuDPT", "UMuDPT", "APLe", "PromptSRC", "CoPrompt", "PromptKD")
#: MMRL's refusal on transformer towers that do not take inserted tokens
_MMRL_TOWERS = ("MMRL inserts its tokens into the towers of open_clip's CLIP class; .* do not take inserted "
                "tokens; supported backbones: open_clip CLIP ViTs")

#: MMA's and RPO's refusals: adapters inside / masks on the blocks of open_clip's CLIP towers only
_MMA_TOWERS = ("MMA adds adapters inside the residual blocks of open_clip's CLIP towers; this backbone's towers .* "
               "are not supported; supported backbones: open_clip CLIP ViTs")
_RPO_TOWERS = ("RPO masks the attention of open_clip's CLIP towers; this backbone's towers .* are not supported; "
               "supported backbones: open_clip CLIP ViTs")


def _vision(tower):
    return (f"This method prompts the image tower, and this backbone's image tower \\({tower}\\) takes no "
            "prompts; supported image towers: open_clip ViT .*; timm ViT trunks \\(SigLIP, SigLIP2\\); timm EVA "
            "trunks \\(EVA02, PE-Core\\)")


def _lora(tower):
    return (f"TRAINER.CLIPLORA.ENCODER: LoRA on the vision tower needs a ViT \\(transformer\\) image tower, and "
            f"this backbone's is a {tower}; supported image towers: open_clip ViT .*timm ViT trunks \\(SigLIP, "
            "SigLIP2\\); timm EVA trunks \\(EVA02, PE-Core\\)\\. Adapt the text tower only \\(encoder 'text'\\)")


#: (method, family) -> the error its trainer stops with (regex); every other pair runs
REFUSED = {
    **{(m, f): _vision(t) for m in DEEP_VISION for f, t in NO_PROMPTS.items()},
    **{("CLIPLoRA", f): _lora(t) for f, t in NO_PROMPTS.items()},
    **{("MMRL", f): _MMRL_TOWERS for f in FAMILIES},
    **{("MMA", f): _MMA_TOWERS for f in FAMILIES},
    **{("RPO", f): _RPO_TOWERS for f in FAMILIES},
}

#: extra runs: (method, family, label, opts) that make a refused pair run with the method's own switch
VARIANTS = [
    ("CLIPLoRA", "test-rn-tiny", "text-only", ["TRAINER.CLIPLORA.ENCODER", "text"]),
    ("CLIPLoRA", "test-timm-resnet-tiny", "text-only", ["TRAINER.CLIPLORA.ENCODER", "text"]),
    ("PromptSRC", "test-rn-tiny", "text-only", ["TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", 0]),
]


def _specs():
    from vlprompt.engine import TRAINER_REGISTRY
    from vlprompt.engine.methods import load_plugins, method_specs

    load_plugins()
    return [s for s in method_specs() if TRAINER_REGISTRY.get(s.name).__module__.startswith("trainers.")]


SPECS = {s.name: s for s in _specs()}
#: the methods of tests/test_families_methods_frozen.py (every other method: tests/test_families_methods.py)
FROZEN_TOWER_METHODS = ("ZeroshotCLIP", "ZeroshotCLIP2", "LinearProbeCLIP", "CLIP_Adapter", "TipAdapter",
                        "TipAdapterF", "CLIPLoRA", "LPPP", "GDA", "TaskRes", "CLAP", "ProLIP")


@functools.lru_cache(maxsize=None)
def _trainer_node(path):
    """A config file's ``TRAINER`` node, read once per process (collection reads ~170 files; libyaml's
    loader where PyYAML has it, 10x faster than the pure-Python one)."""
    import yaml

    with open(path) as f:
        return (yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}).get("TRAINER") or {}


def shipped_switches(spec):
    """The code-path switches of the method's shipped configs (configs/trainers/<folder>/*.yaml): per
    config, the keys of its ``TRAINER.<NODE>`` whose default is a string or a boolean (CTX_INIT, CSC,
    CLASS_TOKEN_POSITION, INJECTION, ADAPTER, ENCODER, ...) and whose value differs from the default
    (PREC aside: the matrix runs fp32 on CPU), de-duplicated. Sizes (N_CTX, depths, weights) are left
    at the defaults, which the plain cells run. Returns ``[(label, opts)]``."""
    import glob
    import os

    from vlprompt.config import extend_cfg, get_cfg_default

    if not spec.cfg_node:
        return []
    defaults = extend_cfg(get_cfg_default()).TRAINER[spec.cfg_node]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "configs", "trainers", spec.config_folder, "*.yaml"))):
        node = _trainer_node(path).get(spec.cfg_node) or {}
        switches = {k: v for k, v in node.items() if k != "PREC" and k in defaults
                    and isinstance(defaults[k], (str, bool)) and v != defaults[k]}
        if switches:
            label = "shipped-" + ",".join(f"{k}={str(v).replace(' ', '_')}" for k, v in sorted(switches.items()))
            out.setdefault(label, [x for k, v in sorted(switches.items())
                                   for x in (f"TRAINER.{spec.cfg_node}.{k}", v)])
    return sorted(out.items())


#: the families on which the shipped switches run (all: about a second per cell)
SHIPPED_FAMILIES = tuple(FAMILIES)


def cases(frozen_group):
    """``(method, family, label, opts)`` of one file's group, with pytest ids."""
    # the other timm trunk: the deep-vision guard is shared (require_vit), so one of those methods stands for all
    out = [(name, fam, "", []) for name in SPECS for fam in FAMILIES
           if not (fam == "test-timm-resnet-tiny" and name in DEEP_VISION and name != "VPT")]
    out += [(m, f, label, opts) for m, f, label, opts in VARIANTS if m in SPECS]
    out += [(name, fam, label, opts) for name in SPECS for label, opts in shipped_switches(SPECS[name])
            for fam in SHIPPED_FAMILIES]
    out = [c for c in out if (c[0] in FROZEN_TOWER_METHODS) == frozen_group]
    return out, [f"{m}-{f}{'-' + lab if lab else ''}" for m, f, lab, _ in out]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from tests.helpers import make_image_folder

    from tests.helpers import write_user_descriptions

    root = tmp_path_factory.mktemp("families_methods")
    names = make_image_folder(str(root / "five"), n_classes=5, n_per_class=4)
    write_user_descriptions(str(root), "five", names)  # for the methods that read class descriptions
    return root


#: smaller searches than the official ones (the searches themselves are tested in each method's file)
FAST = {
    "LinearProbeCLIP": ["TRAINER.LINEAR_PROBE.C_GRID", [1.0, 0.01], "TRAINER.LINEAR_PROBE.SEARCH_STEPS", 1,
                        "TRAINER.LINEAR_PROBE.MAX_ITER", 50],
    "TipAdapter": ["TRAINER.TIP_ADAPTER.SEARCH_STEP", [4, 2], "TRAINER.TIP_ADAPTER.AUGMENT_EPOCH", 2],
    "TipAdapterF": ["TRAINER.TIP_ADAPTER_F.SEARCH_STEP", [4, 2], "TRAINER.TIP_ADAPTER_F.AUGMENT_EPOCH", 2],
    "GDA": ["TRAINER.GDA.AUGMENT_EPOCH", 1],
}


def _build(spec, family, data_root, out, opts):
    from tests.helpers import make_cfg
    from vlprompt.engine import build_trainer
    from vlprompt.utils import restore_stdout

    prec = [f"TRAINER.{spec.cfg_node}.PREC", "fp32"] if spec.cfg_node else []
    cfg = make_cfg(data_root, trainer=spec.name, folder="five", output_dir=str(out),
                   opts=prec + FAST.get(spec.name, []) + list(opts),
                   backbone=family)
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def _batch(views=1):
    g = torch.Generator().manual_seed(0)
    img = [torch.randn(2, 3, 224, 224, generator=g) for _ in range(views)]
    return {"img": img[0] if views == 1 else img, "label": torch.tensor([0, 3]),
            "domain": torch.zeros(2, dtype=torch.long), "impath": [""] * 2, "index": torch.arange(2)}


def check_case(method, family, label, opts, data_root, tmp_path, capsys):
    """One cell of the table: the refusal (``REFUSED``) or one training step and an evaluation."""
    spec = SPECS[method]
    # VARIANTS make a refused cell run with the method's own switch; the shipped switches keep the refusal
    refusal = None if label and not label.startswith("shipped-") else REFUSED.get((method, family))
    if refusal is not None:
        with pytest.raises(ConfigError, match=refusal):
            _build(spec, family, data_root, tmp_path, opts)
        return
    try:
        t = _build(spec, family, data_root, tmp_path, opts)
    except ConfigError as e:
        # a method without a row here may refuse a family, with a message that names what is supported
        assert method not in KNOWN, f"{method} on {family} should run: {e}"
        assert "supported" in str(e), f"{method} on {family}: refusal without the supported towers: {e}"
        return
    log = capsys.readouterr().out
    assert f"Backbone towers: {TOWERS[family]}; logit scale exp(s) = " in log
    assert ("logit bias not used" in log) == (family == "test-siglip-tiny")
    batch = _batch()
    if not spec.eval_only:
        module = t._models[spec.model_name]
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        frozen = {n: p.detach().clone() for n, p in t.model.named_parameters() if not p.requires_grad}
        t.set_model_mode("train")
        t.epoch, t.batch_idx, t.num_batches = 0, 0, 2
        summary = t.forward_backward(_batch(spec.views))  # K augmented views where the card reads K
        assert summary and all(torch.isfinite(torch.tensor(v)) for v in summary.values())
        changed = [n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])]
        assert changed, "one step changed no learnable tensor"
        for n, p in t.model.named_parameters():
            if not p.requires_grad:
                assert torch.equal(p.detach(), frozen[n]), f"frozen parameter {n} changed"
    t.set_model_mode("eval")
    with torch.no_grad():
        logits = t.model_inference(batch["img"])
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    if method == "CLIPLoRA" and label == "text-only":
        layout = t.model.lora.layout()
        assert not layout["vision"] and sorted(layout["text"]) == list(range(12))
    if method == "PromptSRC" and label == "text-only":
        assert t.model.prompt_learner.vision_geometry == (0, 0)


#: the methods the table covers (a newly registered method is checked by the generic rule above)
KNOWN = {"ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp", "VPT", "IVLP", "MaPLe", "MuDPT", "UMuDPT", "APLe",
         "KgCoOp", "ProGrad", "PromptSRC", "TCP", "LinearProbeCLIP", "CLIP_Adapter", "TipAdapter", "TipAdapterF",
         "CLIPLoRA", "MMRL", "CoPrompt", "MMA", "RPO", "PromptKD"}
