"""Sanity checks of a run's config: refuse runs that cannot mean what their results would claim.

``train.py`` calls :func:`check_run` after the config is merged and before anything is written. Each
check raises :class:`vlprompt.config.ConfigError` (one ``Error:`` line, exit 2) naming the key and what
to do. What is checked (docs/ENGINE.md, "What happens when things go wrong"):

* a training run with ``OPTIM.MAX_EPOCH < 1`` (it would record the untrained model's accuracy as a
  trained result);
* a training run with ``OPTIM.LR <= 0`` (nothing is learned);
* a training run whose every epoch is a warm-up epoch (``OPTIM.MAX_EPOCH <= OPTIM.WARMUP_EPOCH`` with a
  per-epoch schedule): it never trains at ``OPTIM.LR``, so e.g. CoOp with the toy recipe and one epoch
  equals zero-shot CLIP exactly;
* ``TEST.FINAL_MODEL`` / ``TEST.SPLIT`` values the engine does not know (a misspelt ``best_val`` or
  ``val`` would silently deploy the last-epoch model / evaluate on the test split).

Methods with nothing to train (``EVAL_ONLY``) and ``--eval-only`` / ``--no-train`` runs skip the
training checks. A K-shot request larger than some class's training images is not refused: the run
uses all of that class's images and results.json records the real numbers (``shots_per_class``).
"""
from . import ConfigError

__all__ = ["check_run", "FINAL_MODELS", "TEST_SPLITS"]

FINAL_MODELS = ("last_step", "best_val")
TEST_SPLITS = ("test", "val")


def _warmup_description(optim):
    if optim.WARMUP_TYPE == "constant":
        return f"a constant LR of OPTIM.WARMUP_CONS_LR {optim.WARMUP_CONS_LR}"
    return f"an LR rising linearly from OPTIM.WARMUP_MIN_LR {optim.WARMUP_MIN_LR} towards OPTIM.LR"


def check_run(cfg, training=True, trainer_trains=True, lr_schedule_unit="epoch"):
    """Raise :class:`ConfigError` for a run that cannot mean what its result would claim.

    ``training``: the run trains (not ``--eval-only`` / ``--no-train``); ``trainer_trains``: the
    method has something to train (not ``EVAL_ONLY``); ``lr_schedule_unit``: when the method steps its
    LR schedulers (``"epoch"``: the warm-up counts epochs; ``"iteration"``: the method's own budget).
    """
    if cfg.TEST.FINAL_MODEL not in FINAL_MODELS:
        raise ConfigError(
            f"TEST.FINAL_MODEL is {cfg.TEST.FINAL_MODEL!r}: it must be one of {list(FINAL_MODELS)} (any other "
            "value would silently deploy the last-epoch model).")
    if cfg.TEST.SPLIT not in TEST_SPLITS:
        raise ConfigError(
            f"TEST.SPLIT is {cfg.TEST.SPLIT!r}: it must be one of {list(TEST_SPLITS)} (any other value would "
            "silently evaluate on the test split).")
    if not (training and trainer_trains):
        return
    optim = cfg.OPTIM
    name = cfg.TRAINER.NAME or "this method"
    if optim.MAX_EPOCH < 1:
        raise ConfigError(
            f"OPTIM.MAX_EPOCH is {optim.MAX_EPOCH}: {name} would train for no epoch and record the untrained "
            "model's accuracy as a trained result. Set OPTIM.MAX_EPOCH to 1 or more, or evaluate a trained "
            "model with --eval-only --model-dir DIR (the zero-shot model: --trainer ZeroshotCLIP --eval-only).")
    if not optim.LR > 0:
        raise ConfigError(
            f"OPTIM.LR is {optim.LR}: {name} would learn nothing and record the untrained model's accuracy as a "
            "trained result. Set a positive OPTIM.LR.")
    if lr_schedule_unit == "epoch" and optim.WARMUP_EPOCH > 0 and optim.MAX_EPOCH <= optim.WARMUP_EPOCH:
        raise ConfigError(
            f"OPTIM.MAX_EPOCH {optim.MAX_EPOCH} <= OPTIM.WARMUP_EPOCH {optim.WARMUP_EPOCH}: every epoch of this "
            f"run would be a warm-up epoch ({_warmup_description(optim)}), so {name} would never train at "
            f"OPTIM.LR {optim.LR} and its result would not be what the config says. Set OPTIM.MAX_EPOCH above "
            f"{optim.WARMUP_EPOCH} (e.g. {optim.WARMUP_EPOCH + 1}), or add OPTIM.WARMUP_EPOCH 0 for a short run "
            "without warm-up.")
