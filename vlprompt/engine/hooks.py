"""Epoch-level tricks as hooks with state (detectron2's ``HookBase`` shape).

A hook is registered by a method with ``trainer.register_hook(name, hook)``. The engine calls, in
this order::

    before_train
    for every epoch:  before_epoch, (after_step after every optimisation step), after_epoch
    after_train       (before the final evaluation)

``after_epoch`` runs after the epoch's LR step and *before* the epoch's checkpoint is written, so the
checkpoint holds the hook's state at the end of that epoch; a resumed run restores it through
:meth:`HookBase.load_state_dict` and continues exactly where the interrupted run was. The state must
be plain tensors, numbers, strings, lists and dicts (checkpoints load with ``weights_only=True``).
"""

__all__ = ["HookBase"]


class HookBase:
    """Base class of engine hooks; ``self.trainer`` is set when the hook is registered."""

    trainer = None

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def after_step(self):
        pass

    def state_dict(self):
        """Plain-tensor state saved in the checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned."""
