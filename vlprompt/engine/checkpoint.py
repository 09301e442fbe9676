"""Checkpoints of a trainer: every registered model, every named optimiser and scheduler, every hook.

One file per registered model, ``<output>/<model name>/<file>``, in Dassl's layout and names
(``model.pth.tar-<epoch>``, ``model-best.pth.tar``, the ``checkpoint`` pointer naming the newest file).
A file holds plain tensors and numbers only (``torch.load(..., weights_only=True)``)::

    state_dict        the model's state (for prompt learners: the learned state only)
    epoch             epochs completed
    optimizer         the model's first optimiser (Dassl's slot), scheduler: its scheduler
    optimizers        {name: {"optimizer": ..., "scheduler": ...}} further named optimisers of this model
    hooks             {name: state} of the stateful engine hooks (in the first model's file; the
                      engine's own services only with TEST.FINAL_MODEL best_val: the best result)
    val_result, rng_state
    run_config        the effective config of the run that wrote it (``cfg.dump()``, a YAML string);
                      a resume with another config is refused (:mod:`.resume_guard`). Older files lack it.

Besides the ``model.pth.tar-<epoch>`` files that ``TRAIN.CHECKPOINT_FREQ`` and the last epoch keep,
every epoch replaces ``model-last.pth.tar`` (atomically), so a killed run resumes from its last
finished epoch; it is removed when the final ``model.pth.tar-<max epoch>`` is written, so a finished
run keeps exactly the files Dassl keeps. On resume an unreadable newest file (truncated by a crash,
corrupt disk) is reported and the next older readable checkpoint is used instead.
Checkpoints written before named optimisers existed stored a second optimiser under
``extra.optim_<name>`` / ``extra.sched_<name>``; those load as the optimiser ``<name>``.
"""
import glob
import os
import os.path as osp
import re

from vlprompt.utils import load_checkpoint, save_checkpoint

from .rng import get_rng_state, set_rng_state
from vlprompt.errors import UserRuntimeError

__all__ = ["LAST_CHECKPOINT", "RUN_CONFIG_KEY", "Checkpointer", "checkpoint_candidates"]

LAST_CHECKPOINT = "model-last.pth.tar"
#: the checkpoint entry holding the effective config (a YAML string) of the run that wrote it
RUN_CONFIG_KEY = "run_config"
_EPOCH_FILE = re.compile(r"model\.pth\.tar-(\d+)$")


def _load_errors():
    errors = [RuntimeError, EOFError, OSError, ValueError]
    try:
        import pickle

        errors.append(pickle.UnpicklingError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def checkpoint_candidates(folder):
    """Checkpoint files of one model folder, newest first: the ``checkpoint`` pointer's file, then
    ``model-last.pth.tar``, then ``model.pth.tar-<N>`` by decreasing N (no duplicates)."""
    out = []
    pointer = osp.join(folder, "checkpoint")
    if osp.exists(pointer):
        with open(pointer) as f:
            first = f.readline().strip()
        if first:
            out.append(osp.join(folder, first))
    last = osp.join(folder, LAST_CHECKPOINT)
    if osp.exists(last):
        out.append(last)
    numbered = []
    for p in glob.glob(osp.join(folder, "model.pth.tar-*")):
        m = _EPOCH_FILE.search(osp.basename(p))
        if m:
            numbered.append((int(m.group(1)), p))
    out += [p for _, p in sorted(numbered, reverse=True)]
    seen, unique = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


class Checkpointer:
    """Saves and restores the state of a :class:`vlprompt.engine.TrainerBase`."""

    def __init__(self, trainer):
        self.trainer = trainer

    # ---- saving ------------------------------------------------------------------------------

    def _state(self, name, epoch, val_result, rng):
        t = self.trainer
        state = {
            "state_dict": t._models[name].state_dict(),
            "epoch": epoch + 1,
            "optimizer": None,
            "scheduler": None,
            "val_result": val_result,
            "rng_state": rng,
        }
        cfg = getattr(t, "cfg", None)
        if cfg is not None and hasattr(cfg, "dump"):
            state[RUN_CONFIG_KEY] = cfg.dump()
        named = {}
        for opt_name, (optim, sched, owner, primary) in t._optimizers.items():
            if owner != name:
                continue
            if primary:
                state["optimizer"] = optim.state_dict()
                state["scheduler"] = sched.state_dict() if sched is not None else None
            else:
                named[opt_name] = {"optimizer": optim.state_dict(),
                                   "scheduler": sched.state_dict() if sched is not None else None}
        if named:
            state["optimizers"] = named
        names = t.get_model_names()
        hooks = _stateful_hooks(t)
        if hooks and names and name == names[0]:
            state["hooks"] = {k: h.state_dict() for k, h in hooks.items()}
        return state

    def save(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Write every model's checkpoint for ``epoch`` (0-based; files record ``epoch + 1``)."""
        rng = get_rng_state()
        for name in self.trainer.get_model_names():
            state = self._state(name, epoch, val_result, rng)
            save_checkpoint(state, osp.join(directory, name), is_best=is_best, model_name=model_name)

    def save_last(self, epoch, directory):
        """Replace ``model-last.pth.tar`` of every model (the per-epoch resume point)."""
        self.save(epoch, directory, model_name=LAST_CHECKPOINT)

    def remove_last(self, directory):
        for name in self.trainer.get_model_names():
            path = osp.join(directory, name, LAST_CHECKPOINT)
            if osp.exists(path):
                os.remove(path)

    def clear(self, directory):
        """Remove every checkpoint of the registered models in ``directory`` (``TRAIN.OVERWRITE``)."""
        removed = []
        for name in self.trainer.get_model_names():
            folder = osp.join(directory, name)
            for p in checkpoint_candidates(folder) + [osp.join(folder, "model-best.pth.tar"),
                                                      osp.join(folder, "checkpoint")]:
                if osp.exists(p):
                    os.remove(p)
                    removed.append(p)
        return removed

    # ---- resuming ----------------------------------------------------------------------------

    def _load_newest(self, folder):
        """(path, checkpoint) of the newest readable checkpoint in ``folder``, or (None, None)."""
        errors = _load_errors()
        for path in checkpoint_candidates(folder):
            if not osp.exists(path):
                print(f'Checkpoint "{path}" (named in {osp.join(folder, "checkpoint")}) is missing; '
                      "trying an older one")
                continue
            try:
                ckpt = load_checkpoint(path)
                if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "epoch" not in ckpt:
                    raise ValueError("it holds no state_dict/epoch")
            except errors as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                print(f'Checkpoint "{path}" is unreadable ({reason}); trying an older one')
                continue
            return path, ckpt
        return None, None

    def resume(self, directory):
        """Restore models, optimisers, schedulers, hooks and RNG states from the newest readable
        checkpoint in ``directory``; returns the epoch to start from (0: nothing to resume)."""
        t = self.trainer
        names = t.get_model_names()
        if not names or not all(checkpoint_candidates(osp.join(directory, n)) for n in names):
            print("No checkpoint found, train from scratch")
            return 0
        loaded = {}
        for name in names:
            path, ckpt = self._load_newest(osp.join(directory, name))
            if ckpt is None:
                print(f"No readable checkpoint of {name} in {directory}, train from scratch")
                return 0
            loaded[name] = (path, ckpt)
        epochs = {n: int(c["epoch"]) for n, (_, c) in loaded.items()}
        if len(set(epochs.values())) > 1:
            raise UserRuntimeError(
                f"Cannot resume from {directory}: the models' newest readable checkpoints are from different "
                f"epochs {epochs}; remove the newer files or start a fresh run in another output directory"
            )
        print(f"Found checkpoint at {directory} (will resume training)")
        rng = None
        for name, (path, ckpt) in loaded.items():
            print(f'Loading checkpoint from "{path}"')
            t._models[name].load_state_dict(ckpt["state_dict"])
            print("Loaded model weights")
            self._restore_optimizers(name, ckpt, path)
            if "hooks" in ckpt:
                self._restore_hooks(ckpt["hooks"], path)
            rng = ckpt.get("rng_state", rng)
        required = [k for k, h in _stateful_hooks(t).items() if not h.OPTIONAL_STATE]
        if required and not any("hooks" in c for _, c in loaded.values()):
            raise UserRuntimeError(
                f"Cannot resume from {directory}: this method keeps state in hooks {required}, but the "
                "checkpoint holds none (written by another trainer or version); start a fresh run in another "
                "output directory"
            )
        if rng is not None:
            set_rng_state(rng)
        start_epoch = next(iter(epochs.values()))
        print(f"Previous epoch: {start_epoch}")
        return start_epoch

    def _restore_optimizers(self, name, ckpt, path):
        t = self.trainer
        named = dict(ckpt.get("optimizers") or {})
        extra = ckpt.get("extra") or {}
        for opt_name, (optim, sched, owner, primary) in t._optimizers.items():
            if owner != name:
                continue
            if primary:
                opt_state, sched_state = ckpt.get("optimizer"), ckpt.get("scheduler")
            elif opt_name in named:
                opt_state, sched_state = named[opt_name]["optimizer"], named[opt_name]["scheduler"]
            elif f"optim_{opt_name}" in extra:  # checkpoints written before named optimisers
                opt_state, sched_state = extra[f"optim_{opt_name}"], extra.get(f"sched_{opt_name}")
            else:
                raise UserRuntimeError(
                    f'Cannot resume from "{path}": it holds no state for the optimiser "{opt_name}" (saved by '
                    "another trainer or an older version); start a fresh run in another output directory"
                )
            if opt_state is not None:
                optim.load_state_dict(opt_state)
                print(f"Loaded optimizer{'' if primary else ' ' + opt_name}")
            if (sched is None) != (sched_state is None):
                raise UserRuntimeError(
                    f'Cannot resume from "{path}": the optimiser "{opt_name}" had '
                    f"{'no' if sched_state is None else 'a'} LR scheduler there, and this run has "
                    f"{'one' if sched is not None else 'none'} (was the config changed?); start a fresh run"
                )
            if sched is not None:
                sched.load_state_dict(sched_state)
                print(f"Loaded scheduler{'' if primary else ' ' + opt_name}")

    def _restore_hooks(self, states, path):
        hooks = _stateful_hooks(self.trainer)
        missing = [k for k, h in hooks.items() if k not in states and not h.OPTIONAL_STATE]
        if missing:
            raise UserRuntimeError(f'Cannot resume from "{path}": no state for the hooks {missing}; start a fresh run')
        for k, h in hooks.items():
            if k in states:
                h.load_state_dict(states[k])


def _stateful_hooks(trainer):
    """``{name: hook}`` of the trainer's hooks whose state goes into checkpoints, in hook order."""
    return {k: h for k, h in trainer._hooks.items() if h.stateful}
