"""GDA specifics: the closed form against a float64 hand computation, the logits formula and the alpha search
of a built trainer (selection policy: tests/test_selection.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from vlprompt.engine import build_trainer
from vlprompt.engine.methods import load_plugins
from vlprompt.utils import restore_stdout

load_plugins()

from trainers.gda import ALPHA_GRID, gda_classifier  # noqa: E402


def _hand(x, y, k):
    """The GDA head in float64 numpy, written from the formulas (docs/METHODS.md, ## GDA)."""
    n, d = x.shape
    mus = np.stack([x[y == c].mean(0) for c in range(k)])
    centred = np.concatenate([x[y == c] - mus[c] for c in range(k)])
    cov = np.cov(centred.T)  # unbiased (N - 1)
    prec = d * np.linalg.pinv((n - 1) * cov + np.trace(cov) * np.eye(d))
    W = prec @ mus.T
    b = np.log(1.0 / k) - 0.5 * np.einsum("kd,de,ke->k", mus, prec, mus)
    return W, b


def test_closed_form_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(15, 6, generator=g, dtype=torch.float64), dim=-1)
    y = torch.tensor([0, 1, 2] * 5)
    W, b = gda_classifier(x, y, 3)
    W_h, b_h = _hand(x.numpy(), y.numpy(), 3)
    assert W.shape == (6, 3) and b.shape == (3,)
    np.testing.assert_allclose(W.numpy(), W_h, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.numpy(), b_h, rtol=1e-9, atol=1e-9)
    # the shrinkage keeps the precision defined when D > N (here 6 dims, 4 rows)
    W2, _ = gda_classifier(x[:4], torch.tensor([0, 1, 0, 1]), 2)
    assert torch.isfinite(W2).all()


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    root = tmp_path_factory.mktemp("gda")
    make_image_folder(str(root / "four"), n_classes=4, n_per_class=6)
    opts = ["TRAINER.GDA.AUGMENT_EPOCH", "2", "FEATURES.DIR", str(root / "store")]
    cfg = make_cfg(root, trainer="GDA", folder="four", output_dir=str(root / "out"), opts=opts)
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def test_head_logits_and_search(trainer):
    t = trainer
    feats, labels = t.training_features()
    n_train = len(t.dm.dataset.train_x)
    assert feats.shape[0] == 2 * n_train and torch.equal(labels[:n_train], labels[n_train:])  # 2 passes, in order
    W, b = gda_classifier(F.normalize(feats.float(), dim=-1), labels, t.num_classes)
    assert torch.allclose(t.model.W, W) and torch.allclose(t.model.b, b)
    x = torch.randn(3, W.shape[0])
    f = F.normalize(x, dim=-1)
    T = t.model.zero_shot.text_features().float()
    expected = 100.0 * f @ T.t() + t.model.alpha * (f @ W + b)
    assert torch.allclose(t.model.logits_from_image_features(x), expected, atol=1e-4)
    sel = t.hp_selection
    assert sel["split"] == "val" and [a for a, _ in sel["grid"]] == list(ALPHA_GRID)
    best = max(s for _, s in sel["grid"])
    first = next(a for a, s in sel["grid"] if s == best)
    assert t.model.alpha == (first if best > 0 else 0.1)  # strict >: the first alpha with the best accuracy
