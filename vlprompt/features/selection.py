"""Model selection for methods on frozen features: the one place every hyper-parameter search reads its data.

Several official implementations choose hyper-parameters with **test** labels (Tip-Adapter's ImageNet
alpha/beta and Tip-Adapter-F's best epoch, GDA's ImageNet alpha; acknowledged by Tip-Adapter's maintainer in
gaopengcuhk/Tip-Adapter#11: "should be rectified by using validation set"). In vlprompt every search (Tip-Adapter's
alpha/beta, GDA's alpha, LP++'s epoch) goes through this module and, by default, sees only the run's
**validation** split (the few-shot val split of the run: CoOp's ``min(shots, 4)`` images per class drawn from
the dataset's val split with the run's seed). The official test-set selection stays available behind one
config key, ``TEST.SELECTION_SPLIT`` (``val``, default, or ``test``); a run that selects on the test split is
marked: results.json gets ``selection: {"split": "test", ...}`` and the result tables mark its row.

Guards (a user mistake gets one message, never a silent leak):

* under ``val``, a validation split that shares images with the test split (CoOp's ImageNet: ``val = test``)
  is refused: selecting on it would select on test images;
* no validation split (a dataset without one): the search is skipped and the method keeps its documented
  default (recorded as ``split: null``).

The functions take a trainer (``cfg``, ``val_loader``, ``test_loader``, the feature store through
:func:`vlprompt.features.extract.loader_features`). The epoch selection of methods trained by the engine's loop
(LP++) is an engine hook built on them: :func:`vlprompt.engine.selection_hook.make_epoch_selection_hook`.
"""
import torch

from vlprompt.errors import UserError

__all__ = ["SELECTION_SPLITS", "DEFAULT_SPLIT", "SelectionError", "selection_split", "selection_loader",
           "selection_features", "first_best", "record_selection"]

SELECTION_SPLITS = ("val", "test")
DEFAULT_SPLIT = "val"
KEY = "TEST.SELECTION_SPLIT"


class SelectionError(UserError, ValueError):
    """A selection that would read test data under the validation policy, or a bad ``TEST.SELECTION_SPLIT``."""


def selection_split(cfg):
    """``TEST.SELECTION_SPLIT`` (``val`` when the config has no such key)."""
    split = str(cfg.TEST.get("SELECTION_SPLIT", DEFAULT_SPLIT)) if "TEST" in cfg else DEFAULT_SPLIT
    if split not in SELECTION_SPLITS:
        raise SelectionError(f"{KEY} must be one of {SELECTION_SPLITS}, got '{split}'")
    return split


def _impaths(loader):
    return {str(it.impath) for it in loader.dataset.data_source}


def selection_loader(trainer, who="search"):
    """``(split, loader)`` the searches of ``trainer`` read, or ``(None, None)`` when there is no validation
    split under the ``val`` policy. ``who`` names the search in messages."""
    split = selection_split(trainer.cfg)
    if split == "test":
        print(f"{who}: selecting on the *test* split ({KEY} test, the official behaviour); "
              "the run is marked in results.json and the tables")
        return "test", trainer.test_loader
    loader = trainer.val_loader
    if loader is None:
        return None, None
    test = getattr(trainer, "test_loader", None)
    if test is not None:
        shared = _impaths(loader) & _impaths(test)
        if shared:
            raise SelectionError(
                f"{who}: the validation split of {trainer.cfg.DATASET.NAME} shares {len(shared)} images with its "
                f"test split (e.g. {sorted(shared)[0]}), so selecting on it would select on test data. Use a "
                f"dataset with a separate validation split, or set {KEY} test to select on the test split as the "
                "official code does (the run is then marked)")
    return "val", loader


def selection_features(trainer, who="search"):
    """``(split, raw features (N, d) on CPU, labels (N,))`` of the selection split through the feature store,
    or ``(None, None, None)`` when there is none (see :func:`selection_loader`)."""
    from .extract import loader_features

    split, loader = selection_loader(trainer, who)
    if loader is None:
        return None, None, None
    feats, _ = loader_features(trainer, loader, split)
    labels = torch.tensor([int(it.label) for it in loader.dataset.data_source], dtype=torch.long)
    return split, feats, labels


def first_best(candidates, score, start=(0.0, None), strict=True):
    """The search rule of the official grids: walk ``candidates`` in order, keep a candidate when its score is
    strictly better (``strict``) or at least as good (``strict=False``: ties go to the later one) than the best
    so far; the search starts from ``start = (score, candidate)`` (e.g. ``(0, default)``: if no candidate scores
    above 0 the default stays). Returns ``(best candidate, best score, trace)``; ``trace`` lists
    ``(candidate, score)`` in order."""
    best_score, best = start
    trace = []
    for c in candidates:
        s = float(score(c))
        trace.append((c, s))
        if s > best_score or (not strict and s >= best_score):
            best_score, best = s, c
    return best, best_score, trace


def record_selection(trainer, split, **info):
    """Remember what a search selected and on which split (``trainer.hp_selection``, written to results.json
    as ``selection``); ``split`` is ``val``, ``test`` or ``None`` (no selection data)."""
    rec = {"split": split, "key": KEY}
    rec.update({k: v for k, v in info.items()})
    trainer.hp_selection = rec
    return rec
