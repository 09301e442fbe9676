"""Linear probe specifics: the official C search (coarse grid + log-space bisection, transcribed here
independently from CoOp's lpclip/linear_probe.py), logits equal to scikit-learn's decision function, the
saved head (toy-world runs: tests/test_features_toy.py)."""
import os.path as osp

import numpy as np
import pytest
import torch

from vlprompt.engine.methods import load_plugins
from vlprompt.utils import restore_stdout

load_plugins()

from trainers.linear_probe import search_c  # noqa: E402

# scikit-learn (a requirement) is imported by the tests that use it, not at collection: ~3 s in every worker


def _official_loop(tx, ty, vx, vy, steps):
    """The official search as its script writes it (fit, predict, compare; log10 bookkeeping)."""
    from sklearn.linear_model import LogisticRegression

    def acc(c):
        clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(tx, ty)
        return sum(clf.predict(vx) == vy) / len(vy), clf

    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = [acc(c)[0] for c in search_list]
    c_peak = search_list[np.argmax(acc_list)]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    finals = []
    for _ in range(steps):
        acc_left, _ = acc(c_left)
        acc_right, _ = acc(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final = c_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
        finals.append(c_final)
    return finals


def test_search_matches_the_official_procedure():
    rng = np.random.RandomState(0)
    centers = rng.randn(4, 2) * 1.5  # overlapping classes in 2-D: not separable, so lbfgs converges fast
    tx = np.concatenate([centers + rng.randn(4, 2) for _ in range(10)])
    ty = np.tile(np.arange(4), 10)
    vx = np.concatenate([centers + rng.randn(4, 2) for _ in range(6)])
    vy = np.tile(np.arange(4), 6)
    clf, c, acc, trace = search_c(tx, ty, vx, vy, steps=3, log=None)
    finals = _official_loop(tx, ty, vx, vy, steps=3)
    assert c == pytest.approx(finals[-1], rel=1e-12)
    assert [step for step, *_ in trace] == ["grid", 0, 1, 2]
    assert clf.C == pytest.approx(c)


def test_logits_are_the_decision_function_and_the_head_is_saved(tmp_path):
    from tests.helpers import make_cfg, make_image_folder
    from vlprompt.engine import build_trainer

    make_image_folder(str(tmp_path / "data" / "five"), n_classes=5, n_per_class=6)
    cfg = make_cfg(tmp_path / "data", trainer="LinearProbeCLIP", folder="five", output_dir=str(tmp_path / "out"),
                   opts=["TRAINER.LINEAR_PROBE.PREC", "fp32", "TRAINER.LINEAR_PROBE.SEARCH_STEPS", "2",
                         "FEATURES.DIR", str(tmp_path / "store")])
    cfg.freeze()
    try:
        t = build_trainer(cfg)
    finally:
        restore_stdout()
    from sklearn.linear_model import LogisticRegression
    from safetensors.torch import load_file

    feats = torch.randn(7, t.coef.shape[1])
    clf = LogisticRegression(C=t.search["C"])
    clf.classes_ = np.arange(5)
    clf.coef_, clf.intercept_ = t.coef.numpy(), t.intercept.numpy()
    ref = clf.decision_function(feats.double().numpy())
    assert np.allclose(t.logits_from_image_features(feats).numpy(), ref, rtol=1e-6, atol=1e-5)
    head = load_file(osp.join(str(tmp_path / "out"), "linear_probe", "head.safetensors"))
    assert torch.equal(head["coef"], t.coef) and torch.equal(head["intercept"], t.intercept)
    assert t.get_model_names() == [] and set(t.extra_results()) == {"C", "val_acc"}

