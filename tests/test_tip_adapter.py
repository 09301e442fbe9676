"""Tip-Adapter / Tip-Adapter-F specifics: the cache (keys from augmented views of the store), the logits
formula, the official alpha/beta search, the keys as Tip-Adapter-F's only learnable tensor, checkpoints
onto other class lists by class name (toy-world runs: tests/test_features_toy.py)."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from vlprompt.engine import build_trainer
from vlprompt.engine.methods import load_plugins
from vlprompt.utils import restore_stdout

load_plugins()

from trainers.tip_adapter import search_grid  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tip")
    make_image_folder(str(root / "five"), n_classes=5, n_per_class=6)
    make_image_folder(str(root / "three"), n_classes=3, n_per_class=6, seed=3)  # class_0..2: a subset
    return root


def _trainer(name, data_root, tmp_path, folder="five", extra=()):
    node = "TIP_ADAPTER" if name == "TipAdapter" else "TIP_ADAPTER_F"
    opts = [f"TRAINER.{node}.PREC", "fp32", f"TRAINER.{node}.AUGMENT_EPOCH", "3", f"TRAINER.{node}.SEARCH_STEP",
            "(20, 10)", "FEATURES.DIR", str(tmp_path / "store"), *extra]
    cfg = make_cfg(data_root, trainer=name, folder=folder, output_dir=str(tmp_path / f"out_{name}_{folder}"), opts=opts)
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def test_official_grid():
    assert search_grid(7, 200)[:2] == [0.1, 0.1 + 6.9 / 200]
    g = search_grid(3, 20)
    assert len(g) == 20 and g[0] == 0.1 and abs(g[-1] - (19 * 2.9 / 20 + 0.1)) < 1e-12


def test_cache_keys_logits_and_search(data_root, tmp_path):
    from vlprompt.features.extract import view_features

    t = _trainer("TipAdapter", data_root, tmp_path)
    m = t.model
    items, tfm = t.dm.dataset.train_x, t.train_loader_x.dataset.transform
    views = [view_features(t, items, tfm, "train", view=v, seed=1)[0] for v in range(3)]
    assert view_features(t, items, tfm, "train", view=0, seed=1)[1]  # a hit: the build stored every view
    assert not torch.equal(views[0], views[1])  # random crops/flips differ between views
    expect = F.normalize(torch.stack(views).mean(0), dim=-1)
    assert torch.allclose(m.cache.weight, expect, atol=1e-6)
    assert torch.equal(m.cache.labels, torch.tensor([it.label for it in items]))
    assert not m.cache.weight.requires_grad and t.get_model_names() == []
    # logits = 100 f W^T + alpha exp(-beta (1 - f K^T)) L
    raw = torch.randn(6, m.cache.weight.shape[1])
    f = F.normalize(raw, dim=-1)
    W = m.zero_shot.text_features()
    L = F.one_hot(m.cache.labels, 5).float()
    alpha, beta = m.alpha, m.beta
    ref = 100.0 * f @ W.t() + alpha * torch.exp(-beta * (1 - f @ m.cache.weight.t())) @ L
    assert torch.allclose(t.logits_from_image_features(raw), ref, atol=1e-4)
    # the search: (beta, alpha) is the first grid point with the best val accuracy
    val = t.val_loader.dataset.data_source
    from vlprompt.features.extract import loader_features

    vf = F.normalize(loader_features(t, t.val_loader, "val")[0], dim=-1)
    vy = torch.tensor([it.label for it in val])
    best = (0.0, 0.0, 0.0)
    for b in search_grid(7.0, 20):
        for a in search_grid(3.0, 10):
            logits = 100.0 * vf @ W.t() + a * torch.exp(-b * (1 - vf @ m.cache.weight.t())) @ L
            acc = 100.0 * (logits.argmax(1) == vy).float().mean().item()
            if acc > best[0] + 1e-9:
                best = (acc, b, a)
    assert t.search[0] == pytest.approx(best[1]) and t.search[1] == pytest.approx(best[2])
    assert t.search[2] == pytest.approx(best[0])


def test_tip_f_learns_the_keys_and_transfers_by_class_name(data_root, tmp_path):
    t = _trainer("TipAdapterF", data_root, tmp_path, extra=["OPTIM.MAX_EPOCH", "1"])
    cache = t._models["adapter"]
    assert sorted(n for n, p in cache.named_parameters() if p.requires_grad) == ["weight"]
    assert set(cache.state_dict()) == {"weight", "labels", "class_names"}
    init = cache.weight.detach().clone()
    assert torch.allclose(init.norm(dim=-1), torch.ones(init.shape[0]), atol=1e-5)  # initialised to the keys
    assert isinstance(t.optim, torch.optim.AdamW) and t.optim.defaults["eps"] == 1e-4
    lr0 = t.optim.param_groups[0]["lr"]
    t.train()
    restore_stdout()
    assert not torch.equal(cache.weight.detach(), init)
    assert t.optim.param_groups[0]["lr"] < lr0  # the cosine schedule stepped every iteration
    # onto a 3-class list whose names are a subset: the entries of those classes are kept, re-indexed
    t3 = _trainer("TipAdapterF", data_root, tmp_path, folder="three")
    try:
        t3.load_model(str(tmp_path / "out_TipAdapterF_five"), epoch=1)
    finally:
        restore_stdout()
    names5 = t.dm.dataset.classnames
    keep = [j for j, lab in enumerate(cache.labels.tolist()) if names5[lab] in t3.dm.dataset.classnames]
    assert torch.equal(t3.model.cache.weight.detach(), cache.weight.detach()[keep])
    assert [t3.dm.dataset.classnames[i] for i in t3.model.cache.labels.tolist()] == \
        [names5[cache.labels[j].item()] for j in keep]
    with torch.no_grad():
        assert t3.model_inference(torch.randn(2, 3, 224, 224)).shape == (2, 3)

