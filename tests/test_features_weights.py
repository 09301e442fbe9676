"""The weights digest remembered per weights file (vlprompt/features/weights.py): used only where it is
exact (a named file unchanged since the process started, a frozen tower, the same tensors' layout),
verified on read, written atomically, removed by clear."""
import json
import os
import time
import types

import pytest
import torch

from vlprompt.config import get_cfg_default
from vlprompt.features import FeatureStore
from vlprompt.features import weights as W
from vlprompt.features.keys import module_digest


class _Tower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
        for p in self.parameters():
            p.requires_grad_(False)


def _trainer(path, **bb):
    cfg = get_cfg_default()
    cfg.MODEL.BACKBONE.NAME = "ViT-B/16"
    cfg.MODEL.BACKBONE.PATH = str(path)
    for k, v in bb.items():
        cfg.MODEL.BACKBONE[k] = v
    return types.SimpleNamespace(cfg=cfg)


@pytest.fixture
def weights_file(tmp_path):
    p = tmp_path / "ViT-B-16.pt"
    p.write_bytes(b"weights v1")
    return p


@pytest.fixture
def later_process(monkeypatch):
    """This process 'started' after the file was written (a sweep run started after the download)."""
    def start_at(t):
        monkeypatch.setattr(W, "_START", t)
    start_at(time.time() + W.MARGIN_S + 1)
    return start_at


def test_remembered_once_per_file_and_equal_to_the_computed_digest(weights_file, later_process, tmp_path):
    tower, tr = _Tower(), _trainer(weights_file)
    root = str(tmp_path / "store")
    d1, how1 = W.tower_weights_digest(tr, tower, root)
    d2, how2 = W.tower_weights_digest(tr, tower, root)
    assert (how1, how2) == ("computed", "remembered")
    assert d1 == d2 == module_digest(tower.visual)
    memo = os.listdir(os.path.join(root, "weights"))
    assert len(memo) == 1 and memo[0].endswith(".json")  # JSON, no temporary left
    rec = json.load(open(os.path.join(root, "weights", memo[0])))
    assert rec["digest"] == d1 and json.loads(rec["key"])["file"] == str(weights_file)


def test_a_file_changed_after_the_process_started_is_never_remembered(weights_file, later_process, tmp_path):
    tower, tr, root = _Tower(), _trainer(weights_file), str(tmp_path / "store")
    later_process(time.time() - 60)  # the process started before the file was written
    assert W.memo_key(tr, tower) is None
    assert W.tower_weights_digest(tr, tower, root) == (module_digest(tower.visual), "computed (not rememberable)")
    assert not os.path.exists(os.path.join(root, "weights"))
    later_process(time.time() + 0.5 * W.MARGIN_S)  # within the margin (coarse file-system time stamps)
    assert W.memo_key(tr, tower) is None


def test_every_part_of_the_memo_key_matters(weights_file, later_process, tmp_path):
    tower, tr = _Tower(), _trainer(weights_file)
    k0 = W.memo_key(tr, tower)
    assert k0["stat"]["size"] == len(b"weights v1") and k0["file"] == str(weights_file)
    half = _Tower().half()
    assert W.memo_key(tr, half)["structure"] != k0["structure"]  # another precision of the weights
    assert W.memo_key(_trainer(weights_file, PRETRAINED_TAG="openai"), tower)["backbone"] != k0["backbone"]
    weights_file.write_bytes(b"weights v2")  # rewritten (same path): another key
    later_process(time.time() + W.MARGIN_S + 1)
    k1 = W.memo_key(tr, tower)
    assert k1 is not None and k1["stat"] != k0["stat"]


def test_only_an_unambiguous_file_of_a_frozen_tower_is_remembered(weights_file, later_process, tmp_path):
    tower = _Tower()
    assert W.memo_key(_trainer(""), tower) is None  # cache-folder search / pretrained tag: computed
    assert W.memo_key(_trainer(weights_file, RANDOM_INIT=True), tower) is None
    assert W.memo_key(_trainer(weights_file, NAME="test-vit-tiny"), tower) is None
    assert W.memo_key(_trainer(tmp_path / "missing.pt"), tower) is None
    tower.visual[0].weight.requires_grad_(True)  # not frozen: the tower may be trained
    assert W.memo_key(_trainer(weights_file), tower) is None
    # a loader that records the file on the tower's visual module needs no MODEL.BACKBONE.PATH
    tower = _Tower()
    tower.visual.vlprompt_weights = {"file": str(weights_file)}
    assert W.memo_key(_trainer(""), tower)["file"] == str(weights_file)


def test_a_corrupt_or_foreign_memo_is_reported_once_and_recomputed(weights_file, later_process, tmp_path):
    tower, tr, root = _Tower(), _trainer(weights_file), str(tmp_path / "store")
    lines = []
    W.tower_weights_digest(tr, tower, root, log=lines.append)
    memo = W.WeightsMemo(root, log=lines.append)
    path = memo.path(W.memo_key(tr, tower))
    good = open(path).read()
    for bad in ("{not json", json.dumps({"key": "{}", "digest": "0" * 40}),
                good.replace(json.loads(good)["digest"], "f" * 39)):
        with open(path, "w") as f:
            f.write(bad)
        lines.clear()
        memo = W.WeightsMemo(root, log=lines.append)
        assert memo.load(W.memo_key(tr, tower)) is None and memo.load(W.memo_key(tr, tower)) is None
        assert len(lines) == 1 and "recomputing the weights digest" in lines[0]
        assert W.tower_weights_digest(tr, tower, root, log=lines.append) == (module_digest(tower.visual), "computed")
    assert W.tower_weights_digest(tr, tower, root)[1] == "remembered"  # rewritten correctly


def test_an_unwritable_memo_folder_costs_a_recomputation_only(weights_file, later_process, tmp_path):
    tower, tr = _Tower(), _trainer(weights_file)
    blocker = tmp_path / "store"
    blocker.mkdir()
    (blocker / "weights").write_text("a file where the folder should be")
    lines = []
    assert W.tower_weights_digest(tr, tower, str(blocker), log=lines.append)[1] == "computed"
    assert len(lines) == 1 and "recomputed in the next run" in lines[0]
    assert sorted(os.listdir(blocker)) == ["weights"]


def test_info_counts_and_clear_removes_the_memos(weights_file, later_process, tmp_path):
    root = str(tmp_path / "store")
    W.tower_weights_digest(_trainer(weights_file), _Tower(), root)
    store = FeatureStore(root)
    store.save({"k": 1}, torch.ones(2, 2))
    assert store.info()["weights_memos"] == 1 and "1 remembered weights digests" in store.format_info()
    n, _ = store.clear()
    assert n == 2 and store.weights_memos() == [] and store.info()["entries"] == 0


def test_the_engine_path_uses_the_memo_and_the_evaluation_is_unchanged(tmp_path, later_process):
    """A real trainer whose tower records its weights file: the second run (a new process: no
    in-process memo) takes the remembered digest, hits the same entry, and gives the same logits."""
    from tests.helpers import make_cfg, make_image_folder
    from vlprompt.engine import build_trainer
    from vlprompt.engine.methods import load_plugins
    from vlprompt.features.extract import frozen_tower, tower_digest
    from vlprompt.utils import restore_stdout

    load_plugins()
    make_image_folder(str(tmp_path / "data" / "three"), n_classes=3, n_per_class=5)
    wfile = tmp_path / "tiny.pt"
    wfile.write_bytes(b"stands for the file the tower was loaded from")
    later_process(time.time() + W.MARGIN_S + 1)
    store_dir = tmp_path / "store"
    cfg = make_cfg(tmp_path / "data", trainer="ZeroshotCLIP", folder="three", output_dir=str(tmp_path / "out"),
                   opts=["FEATURES.DIR", str(store_dir)])
    cfg.freeze()
    results = []
    for _ in range(2):
        t = build_trainer(cfg)
        frozen_tower(t).visual.vlprompt_weights = {"file": str(wfile)}
        outs = []
        original = t.evaluator.process
        t.evaluator.process = lambda mo, gt: (outs.append(mo.clone()), original(mo, gt))
        try:
            t.test()
        finally:
            restore_stdout()
        results.append((t._feature_tower_digest[2], t._feature_store.hits, torch.cat(outs)))
        assert tower_digest(t, frozen_tower(t)) == module_digest(frozen_tower(t).visual)
    assert [r[:2] for r in results] == [("computed", 0), ("remembered", 1)]
    assert torch.equal(results[0][2], results[1][2])
