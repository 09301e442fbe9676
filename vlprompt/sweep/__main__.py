import os
import sys

from vlprompt.errors import run_cli
from vlprompt.protocol.backbones import BackboneError
from vlprompt.protocol.tree import TreeError

from .cli import main
from .protocols import SweepError


def _quiet_stdout():
    """Point a broken stdout at /dev/null so that the exit status is ours, not 120 from a failed flush."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError, ValueError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    try:
        rc = run_cli(main, user_errors=(SweepError, TreeError, BackboneError))
    except BrokenPipeError:  # output piped into head & co. while planning
        rc = 1
    _quiet_stdout()
    sys.exit(rc)
