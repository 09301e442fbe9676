"""The feature-based methods end to end on the toy world (train.py's path: build, train, final test),
sharing one feature store as a sweep does: the test features of the base classes are computed once, by
the first method, and every later method and run reuses them; what learns beats zero-shot CLIP on the
base classes (16 shots, seed 1, the methods' toy.yaml)."""
import pytest

from vlprompt.features import FeatureStore
from vlprompt.utils import restore_stdout

OPTS = ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.test_toy import _run_trainer
    from tests.helpers import shared_toy_root

    base = tmp_path_factory.mktemp("featuretoy")
    root = shared_toy_root("ToyShapes")
    store = str(base / "store")
    opts = OPTS + ["FEATURES.DIR", store]
    zs, tr = _run_trainer("ZeroshotCLIP", root, base / "zs", opts=opts)
    restore_stdout()
    assert tr._feature_store.misses == 1  # the base test split, stored
    return {"root": root, "store": store, "opts": opts, "zs": zs, "base": base}


def _run(world, trainer, extra=()):
    from tests.test_toy import _run_trainer

    acc, tr = _run_trainer(trainer, world["root"], world["base"] / trainer, opts=world["opts"] + list(extra))
    restore_stdout()
    return acc, tr


def _test_entries(world):
    info = FeatureStore(world["store"]).info()["by_dataset_split"]
    return info["ToyShapes/test"]["entries"]


@pytest.mark.parametrize("trainer", ["CLIP_Adapter", "TipAdapterF"])
def test_learning_feature_methods_beat_zero_shot(world, trainer):
    """Measured (seed 1): CLIP-Adapter 84.2, Tip-Adapter-F 81.3, zero-shot 77.3."""
    acc, tr = _run(world, trainer)
    assert acc >= world["zs"] + 3.0, f"{trainer} {acc:.2f} vs zero-shot {world['zs']:.2f}"
    assert _test_entries(world) == 1  # evaluated from the zero-shot run's test features


def test_training_free_methods(world):
    """Tip-Adapter (a cache of the 16 shots, alpha/beta searched on val) is not worse than zero-shot CLIP
    on the base classes; the linear probe is far above chance. Both evaluate from the shared entry."""
    acc, tr = _run(world, "TipAdapter")
    assert acc >= world["zs"], f"Tip-Adapter {acc:.2f} vs zero-shot {world['zs']:.2f}"
    assert tr.extra_results()["cache_size"] == 16 * tr.num_classes
    lp, tr = _run(world, "LinearProbeCLIP", ["TRAINER.LINEAR_PROBE.SEARCH_STEPS", "2"])
    assert lp > 3 * 100.0 / tr.num_classes, lp
    assert _test_entries(world) == 1
