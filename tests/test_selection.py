"""Model selection (vlprompt.features.selection): every hyper-parameter search reads the validation split by
default and never the test split; TEST.SELECTION_SPLIT test reads the test split and marks the run
(results.json ``selection``, the tables); a validation split that is the test split is refused."""
import json

import pytest

import vlprompt.features.extract as extract
from tests.helpers import make_cfg, make_image_folder
from vlprompt.engine import build_trainer
from vlprompt.engine.methods import load_plugins
from vlprompt.features.selection import SelectionError, first_best, selection_loader, selection_split
from vlprompt.utils import restore_stdout

load_plugins()

FAST = {
    "GDA": ["TRAINER.GDA.AUGMENT_EPOCH", "1"],
    "TipAdapter": ["TRAINER.TIP_ADAPTER.AUGMENT_EPOCH", "1", "TRAINER.TIP_ADAPTER.SEARCH_STEP", "(4, 2)"],
    "LPPP": ["OPTIM.MAX_EPOCH", "2", "TEST.NO_TEST", "True"],  # no final test: every read is the search's
}
NODES = {"GDA": "GDA", "TipAdapter": "TIP_ADAPTER", "LPPP": "LPPP"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("selection")
    make_image_folder(str(root / "four"), n_classes=4, n_per_class=6)
    return root


@pytest.fixture
def reads(monkeypatch):
    """Every image path whose features are read through the store, by split name."""
    seen = {}
    real = extract.loader_features

    def spy(trainer, loader, split, view=None, seed=None):
        seen.setdefault(split, set()).update(str(it.impath) for it in loader.dataset.data_source)
        return real(trainer, loader, split, view=view, seed=seed)

    monkeypatch.setattr(extract, "loader_features", spy)
    return seen


def _trainer(name, data_root, tmp_path, split=None):
    opts = [f"TRAINER.{NODES[name]}.PREC", "fp32", "FEATURES.DIR", str(tmp_path / "store"), *FAST[name]]
    if split:
        opts += ["TEST.SELECTION_SPLIT", split]
    cfg = make_cfg(data_root, trainer=name, folder="four", output_dir=str(tmp_path / f"out_{name}"), opts=opts)
    cfg.freeze()
    try:
        t = build_trainer(cfg)
        if name == "LPPP":
            t.train()  # the epoch selection runs in the loop
        return t
    finally:
        restore_stdout()


def _paths(loader):
    return {str(it.impath) for it in loader.dataset.data_source}


@pytest.mark.parametrize("name", ["GDA", "TipAdapter", "LPPP"])
def test_default_search_never_reads_the_test_split(name, data_root, tmp_path, reads):
    t = _trainer(name, data_root, tmp_path)
    test_paths, val_paths = _paths(t.test_loader), _paths(t.val_loader)
    assert not test_paths & val_paths
    assert reads.get("val") == val_paths  # the search read the validation split ...
    assert "test" not in reads  # ... and no test image before the final evaluation
    assert t.hp_selection["split"] == "val"


@pytest.mark.parametrize("name", ["GDA", "TipAdapter"])
def test_official_test_selection_reads_test_and_is_marked(name, data_root, tmp_path, reads):
    t = _trainer(name, data_root, tmp_path, split="test")
    assert reads.get("test") == _paths(t.test_loader)  # the spy sees test reads: the default test can fail
    assert "val" not in reads
    assert t.hp_selection["split"] == "test"
    t.test()
    restore_stdout()
    record = json.load(open(tmp_path / f"out_{name}" / "results.json"))
    assert record["selection"]["split"] == "test" and record["selection"]["key"] == "TEST.SELECTION_SPLIT"


def test_validation_split_equal_to_test_is_refused(data_root, tmp_path):
    t = _trainer("GDA", data_root, tmp_path)
    t.val_loader = t.test_loader  # CoOp's ImageNet: val = test
    with pytest.raises(SelectionError, match="shares .* images with its test split.*TEST.SELECTION_SPLIT test"):
        selection_loader(t, "GDA")
    t.cfg.defrost()
    t.cfg.TEST.SELECTION_SPLIT = "test"
    assert selection_loader(t, "GDA")[0] == "test"
    t.cfg.TEST.SELECTION_SPLIT = "train"
    with pytest.raises(SelectionError, match="TEST.SELECTION_SPLIT must be one of"):
        selection_split(t.cfg)


def test_first_best_is_the_official_rule():
    scores = {1: 10.0, 2: 30.0, 3: 30.0, 4: 20.0}
    assert first_best([1, 2, 3, 4], scores.get)[:2] == (2, 30.0)  # strict: ties keep the earlier
    assert first_best([1, 2, 3, 4], scores.get, strict=False)[:2] == (3, 30.0)  # >=: ties go to the later
    assert first_best([1, 2], lambda c: 0.0, start=(0.0, 0.1))[:2] == (0.1, 0.0)  # nothing above 0: the default


def test_tables_mark_test_selected_runs(tmp_path):
    from vlprompt.results.aggregate import _labels
    from vlprompt.results.records import TEST_SELECTION_MARK, Record

    r = Record(trainer="GDA", config="vit_b16", protocol="few_shot", role="test", dataset="dtd", shots=4, seed=1,
               metrics={"accuracy": 1.0}, path="", origin="json", selected_on_test=True)
    assert r.group_config == "vit_b16" + TEST_SELECTION_MARK
    labels = _labels([("GDA", r.group_config, 4), ("GDA", "vit_b16", 4)])
    assert labels[("GDA", r.group_config, 4)] == "GDA (selected on test)"
    assert labels[("GDA", "vit_b16", 4)] == "GDA"
