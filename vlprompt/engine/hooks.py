"""Engine hooks: the services around the one loop, and methods' epoch-level tricks, as one ordered
list of objects with state (detectron2's ``HookBase`` / ``hooks.py`` shape; docs/ENGINE.md, "The loop").

The loop (:meth:`vlprompt.engine.TrainerBase.train`) calls every registered hook, in the order of
their ``PRIORITY`` (smaller first; ties in registration order), at these events::

    before_train
    for every epoch:
        before_epoch
        for every batch of the epoch's batch source:
            before_iter, forward_backward (after_step after every optimisation step), after_iter
        after_epoch
    after_train

The engine's own services are hooks registered when a trainer is built (:func:`engine_hooks`):

=================  ========  ==========================================================================
name               PRIORITY  what it does
=================  ========  ==========================================================================
``resume``         0         before_train: resume from the newest readable checkpoint (or clear the
                             folder with ``TRAIN.OVERWRITE``); sets ``trainer.start_epoch``
``lr_scheduler``   10        after_iter (``LR unit "iteration"``) or after_epoch (``"epoch"``): step
                             every scheduler once (not twice if the trainer stepped it itself)
(method hooks)     50        e.g. PromptSRC's Gaussian prompt aggregation
``evaluation``     80        after_epoch: validation and ``model-best.pth.tar`` (``TEST.FINAL_MODEL
                             best_val``); after_train: "Finish training", deploy, the final test
``checkpoint``     90        after_epoch: the numbered checkpoint (``TRAIN.CHECKPOINT_FREQ``, last
                             epoch) or the per-epoch resume point ``model-last.pth.tar``
``timer``          95        before_train: start the clock; after_train: "Elapsed: h:mm:ss"
``tensorboard``    99        before_train: open the writer; after_train: close it
=================  ========  ==========================================================================

So a method hook's ``after_epoch`` runs after the epoch's LR step and *before* the epoch's
checkpoint is written: the checkpoint holds the hook's state at the end of that epoch and a resumed
run restores it through :meth:`HookBase.load_state_dict`, continuing exactly where the interrupted run
was. A hook's state must be plain tensors, numbers, strings, lists and dicts (checkpoints load with
``weights_only=True``); a hook that overrides :meth:`HookBase.state_dict` is saved, under its name,
in the first model's checkpoint file. A resumed run needs the state of every such hook, except the
engine's own (``OPTIONAL_STATE``), which keep their defaults when an older checkpoint lacks them.
"""
import datetime
import os.path as osp
import time

__all__ = ["HookBase", "METHOD_PRIORITY", "ResumeHook", "LRSchedulerHook", "EvaluationHook", "CheckpointHook",
           "TimerHook", "TensorboardHook", "engine_hooks"]

#: default priority of a hook registered by a method (between the LR step and evaluation/checkpoint)
METHOD_PRIORITY = 50


class HookBase:
    """Base class of engine hooks; ``self.trainer`` is set when the hook is registered."""

    trainer = None
    #: position in the ordered hook list (smaller first); method hooks default to ``METHOD_PRIORITY``
    PRIORITY = METHOD_PRIORITY
    #: a resumed run may lack this hook's state (it keeps its defaults); the engine's services only
    OPTIONAL_STATE = False

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def before_iter(self):
        pass

    def after_iter(self):
        pass

    def after_step(self):
        pass

    @property
    def stateful(self):
        """True when the hook's state goes into checkpoints (default: it overrides ``state_dict``)."""
        return type(self).state_dict is not HookBase.state_dict

    def state_dict(self):
        """Plain-tensor state saved in the checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned."""


class ResumeHook(HookBase):
    """Resume from the output folder (or ``RESUME``), or clear it with ``TRAIN.OVERWRITE``."""

    PRIORITY = 0

    def before_train(self):
        t = self.trainer
        cfg = t.cfg
        directory = cfg.RESUME or cfg.OUTPUT_DIR
        if cfg.TRAIN.OVERWRITE and not cfg.RESUME:
            removed = t.checkpointer.clear(directory) if t.is_main_process else []
            print(f"TRAIN.OVERWRITE True: training from scratch; removed {len(removed)} checkpoint file(s) of the "
                  f"previous run in {directory}")
            t.start_epoch = 0
        else:
            t.start_epoch = t.resume_model_if_exist(directory)


class LRSchedulerHook(HookBase):
    """Step every scheduler once per iteration or per epoch (the trainer's LR unit)."""

    PRIORITY = 10

    def __init__(self, unit):
        if unit not in ("epoch", "iteration"):
            raise ValueError(f'LR schedule unit must be "epoch" or "iteration", got {unit!r}')
        self.unit = unit

    def after_iter(self):
        if self.unit == "iteration":
            self.trainer.update_lr()

    def after_epoch(self):
        t = self.trainer
        # a ported Dassl trainer that steps the LR itself at its last batch is not stepped twice
        if self.unit == "epoch" and getattr(t, "_lr_stepped_epoch", None) != t.epoch:
            t.update_lr()


class EvaluationHook(HookBase):
    """Validation and the best-val checkpoint after every epoch; the final test after training."""

    PRIORITY = 80
    OPTIONAL_STATE = True

    def __init__(self):
        self.best_result = float("-inf")

    def _best_val(self):
        cfg = self.trainer.cfg
        return not cfg.TEST.NO_TEST and cfg.TEST.FINAL_MODEL == "best_val"

    @property
    def stateful(self):
        return self._best_val()

    def state_dict(self):
        return {"best_result": float(self.best_result)}

    def load_state_dict(self, state):
        self.best_result = float(state.get("best_result", self.best_result))

    def after_epoch(self):
        t = self.trainer
        if self._best_val():
            result = t.test(split="val")
            if result > self.best_result:
                self.best_result = result
                t.best_result = result
                t.save_model(t.epoch, t.output_dir, val_result=result, model_name="model-best.pth.tar")

    def after_train(self):
        t = self.trainer
        print("Finish training")
        if not t.cfg.TEST.NO_TEST:
            if t.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                t.load_model(t.output_dir)
            else:
                print("Deploy the last-epoch model")
            t.test()


class CheckpointHook(HookBase):
    """The numbered checkpoint every ``TRAIN.CHECKPOINT_FREQ`` epochs and at the last epoch; the
    per-epoch resume point ``model-last.pth.tar`` otherwise (removed once a newer numbered file exists)."""

    PRIORITY = 90

    def after_epoch(self):
        t = self.trainer
        freq = t.cfg.TRAIN.CHECKPOINT_FREQ
        numbered = (t.epoch + 1) == t.max_epoch or (freq > 0 and (t.epoch + 1) % freq == 0)
        if numbered:
            t.save_model(t.epoch, t.output_dir)
            if t.is_main_process:  # the numbered file is newer than the per-epoch resume point
                t.checkpointer.remove_last(t.output_dir)
        elif t.is_main_process:
            t.checkpointer.save_last(t.epoch, t.output_dir)


class TimerHook(HookBase):
    """The training clock (``trainer.time_start``) and the final "Elapsed" line."""

    PRIORITY = 95

    def before_train(self):
        self.trainer.time_start = time.time()

    def after_train(self):
        elapsed = round(time.time() - self.trainer.time_start)
        print(f"Elapsed: {datetime.timedelta(seconds=elapsed)}")


class TensorboardHook(HookBase):
    """The tensorboard writer of the run (``OUTPUT_DIR/tensorboard``)."""

    PRIORITY = 99

    def before_train(self):
        from vlprompt.utils import mkdir_if_missing

        writer_dir = osp.join(self.trainer.output_dir, "tensorboard")
        mkdir_if_missing(writer_dir)
        self.trainer.init_writer(writer_dir)

    def after_train(self):
        self.trainer.close_writer()


def engine_hooks(lr_unit):
    """The engine's services, as ``(name, hook)`` pairs, for a trainer with LR unit ``lr_unit``."""
    return [("resume", ResumeHook()), ("lr_scheduler", LRSchedulerHook(lr_unit)), ("evaluation", EvaluationHook()),
            ("checkpoint", CheckpointHook()), ("timer", TimerHook()), ("tensorboard", TensorboardHook())]
