"""The user's mistakes, as one exception type, and the one command-line boundary that prints them.

Torch-free and import-free (the lowest layer of vlprompt): every command line (``train.py``,
``python -m vlprompt.sweep``, ``vlprompt.results``, ``vlprompt.data.doctor``,
``vlprompt.data.download``) and every library layer may import it.

The rule, by construction:

* The library raises a :class:`UserError` (or a subclass) for a mistake in the user's inputs: a
  config file, key or value, a name, a path, a data or weight file, an output folder. The message
  names the file / key and says what to do.
* :func:`run_cli` (the boundary) turns a :class:`UserError` into ONE line ``Error: <message>`` on
  stderr and exit status 2. Every other exception is a bug and keeps its traceback.

The subclasses mix :class:`UserError` into the builtin exception that code has always caught
(``ValueError``, ``FileNotFoundError``, ``OSError``, ``RuntimeError``), so ``except ValueError``
clauses written before keep working.
"""
import os
import sys

__all__ = [
    "UserError",
    "InvalidValueError",
    "UserFileError",
    "UserPathNotFoundError",
    "UserRuntimeError",
    "error_line",
    "report_user_error",
    "run_cli",
]

#: exit status of a refused command (a mistake in the inputs); argparse uses it too
USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem with the user's inputs (files, names, folders, config values), not a bug in vlprompt."""


class InvalidValueError(UserError, ValueError):
    """A config value, option or name the user gave that is not allowed (the message lists the choices)."""


class UserFileError(UserError, OSError):
    """A file or folder the user named that cannot be read or written (the message names it)."""


class UserPathNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named that does not exist (the message names it)."""


class UserRuntimeError(UserError, RuntimeError):
    """A request that cannot be carried out as given (e.g. a checkpoint of another method)."""


def _debug_requested(argv=()):
    return "--debug" in (argv or ()) or os.environ.get("VLPROMPT_DEBUG", "") not in ("", "0")


def error_line(e):
    """``Error: <message>`` for a user error: the message's own lines, never a traceback."""
    msg = str(e).strip()
    if isinstance(e, OSError) and e.strerror and e.filename and not msg.startswith(e.strerror + ":"):
        if type(e).__str__ is OSError.__str__:  # FileNotFoundError(errno, text, path) -> text: "path"
            msg = f'{e.strerror}: "{e.filename}"'
    if msg.startswith("Error: "):
        msg = msg[len("Error: "):]
    return f"Error: {msg}"


def report_user_error(e, file=None):
    """Print :func:`error_line` of ``e`` on ``file`` (stderr) and return the exit status 2."""
    print(error_line(e), file=file or sys.stderr)
    return USER_ERROR_EXIT


def run_cli(main, argv=None, user_errors=()):
    """Call ``main(argv)`` and return its exit status; a :class:`UserError` (or one of ``user_errors``,
    the exception types of a layer that cannot import this module's classes) becomes one ``Error:``
    line and status 2. Anything else propagates (a bug: the traceback is the report). ``--debug`` in
    ``argv`` or ``VLPROMPT_DEBUG=1`` re-raises user errors too, for their traceback."""
    try:
        return main(argv)
    except (UserError,) + tuple(user_errors) as e:
        if _debug_requested(sys.argv[1:] if argv is None else argv):
            raise
        return report_user_error(e)
