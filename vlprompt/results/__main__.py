import os
import sys

from vlprompt.errors import run_cli
from vlprompt.protocol.backbones import BackboneError
from vlprompt.protocol.tree import TreeError

from .cli import main

if __name__ == "__main__":
    try:
        sys.exit(run_cli(main, user_errors=(TreeError, BackboneError)))
    except BrokenPipeError:  # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
