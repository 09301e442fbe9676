"""docs/EXTENDING.md, run for real: a method defined here (its file's whole content), registered, planned
by the sweep from its recipe, trained and evaluated on the toy world with the commands the sweep
would run, and read back by the results code into a base-to-novel table, through the same registry,
sweep and results code as the shipped methods."""
import os.path as osp

import torch.nn as nn
import torch.nn.functional as F

import train as train_mod
from vlprompt.clip import ClassPromptLearner, DeepPromptedCLIP, ZeroShotHead, init_text_context
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import method_spec, method_specs, recipes
from vlprompt.utils import load_checkpoint, restore_stdout

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ---- the method file of docs/EXTENDING.md ----------------------------------------------------------


class TinyPrompts(ClassPromptLearner):
    """N learnable context vectors in slots 1..N of "X X ... X <class>."."""

    def __init__(self, clip_model, classnames, n_ctx=4):
        init = init_text_context(clip_model, n_ctx, "", rule="coop")
        super().__init__(clip_model, classnames, init.prefix, init.n_ctx)
        self.ctx = nn.Parameter(init.vectors)

    def text_prompts(self):  # what DeepPromptedCLIP asks a learner for
        return self.assemble(self.ctx), []


class TinyReg(ClipPromptTrainer):
    CFG_NODE = "TINYREG"  # cfg.TRAINER.TINYREG
    CFG_DEFAULTS = dict(N_CTX=4, WEIGHT=1.0, PREC="fp32")  # its keys and defaults
    CFG_ARGS = {"n_ctx": "N_CTX"}  # block argument -> key, for error messages
    MODEL_NAME = "prompt_learner"  # checkpoint folder
    RECIPES = recipes("CoOp/toy")  # default config per protocol (here: CoOp's toy config)
    TABLE_ORDER = 500  # position in result tables
    BACKBONE_SUPPORT = ANY_TOWERS  # families the sweep may plan it on

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        model = DeepPromptedCLIP(clip_model, TinyPrompts(clip_model, classnames, n_ctx=cfg.TRAINER.TINYREG.N_CTX))
        model.zero_shot = ZeroShotHead(clip_model, classnames, "a photo of a {}.")  # frozen, never saved
        return model

    def loss_terms(self, image, label):
        logits = self.model(image)
        learned = F.normalize(self.model.text_features().float(), dim=-1)
        reg = 1 - (learned * self.model.zero_shot.text_features()).sum(-1).mean()
        return {"ce": F.cross_entropy(logits, label), "reg": self.method_cfg.WEIGHT * reg}, logits


# ------------------------------------------------------------------------------------------------------

if "TinyReg" not in TRAINER_REGISTRY:
    TRAINER_REGISTRY.register(TinyReg)


def test_the_extending_example_runs_through_registry_sweep_and_results(tmp_path, monkeypatch, capsys):
    from vlprompt.results.aggregate import build_tables
    from vlprompt.results.records import collect
    from vlprompt.results.render import to_markdown
    from vlprompt.sweep.protocols import expand
    from vlprompt.toy.data import ensure_toy_dataset

    spec = method_spec("TinyReg")
    assert spec.recipes == {"base2new": {"config": "CoOp/toy"}, "few_shot": {"config": "CoOp/toy"}}
    from vlprompt.sweep.backbones import describe_support, method_support
    from vlprompt.sweep.protocols import registry_specs

    assert "CLIP ResNet" in describe_support(method_support(registry_specs()["TinyReg"])[0])
    assert "TinyReg" in [s.name for s in method_specs()]  # the sweep, results and contract tests see it

    data = tmp_path / "data"
    ensure_toy_dataset("ToyShapes", str(data), log=None)
    out = tmp_path / "output"
    runs = expand("TinyReg", "base2new", ["toy_shapes"], seeds=[1], output_root=str(out), shots=2,
                  opts=["OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0"])
    assert [(r.phase, r.role) for r in runs] == [("train", "base"), ("test", "novel")]
    monkeypatch.chdir(ROOT)
    for run in runs:  # the commands the sweep runs, in its order
        try:
            assert train_mod.cli(run.train_args(str(data))) == 0
        finally:
            restore_stdout()
    log = open(osp.join(runs[0].output_dir, "log.txt")).read()
    assert "epoch [1/1]" in log and " ce " in log and " reg " in log  # every named term in the log line
    ckpt = load_checkpoint(osp.join(runs[0].output_dir, "prompt_learner", "model.pth.tar-1"))
    assert list(ckpt["state_dict"]) == ["ctx"]  # the learned state only

    records, problems = collect([str(out)])
    assert not problems
    assert {(r.trainer, r.protocol, r.role) for r in records} == {("TinyReg", "base2new", "base"),
                                                                  ("TinyReg", "base2new", "novel")}
    tables = build_tables(records, ["base2new"], seeds=[1])
    text = to_markdown(tables[0])
    assert "TinyReg" in text and "HM" in text
