"""Errors of the CLIP building blocks."""

__all__ = ["ArgError"]


class ArgError(ValueError):
    """A bad plain argument of a building block; ``arg`` names it (e.g. ``"depth"``).

    Blocks never name config keys: a trainer maps ``arg`` to its key (``CFG_ARGS``) in one place
    (:meth:`vlprompt.engine.clip_trainer.ClipPromptTrainer.custom_clip`).
    """

    def __init__(self, arg, message):
        super().__init__(f"{arg}: {message}")
        self.arg = arg
        self.message = message
