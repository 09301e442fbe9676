"""Linear probe CLIP: CoOp's ``lpclip`` protocol (Zhou et al., IJCV 2022; KaiyangZhou/CoOp ``lpclip/``),
following CLIP's appendix A.3 (Radford et al., 2021, arXiv:2103.00020).

Multinomial L2-regularised logistic regression on the **raw** (not normalised) features of the frozen
image tower, every split seen through the test transform (``lpclip/feat_extractor.py`` uses
``build_transform(is_train=False)``). The inverse regularisation strength ``C`` is chosen on the
validation split as ``lpclip/linear_probe.py`` does:

1. coarse search over ``C_GRID`` = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6] (first best val accuracy wins);
2. ``SEARCH_STEPS`` = 8 rounds of bisection in log10 space on [C*/10, 10 C*]: fit both ends, keep the end
   with the better val accuracy (the left one on ties), halve the log-interval towards it; the classifier
   of the last round is the result.

Solver: scikit-learn's ``LogisticRegression(solver="lbfgs", max_iter=1000)`` with the L2 penalty, exactly the
estimator of the official script (lbfgs is also scikit-learn's default multinomial solver for dense
features; nothing else would reproduce the official numbers). Features are float64 as in the official
numpy arrays.

Few-shot sampling: the official script samples the shots itself with ``np.random.seed(run)`` from the full
train/val features (val: 1, 2, 4, 4, 4 per class for 1, 2, 4, 8, 16 shots). Here the engine's few-shot
splits are used (``DATASET.NUM_SHOTS`` and ``SEED``; val ``min(shots, 4)`` per class, the same counts), so the
sampled images differ from the official ones; the protocol is the same.

The probe is fitted when the trainer is built (``--eval-only`` runs; nothing for the engine to train); the
fitted ``C``, validation accuracy and the classifier (``coef``/``intercept``) are written to
``OUTPUT_DIR/linear_probe/head.safetensors``. A linear probe only scores the classes it was fitted on: it
has no base-to-novel or cross-dataset recipe.
"""
import os
import os.path as osp

import numpy as np
import torch

from vlprompt.clip import Precision, build_clip_from_cfg
from vlprompt.clip.towers import prompted_vision_encoder
from vlprompt.config import add_trainer_cfg, register_cfg_extension
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.engine import TRAINER_REGISTRY, TrainerX
from vlprompt.engine.methods import MethodCard
from vlprompt.features.extract import loader_features, view_features
from vlprompt.errors import UserRuntimeError

C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
LP_DEFAULTS = dict(C_GRID=C_GRID, SEARCH_STEPS=8, MAX_ITER=1000, PREC="fp16")


def _fit(x, y, c, max_iter):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(solver="lbfgs", max_iter=int(max_iter), C=float(c)).fit(x, y)


def _acc(clf, x, y):
    return float(np.sum(clf.predict(x) == y)) / len(y)


def search_c(train_x, train_y, val_x, val_y, grid=C_GRID, steps=8, max_iter=1000, log=print):
    """The official C search; returns ``(classifier, C, val accuracy, trace)``."""
    accs = [_acc(_fit(train_x, train_y, c, max_iter), val_x, val_y) for c in grid]
    trace = [("grid", list(grid), accs)]
    c_peak = grid[int(np.argmax(accs))]
    c_left, c_right = 0.1 * c_peak, 10.0 * c_peak
    clf_final, c_final, acc_final = None, c_peak, max(accs)
    for step in range(int(steps)):
        clf_l, clf_r = _fit(train_x, train_y, c_left, max_iter), _fit(train_x, train_y, c_right, max_iter)
        acc_l, acc_r = _acc(clf_l, val_x, val_y), _acc(clf_r, val_x, val_y)
        trace.append((step, (c_left, c_right), (acc_l, acc_r)))
        if acc_l < acc_r:
            clf_final, c_final, acc_final = clf_r, c_right, acc_r
            lo, hi = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_right)
        else:
            clf_final, c_final, acc_final = clf_l, c_left, acc_l
            lo, hi = np.log10(c_left), 0.5 * (np.log10(c_right) + np.log10(c_left))
        c_left, c_right = float(np.power(10, lo)), float(np.power(10, hi))
    if clf_final is None:  # SEARCH_STEPS 0: the coarse grid's best
        clf_final = _fit(train_x, train_y, c_peak, max_iter)
    if log:
        log(f"Linear probe: C = {c_final:.6g} (val accuracy {100 * acc_final:.2f})")
    return clf_final, c_final, acc_final, trace


@TRAINER_REGISTRY.register()
class LinearProbeCLIP(TrainerX):
    """Logistic regression on frozen CLIP image features (CoOp's lpclip protocol)."""

    CARD = MethodCard(config="rn50", protocols=("few_shot",), order=200, backbones=ANY_TOWERS, eval_only=True, uses_shots=True,
                      cfg_node="LINEAR_PROBE", model_name="")
    FROZEN_IMAGE_FEATURES = True

    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.CFG_NODE]

    def frozen_image_tower(self):
        return self.tower

    def build_model(self):
        cfg, m = self.cfg, self.method_cfg
        self.precision = Precision(m.PREC, self.device)
        clip_model = self.precision.prepare_clip(build_clip_from_cfg(cfg))
        for p in clip_model.parameters():
            p.requires_grad_(False)
        clip_model.to(self.device).eval()
        self.tower = prompted_vision_encoder(clip_model, 0, 0)  # the frozen tower of any family
        test_tfm = self.test_loader.dataset.transform
        train, _ = view_features(self, self.dm.dataset.train_x, test_tfm, "train")
        train_y = np.array([int(it.label) for it in self.dm.dataset.train_x])
        if self.val_loader is not None:
            val, _ = loader_features(self, self.val_loader, "val")
            val_y = np.array([int(it.label) for it in self.val_loader.dataset.data_source])
        else:
            print("Linear probe: no validation split; C is searched on the training features")
            val, val_y = train, train_y
        clf, c, acc, _ = search_c(train.double().numpy(), train_y, val.double().numpy(), val_y,
                                  grid=tuple(float(v) for v in m.C_GRID), steps=m.SEARCH_STEPS, max_iter=m.MAX_ITER)
        self.set_classifier(clf.coef_, clf.intercept_, clf.classes_)
        self.search = {"C": c, "val_acc": 100.0 * acc}
        self._save_head()

    def set_classifier(self, coef, intercept, classes):
        """Logits over all ``num_classes`` (a class missing from the training split gets -inf)."""
        coef, intercept = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
        if coef.shape[0] == 1:  # binary: scikit-learn's decision function is the score of classes_[1]
            coef = np.concatenate([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros_like(intercept), intercept])
        W = torch.zeros(self.num_classes, coef.shape[1], dtype=torch.float64)
        b = torch.full((self.num_classes,), float("-inf"), dtype=torch.float64)
        idx = torch.as_tensor(np.asarray(classes, dtype=np.int64))
        W[idx] = torch.from_numpy(coef)
        b[idx] = torch.from_numpy(intercept)
        self.coef, self.intercept = W.to(self.device), b.to(self.device)

    def _save_head(self):
        if not self.is_main_process or not self.cfg.OUTPUT_DIR:
            return
        from safetensors.torch import save_file

        folder = osp.join(self.cfg.OUTPUT_DIR, "linear_probe")
        os.makedirs(folder, exist_ok=True)
        tmp = osp.join(folder, f".head.safetensors.tmp-{os.getpid()}")
        save_file({"coef": self.coef.cpu().contiguous(), "intercept": self.intercept.cpu().contiguous()}, tmp,
                  metadata={"C": repr(self.search["C"]), "val_acc": repr(self.search["val_acc"])})
        os.replace(tmp, osp.join(folder, "head.safetensors"))

    def logits_from_image_features(self, features):
        """scikit-learn's ``decision_function`` (X coef^T + intercept, float64), as float32 logits."""
        return (features.to(torch.float64) @ self.coef.t() + self.intercept).float()

    def model_inference(self, image, features=None):
        with torch.no_grad(), self.precision.autocast():
            if features is None:
                features = self.tower(image)
        return self.logits_from_image_features(features)

    def extra_results(self):
        return dict(self.search)

    def train(self):
        """Nothing to train (the model was fitted when the trainer was built): run the final test, as a
        training run ends (so ``train.py`` without ``--eval-only`` works too)."""
        print("LinearProbeCLIP: nothing to train by gradient steps; testing the model built from the training split")
        if not self.cfg.TEST.NO_TEST:
            self.test()

    def forward_backward(self, batch):
        raise UserRuntimeError("LinearProbeCLIP is fitted when it is built: run it with --eval-only")


def _extend(cfg):
    add_trainer_cfg(cfg, LinearProbeCLIP.CFG_NODE, dict(LP_DEFAULTS))


register_cfg_extension(_extend)
