"""docs/EXTENDING.md, run for real: a method defined here (its file's whole content), registered, planned
by the sweep from its recipe, trained and evaluated on the toy world with the commands the sweep
would run, and read back by the results code into a base-to-novel table, through the same registry,
sweep and results code as the shipped methods."""
import json
import os.path as osp

import pytest

import torch.nn as nn
import torch.nn.functional as F

import train as train_mod
from vlprompt.clip import ClassPromptLearner, DeepPromptedCLIP, ZeroShotHead, init_text_context
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import ANY_TOWERS, MethodCard, method_card, method_cards
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
    CARD = MethodCard(
        config="CoOp/toy",  # default config, every protocol (here: CoOp's toy config)
        recipes={},  # per protocol, only where it differs from the default
        order=500,  # position in result tables
        backbones=ANY_TOWERS,  # families the sweep may plan it on
        cfg_node="TINYREG",  # cfg.TRAINER.TINYREG
        cfg_defaults=dict(N_CTX=4, WEIGHT=1.0, PREC="fp32"),  # its keys and defaults
        cfg_args={"n_ctx": "N_CTX"},  # block argument -> key, for error messages
        model_name="prompt_learner",  # checkpoint folder
    )

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

    card = method_card("TinyReg")
    assert card.all_recipes() == {p: {"config": "CoOp/toy"} for p in
                                  ("base2new", "cross_dataset", "domain_generalization", "few_shot", "test_time")}
    assert (TinyReg.CFG_NODE, TinyReg.MODEL_NAME) == ("TINYREG", "prompt_learner")  # set from the card
    from vlprompt.sweep.backbones import describe_support, method_support
    from vlprompt.sweep.protocols import registry_specs

    assert "CLIP ResNet" in describe_support(method_support(registry_specs()["TinyReg"])[0])
    assert "TinyReg" in [c.name for c in method_cards()]  # the sweep, results and contract tests see it

    from tests.helpers import shared_toy_root

    data = shared_toy_root("ToyShapes")
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


# ---- the protocol of docs/EXTENDING.md, "Adding a protocol" ------------------------------------------
from vlprompt.protocol import Layout, Protocol, Step  # noqa: E402

_TAIL = ("{dataset}", "{trainer}", "{config}", "shots_{shots}")
REEVAL = Protocol(
    name="reeval",
    title="Train, then test the finished model in a second step",
    steps=(Step("fit"),  # a training run (K shots, all classes), tested at its end
           Step("retest", model_from="fit", shots_opt=False)),  # an eval-only step on the finished model
    datasets=("toy_shapes",),  # its standard datasets
    shots=2,  # its default shot count
    layouts=(Layout("reeval_fit", "reeval", "fit", ("reeval",) + _TAIL + ("fit", "seed{seed}")),
             Layout("reeval_retest", "reeval", "retest", ("reeval",) + _TAIL + ("retest", "seed{seed}"))),
    table="datasets",  # one row per method, one column per dataset
    table_role="retest",  # ... showing the second step's accuracy
)


def test_a_protocol_defined_here_is_planned_run_and_tabulated(tmp_path, monkeypatch):
    """Adding a protocol edits no trainer: registered here, it is planned by the sweep from TinyReg's card
    (which names no config for it), its commands run on the toy world, results.json records its protocol
    and roles, and the results tool tabulates it (CLI included)."""
    from vlprompt.protocol import register_protocol, unregister_protocol
    from vlprompt.results.aggregate import build_tables
    from vlprompt.results.cli import main as results_main
    from vlprompt.results.records import collect
    from vlprompt.sweep.protocols import expand

    from vlprompt.engine.methods import load_plugins

    load_plugins()
    register_protocol(REEVAL)
    try:
        assert "reeval" not in method_card("TinyReg").recipes
        assert method_card("TinyReg").recipe("reeval") == {"config": "CoOp/toy"}  # the card's default config
        assert method_card("CLIPLoRA").recipe("reeval") is None  # a card that lists its protocols keeps them

        from tests.helpers import shared_toy_root

        data = shared_toy_root("ToyShapes")
        out = tmp_path / "output"
        runs = expand("TinyReg", "reeval", None, seeds=[1], output_root=str(out),
                      opts=["OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0"])
        assert [(r.phase, r.role, r.dataset, r.shots) for r in runs] == [("train", "fit", "toy_shapes", 2),
                                                                         ("test", "retest", "toy_shapes", 2)]
        fit, retest = runs
        assert fit.output_dir.endswith("reeval/toy_shapes/TinyReg/toy_max_epoch1_warmup_epoch0/shots_2/fit/seed1")
        assert retest.model_dir == fit.output_dir and retest.load_epoch == 1
        assert "DATASET.NUM_SHOTS" not in retest.opts and fit.opts[:2] == ["DATASET.NUM_SHOTS", "2"]
        monkeypatch.chdir(ROOT)
        for run in runs:  # what the sweep's runner does: note the run in its folder, run train.py
            run.write_note()
            try:
                assert train_mod.cli(run.train_args(str(data))) == 0
            finally:
                restore_stdout()
        saved = json.load(open(osp.join(retest.output_dir, "results.json")))
        assert (saved["protocol"], saved["role"], saved["run"]["shots"]) == ("reeval", "retest", 2)

        records, problems = collect([str(out)])
        assert not problems and sorted((r.protocol, r.role) for r in records) == [("reeval", "fit"),
                                                                                  ("reeval", "retest")]
        (table,) = build_tables(records, ["reeval"], seeds=[1])
        assert table.name == "reeval" and table.columns[:2] == ["Method", "toy_shapes"]
        row = table.rows[0]["cells"]
        assert row[0] == "TinyReg" and row[1].mean == pytest.approx(saved["metrics"]["accuracy"])
        assert results_main([str(out), "--protocol", "reeval", "--seeds", "1"]) == 0
    finally:
        unregister_protocol("reeval")
