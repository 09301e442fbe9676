"""The engine's use of the feature store: evaluation from stored features is bit-identical to the
uncached evaluation for the trainers whose test-time image features are frozen (ZeroshotCLIP,
ZeroshotCLIP2, CoOp, CoCoOp), entries are shared across methods, and trainers with learned image
features (IVLP, MaPLe, VPT, APLe, MuDPT) never touch the store."""
import os

import pytest
import torch

from tests.helpers import make_cfg, make_image_folder
from vlprompt.engine import build_trainer
from vlprompt.engine.methods import load_plugins
from vlprompt.features import FeatureStore
from vlprompt.utils import restore_stdout

load_plugins()

FROZEN = ["ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp"]
LEARNED = ["IVLP", "MaPLe", "VPT", "APLe", "MuDPT"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("featdata")
    make_image_folder(str(root / "five"), n_classes=5, n_per_class=7)
    return root


def _trainer(name, data_root, out, store_dir, extra=()):
    from vlprompt.engine import TRAINER_REGISTRY

    node = getattr(TRAINER_REGISTRY.get(name), "CFG_NODE", None)
    opts = ([f"TRAINER.{node}.PREC", "fp32"] if node else []) + ["FEATURES.DIR", str(store_dir),
                                                                  "DATALOADER.TEST.BATCH_SIZE", "8", *extra]
    cfg = make_cfg(data_root, trainer=name, folder="five", output_dir=str(out), opts=opts)
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def _evaluate(trainer, use_store):
    trainer.cfg.defrost()
    trainer.cfg.TEST.FEATURE_CACHE = use_store
    trainer.cfg.freeze()
    outs, labels = [], []
    original = trainer.evaluator.process

    def record(mo, gt):
        outs.append(mo.detach().clone())
        labels.append(gt.clone())
        original(mo, gt)

    trainer.evaluator.process = record
    try:
        acc = trainer.test()
    finally:
        trainer.evaluator.process = original
        restore_stdout()
    return acc, torch.cat(outs), torch.cat(labels)


@pytest.mark.parametrize("name", FROZEN)
def test_cached_evaluation_is_identical(name, data_root, tmp_path):
    store_dir = tmp_path / "store"
    t = _trainer(name, data_root, tmp_path / "out", store_dir)
    if t.get_model_names():  # a learned state that is not the initial one
        with torch.no_grad():
            for p in t._models[t.get_model_names()[0]].parameters():
                p.add_(0.05 * torch.randn_like(p))
    acc0, logits0, y0 = _evaluate(t, use_store=False)
    assert not store_dir.exists()  # TEST.FEATURE_CACHE False: the store is not touched
    acc1, logits1, y1 = _evaluate(t, use_store=True)  # computes and stores
    store = FeatureStore(str(store_dir))
    assert store.info()["entries"] == 1
    acc2, logits2, y2 = _evaluate(t, use_store=True)  # from the store
    assert t._feature_store.hits == 1 and t._feature_store.misses == 1
    assert torch.equal(y0, y1) and torch.equal(y0, y2)
    assert logits0.shape == (len(t.dm.dataset.test), 5) and len(t.dm.dataset.test) > 8  # more than one batch
    assert torch.equal(logits0, logits1) and torch.equal(logits0, logits2)
    assert acc0 == acc1 == acc2


def test_one_entry_serves_every_method_and_seed(data_root, tmp_path):
    store_dir = tmp_path / "store"
    zs = _trainer("ZeroshotCLIP", data_root, tmp_path / "zs", store_dir)
    _evaluate(zs, use_store=True)
    assert zs._feature_store.misses == 1
    coop = _trainer("CoOp", data_root, tmp_path / "coop", store_dir, extra=["SEED", "2"])
    acc_cached, logits_cached, _ = _evaluate(coop, use_store=True)
    assert coop._feature_store.hits == 1 and coop._feature_store.misses == 0
    acc, logits, _ = _evaluate(coop, use_store=False)
    assert torch.equal(logits, logits_cached) and acc == acc_cached
    # another test transform is another entry (never the stored one)
    other = _trainer("ZeroshotCLIP", data_root, tmp_path / "zs2", store_dir, extra=["INPUT.INTERPOLATION", "bilinear"])
    _evaluate(other, use_store=True)
    assert other._feature_store.misses == 1 and FeatureStore(str(store_dir)).info()["entries"] == 2


def test_batch_sizes_that_cut_the_split_alike_share_an_entry(data_root, tmp_path):
    """TCP's official test batch size is 500, CoOp's 100: on a split of at most 100 images both are one
    batch of every image, hence one entry; a batch size below the split's size is another partition
    (another entry, never the stored one)."""
    store_dir = tmp_path / "store"
    tcp_like = _trainer("ZeroshotCLIP", data_root, tmp_path / "a", store_dir, extra=["DATALOADER.TEST.BATCH_SIZE", "500"])
    _evaluate(tcp_like, use_store=True)
    assert tcp_like._feature_store.misses == 1
    coop = _trainer("CoOp", data_root, tmp_path / "b", store_dir, extra=["DATALOADER.TEST.BATCH_SIZE", "100"])
    acc_cached, cached, _ = _evaluate(coop, use_store=True)
    assert coop._feature_store.hits == 1 and coop._feature_store.misses == 0
    acc, plain, _ = _evaluate(coop, use_store=False)
    assert torch.equal(cached, plain) and acc == acc_cached
    n = len(coop.dm.dataset.test)
    small = _trainer("ZeroshotCLIP", data_root, tmp_path / "c", store_dir, extra=["DATALOADER.TEST.BATCH_SIZE", "4"])
    assert n > 4
    _, cached, _ = _evaluate(small, use_store=True)
    assert small._feature_store.misses == 1 and FeatureStore(str(store_dir)).info()["entries"] == 2
    _, plain, _ = _evaluate(small, use_store=False)
    assert torch.equal(cached, plain)


def test_changed_weights_are_a_different_entry(data_root, tmp_path):
    store_dir = tmp_path / "store"
    t = _trainer("ZeroshotCLIP", data_root, tmp_path / "zs", store_dir)
    _, before, _ = _evaluate(t, use_store=True)
    with torch.no_grad():
        t.head.image_encoder.visual.proj.mul_(1.5).add_(0.01)
    _, after, _ = _evaluate(t, use_store=True)
    assert t._feature_store.misses == 2 and t._feature_store.hits == 0
    _, ref, _ = _evaluate(t, use_store=False)
    assert torch.equal(after, ref) and not torch.equal(before, after)


@pytest.mark.parametrize("name", LEARNED)
def test_learned_image_features_never_touch_the_store(name, data_root, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"{name} used the feature store")

    for attr in ("load", "save", "get_or_compute"):
        monkeypatch.setattr(FeatureStore, attr, refuse)
    store_dir = tmp_path / "store"
    t = _trainer(name, data_root, tmp_path / "out", store_dir)
    assert t.FROZEN_IMAGE_FEATURES is False
    acc, logits, _ = _evaluate(t, use_store=True)
    assert logits.shape == (len(t.dm.dataset.test), 5)
    assert not os.path.exists(store_dir)
