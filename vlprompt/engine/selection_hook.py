"""Epoch selection on the selection split as an engine hook (LP++ picks its epoch this way): the split and its
features come from :mod:`vlprompt.features.selection` (the run's validation split by default,
``TEST.SELECTION_SPLIT test`` for the official behaviour, marked)."""
import copy

import torch

from vlprompt.features.selection import record_selection, selection_features

from .hooks import METHOD_PRIORITY, HookBase

__all__ = ["make_epoch_selection_hook"]


def _accuracy(logits, labels):
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


def make_epoch_selection_hook(module_fn, strict=False, who="selection"):
    """Epoch selection on the selection split, as an engine hook (:class:`vlprompt.engine.hooks.HookBase`), for
    trainers trained by the engine's loop (LP++). After every epoch: the accuracy of
    ``trainer.selection_logits(features)`` on the selection split; the state of the learnable module
    ``module_fn()`` at the **last** epoch reaching the best accuracy so far (``>=``, LP++'s official rule;
    ``strict=True`` for ``>``) is kept and loaded back before the final test. The hook's state (best accuracy,
    epoch, parameters) is checkpointed, so a resumed run selects as an uninterrupted one."""
    class _Hook(HookBase):
        PRIORITY = METHOD_PRIORITY

        def __init__(self):
            self.best_acc, self.best_epoch, self.best_state = 0.0, -1, None
            self._data = None

        def _selection_data(self):
            if self._data is None:
                t = self.trainer
                split, feats, labels = selection_features(t, who)
                self._data = (split, feats, labels)
            return self._data

        def after_epoch(self):
            t = self.trainer
            split, feats, labels = self._selection_data()
            if split is None:
                return
            with torch.no_grad():
                acc = _accuracy(t.selection_logits(feats.to(t.device)).float().cpu(), labels)
            if acc > self.best_acc or (not strict and acc >= self.best_acc):
                self.best_acc, self.best_epoch = acc, int(t.epoch)
                self.best_state = {k: v.detach().cpu().clone() for k, v in module_fn().state_dict().items()}

        def after_train(self):
            t = self.trainer
            split = self._selection_data()[0]
            if split is None or self.best_state is None:
                record_selection(t, split, epoch=int(t.max_epoch), accuracy=None)
                return
            module_fn().load_state_dict(self.best_state)
            print(f"{who}: epoch {self.best_epoch + 1} selected on the {split} split (accuracy {self.best_acc:.2f})")
            record_selection(t, split, epoch=self.best_epoch + 1, accuracy=self.best_acc)

        def state_dict(self):
            return {"best_acc": float(self.best_acc), "best_epoch": int(self.best_epoch),
                    "best_state": copy.copy(self.best_state) if self.best_state is not None else {}}

        def load_state_dict(self, state):
            self.best_acc = float(state.get("best_acc", 0.0))
            self.best_epoch = int(state.get("best_epoch", -1))
            self.best_state = dict(state.get("best_state") or {}) or None

    return _Hook()
