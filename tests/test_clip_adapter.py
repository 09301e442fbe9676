"""CLIP-Adapter specifics: the official parameter names and shapes, the residual-ratio formula on raw
features, training from stored augmented views (shared by reruns, no image encoding the second time)
equal to training from images on the same views (toy-world runs: tests/test_features_toy.py)."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from vlprompt.engine import build_trainer
from vlprompt.engine.methods import load_plugins
from vlprompt.features import FeatureStore
from vlprompt.utils import restore_stdout

load_plugins()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipadapter")
    make_image_folder(str(root / "five"), n_classes=5, n_per_class=6)
    return root


def _trainer(data_root, out, store, extra=()):
    opts = ["TRAINER.CLIP_ADAPTER.PREC", "fp32", "FEATURES.DIR", str(store), "OPTIM.MAX_EPOCH", "2",
            "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", "0.1", "TEST.NO_TEST", "True", *extra]
    cfg = make_cfg(data_root, trainer="CLIP_Adapter", folder="five", output_dir=str(out), opts=opts)
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def test_official_names_and_formula(data_root, tmp_path):
    t = _trainer(data_root, tmp_path / "a", tmp_path / "store")
    ad = t._models["clip_adapter"]
    d = t.model.dims["d_embed"]
    shapes = {k: tuple(v.shape) for k, v in ad.state_dict().items()}
    assert shapes == {"fc.0.weight": (d // 4, d), "fc.2.weight": (d, d // 4)}  # no biases, as official
    with torch.no_grad():
        for p in ad.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    f = torch.randn(3, d)
    W1, W2 = ad.fc[0].weight, ad.fc[2].weight
    a = F.relu(F.relu(f @ W1.t()) @ W2.t())
    mixed = F.normalize(0.2 * a + 0.8 * f, dim=-1)
    text = t.model.text_head.text_features()
    ref = t.model.logit_scale.exp() * mixed @ text.t()
    with torch.no_grad():
        assert torch.allclose(t.logits_from_image_features(f), ref, atol=1e-4)


def test_training_from_the_store_equals_training_from_images_and_is_shared(data_root, tmp_path):
    from vlprompt.features.extract import view_features
    from vlprompt.utils import set_random_seed

    store = tmp_path / "store"
    set_random_seed(1)
    a = _trainer(data_root, tmp_path / "a", store)
    a.train()
    restore_stdout()
    info = FeatureStore(str(store)).info()
    assert info["by_dataset_split"]["ImageFolder/train"]["entries"] == 2  # one augmented view per epoch
    # a rerun with the same seed encodes no image: every view comes from the store
    set_random_seed(1)
    b = _trainer(data_root, tmp_path / "b", store)
    b.train()
    restore_stdout()
    assert b._feature_store.misses == 0 and b._feature_store.hits == 2
    for k, v in a._models["clip_adapter"].state_dict().items():
        assert torch.equal(v, b._models["clip_adapter"].state_dict()[k]), k
    # the same optimisation on the same views fed as images through the frozen tower (the official path)
    set_random_seed(1)
    c = _trainer(data_root, tmp_path / "c", store)
    views = [view_features(c, c.dm.dataset.train_x, c.train_transform(), "train", view=v, seed=1)[0] for v in (0, 1)]
    c.before_train()
    for c.epoch in range(2):
        order = torch.randperm(len(c.dm.dataset.train_x))
        labels = torch.tensor([it.label for it in c.dm.dataset.train_x])
        c.num_batches = len(order) // 4
        for c.batch_idx in range(c.num_batches):
            idx = order[c.batch_idx * 4:(c.batch_idx + 1) * 4]
            c.forward_backward({"feat": views[c.epoch][idx], "label": labels[idx]})
        c.update_lr()
    restore_stdout()
    for k, v in a._models["clip_adapter"].state_dict().items():
        assert torch.allclose(v, c._models["clip_adapter"].state_dict()[k], atol=1e-6), k


def test_image_path_when_the_training_store_is_off(data_root, tmp_path):
    store = tmp_path / "store"
    t = _trainer(data_root, tmp_path / "a", store, extra=["FEATURES.TRAIN_CACHE", "False", "OPTIM.MAX_EPOCH", "1"])
    before = t._models["clip_adapter"].fc[0].weight.detach().clone()
    t.train()
    restore_stdout()
    assert not torch.equal(before, t._models["clip_adapter"].fc[0].weight.detach())
    assert not store.exists()  # neither training (images) nor evaluation (NO_TEST) touched the store

