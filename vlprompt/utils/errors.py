"""Error classes for the user's mistakes (printed as one ``Error:`` line, exit status 2).

The base class :class:`UserError` and the command-line boundary live in the torch-free
:mod:`vlprompt.errors`; this module adds the classes of the engine's own layers. Every class here
mixes :class:`UserError` into the builtin exception that code has always caught
(``FileNotFoundError``, ``OSError``, ``ValueError``, ``RuntimeError``), so existing ``except``
clauses keep working while the command line can tell a mistake in the inputs from a bug.
"""
from vlprompt.errors import InvalidValueError, UserError, UserFileError, UserPathNotFoundError, UserRuntimeError

__all__ = [
    "UserError",
    "InvalidValueError",
    "UserFileError",
    "UserPathNotFoundError",
    "UserRuntimeError",
    "DataNotFoundError",
    "ImageReadError",
    "UnknownNameError",
    "CheckpointError",
]


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset folder, split file or listed image that does not exist (the message names it)."""


class ImageReadError(UserError, OSError):
    """An image file that cannot be decoded (truncated, not an image); the message names the file."""


class UnknownNameError(UserError, ValueError):
    """A registry name (trainer, dataset, sampler, ...) that is not registered."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, truncated, corrupt or unsafe to load; ``.path`` names it."""

    def __init__(self, path, message):
        super().__init__(message)
        self.path = path

    def __reduce__(self):  # picklable (DataLoader workers, multiprocessing)
        return (type(self), (self.path, str(self)))
