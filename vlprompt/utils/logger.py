"""stdout tee to ``OUTPUT_DIR/log.txt`` (Dassl's ``setup_logger``)."""
import os
import os.path as osp
import sys
import time

from .tools import mkdir_if_missing


class Logger:
    """Write to the console and to a file; ``flush`` fsyncs the file."""

    def __init__(self, fpath=None, console=None):
        self.console = console if console is not None else sys.stdout
        self.file = None
        self.fpath = fpath
        if fpath is not None:
            mkdir_if_missing(osp.dirname(osp.abspath(fpath)))
            self.file = open(fpath, "w")

    def __del__(self):
        self.close()

    def write(self, msg):
        self.console.write(msg)
        if self.file is not None:
            self.file.write(msg)

    def flush(self):
        self.console.flush()
        if self.file is not None and not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())

    def isatty(self):
        return False

    def close(self):
        if self.file is not None and not self.file.closed:
            self.file.close()

    @property
    def encoding(self):
        return getattr(self.console, "encoding", "utf-8")

    def fileno(self):
        return self.console.fileno()


def setup_logger(output=None):
    """Tee stdout into ``output`` (a .txt/.log path, or a directory holding ``log.txt``).

    An existing log file is never overwritten: a ``-YYYY-MM-DD-HH-MM-SS`` suffix is added.
    Returns the path written to.
    """
    if output is None:
        return None
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
        n = 1
        base = fpath
        while osp.exists(fpath):
            fpath = f"{base}-{n}"
            n += 1
    console = sys.stdout
    if isinstance(console, Logger):  # a second setup_logger in one process: do not nest tees
        console.close()
        console = console.console
    sys.stdout = Logger(fpath, console=console)
    return fpath


def restore_stdout():
    """Undo :func:`setup_logger` (used by tests and by runs embedded in a Python process)."""
    if isinstance(sys.stdout, Logger):
        logger = sys.stdout
        sys.stdout = logger.console
        logger.close()
