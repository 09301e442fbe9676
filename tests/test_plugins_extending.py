"""docs/EXTENDING.md, "Add a plug-in", run for real: a plug-in defined here (its file's whole content),
registered, composed with CoOp as ``CoOp+Temp``, planned by the sweep, trained and evaluated on the toy world
with the commands the sweep would run, and read back by the results code into a base-to-novel table."""
import os.path as osp

import torch
import torch.nn as nn
import torch.nn.functional as F

import train as train_mod
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.hooks import HookBase
from vlprompt.engine.methods import load_plugins, method_spec
from vlprompt.engine.plugins import PLUGIN_REGISTRY, Plugin, forget_composed
from vlprompt.utils import load_checkpoint, restore_stdout

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ---- the plug-in file of docs/EXTENDING.md ---------------------------------------------------------


class Temperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros(()))  # logits x exp(log_t); 1 at init


class TempLog(HookBase):
    """Records the temperature after every epoch (a hook with state: saved, restored on resume)."""

    def __init__(self, module):
        self.module, self.history = module, []

    def after_epoch(self):
        self.history.append(float(self.module.log_t.detach().exp()))

    def state_dict(self):
        return {"history": list(self.history)}

    def load_state_dict(self, state):
        self.history = list(state["history"])


class Temp(Plugin):
    ORDER = 90  # spelling position: Host+...+Temp
    CFG_NODE = "TEMP"  # cfg.TRAINER.TEMP
    CFG_DEFAULTS = dict(WEIGHT=0.5)
    HOSTS = {"CoOp": None}  # supported hosts (None: the host's own recipes)
    REFUSED = {"CoCoOp": "an example: refused on purpose"}

    def build(self, classnames):  # its learnable module: checkpoint folder "Temp", its own optimiser
        return Temperature()

    def loss_terms(self, terms, logits, features, label):  # a named term next to the host's
        scaled = logits * self.module.log_t.exp()
        return dict(terms, temp=self.plugin_cfg.WEIGHT * F.cross_entropy(scaled, label))

    def inference(self, logits, features):  # the test logits (any class list)
        return logits * self.module.log_t.exp()

    def hooks(self):
        return {"log": TempLog(self.module)}


# ------------------------------------------------------------------------------------------------------

if "Temp" not in PLUGIN_REGISTRY:
    PLUGIN_REGISTRY.register(Temp)


def test_the_plugin_example_runs_through_registry_sweep_and_results(tmp_path, monkeypatch):
    from vlprompt.results.aggregate import build_tables
    from vlprompt.results.records import collect
    from vlprompt.results.render import to_markdown
    from vlprompt.sweep.protocols import expand

    load_plugins()
    try:
        TRAINER_REGISTRY.get("CoOp+Temp")  # composed on first use (train.py and build_trainer do this)
        spec = method_spec("CoOp+Temp")
        host = method_spec("CoOp")
        assert spec.recipe("base2new") == host.recipe("base2new") and spec.config_folder == "CoOp"
        assert spec.order == host.order + 1

        from tests.helpers import shared_toy_root

        data = shared_toy_root("ToyShapes")
        out = tmp_path / "output"
        runs = expand("CoOp+Temp:CoOp/toy", "base2new", ["toy_shapes"], seeds=[1], output_root=str(out), shots=2,
                      opts=["OPTIM.MAX_EPOCH", "2"])
        assert [(r.phase, r.role) for r in runs] == [("train", "base"), ("test", "novel")]
        assert "CoOp+Temp" in runs[0].output_dir.split(osp.sep)
        monkeypatch.chdir(ROOT)
        for run in runs:
            try:
                assert train_mod.cli(run.train_args(str(data))) == 0
            finally:
                restore_stdout()
        log = open(osp.join(runs[0].output_dir, "log.txt")).read()
        assert " ce " in log and " temp " in log  # the plug-in's term in the log line
        ckpt = load_checkpoint(osp.join(runs[0].output_dir, "Temp", "model.pth.tar-2"))
        assert list(ckpt["state_dict"]) == ["log_t"]  # the plug-in's state under its own name
        host = load_checkpoint(osp.join(runs[0].output_dir, "prompt_learner", "model.pth.tar-2"))
        assert list(host["state_dict"]) == ["ctx"]
        history = host["hooks"]["Temp.log"]["history"]  # the hook's state travels with the checkpoint
        assert len(history) == 2 and history[-1] == float(ckpt["state_dict"]["log_t"].exp())

        records, problems = collect([str(out)])
        assert not problems
        assert {(r.trainer, r.role) for r in records} == {("CoOp+Temp", "base"), ("CoOp+Temp", "novel")}
        text = to_markdown(build_tables(records, ["base2new"], seeds=[1])[0])
        assert "CoOp+Temp" in text and "HM" in text
    finally:
        forget_composed(TRAINER_REGISTRY)


def test_the_plugin_example_refuses_a_host_in_one_line():
    import pytest

    from vlprompt.engine.plugins import PluginError

    load_plugins()
    with pytest.raises(PluginError, match=r"^Temp cannot be added to CoCoOp: an example: refused on purpose$"):
        TRAINER_REGISTRY.get("CoCoOp+Temp")
