"""stdout tee to ``OUTPUT_DIR/log.txt`` (Dassl's ``setup_logger``).

The log file is line-buffered (every complete line reaches the file when it is printed, so
``tail -f log.txt`` follows a run and a killed run's log ends at its last line); ``flush`` also
fsyncs. With ``defer=True`` nothing is shown or written until :meth:`Logger.commit`: ``train.py``
holds the argument/config dump while it validates the inputs, so a refused run leaves no file.
"""
import os
import os.path as osp
import sys
import threading
import time

from .tools import default_file_mode, mkdir_if_missing


def _unique_log_path(fpath):
    """``fpath``, or ``fpath-YYYY-MM-DD-HH-MM-SS[-n]`` when it exists (a log is never overwritten)."""
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
        n = 1
        base = fpath
        while osp.exists(fpath):
            fpath = f"{base}-{n}"
            n += 1
    return fpath


class Logger:
    """Write to the console and to a file, line by line; ``flush`` fsyncs the file.

    ``defer=True``: keep everything in memory (console and file) until :meth:`commit` (which opens
    the file and replays it) or :meth:`discard` (which drops it; no file is created). With
    ``patience`` (seconds) a deferral that lasts longer commits by itself, so a slow start (reading a
    large dataset's split) is not silent.
    """

    def __init__(self, fpath=None, console=None, defer=False, patience=None):
        self.console = console if console is not None else sys.stdout
        self.file = None
        self.fpath = fpath
        self._lock = threading.RLock()
        self._pending = [] if defer else None
        self._timer = None
        if fpath is not None and not defer:
            self._open()
        if defer and patience is not None:
            self._timer = threading.Timer(patience, self.commit)
            self._timer.daemon = True
            self._timer.start()

    def _open(self):
        self.fpath = _unique_log_path(self.fpath)
        mkdir_if_missing(osp.dirname(osp.abspath(self.fpath)))
        # buffering=1: line-buffered text file (flushed at every newline)
        fd = os.open(self.fpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, default_file_mode())
        self.file = open(fd, "w", buffering=1)

    @property
    def deferred(self):
        return self._pending is not None

    def commit(self):
        """Show and write what was held back; from now on lines go straight through."""
        with self._lock:
            self._cancel_timer()
            if self._pending is None:
                return self.fpath
            pending, self._pending = self._pending, None
            if self.fpath is not None:
                self._open()
            self.write("".join(pending))
            return self.fpath

    def discard(self):
        """Drop what was held back (nothing is shown or written) and stop teeing to a file.
        After an automatic commit (``patience``) there is nothing left to drop: the log stays."""
        with self._lock:
            self._cancel_timer()
            if self._pending is not None:
                self._pending = None
                self.fpath = None

    def _cancel_timer(self):
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        self._timer = None

    def __del__(self):
        self.close()

    def write(self, msg):
        with self._lock:
            self._write(msg)

    def _write(self, msg):
        if self._pending is not None:
            self._pending.append(msg)
            return
        # the file first: a line seen on the console is already in log.txt
        if self.file is not None and not self.file.closed:
            self.file.write(msg)
        self.console.write(msg)
        if "\n" in msg:  # a piped stdout is block-buffered: push complete lines through
            try:
                self.console.flush()
            except (OSError, ValueError):
                pass

    def flush(self):
        with self._lock:
            if self._pending is not None:
                return
            self.console.flush()
            if self.file is not None and not self.file.closed:
                self.file.flush()
                os.fsync(self.file.fileno())

    def isatty(self):
        return False

    def close(self):
        self._cancel_timer()
        if self.file is not None and not self.file.closed:
            self.file.close()

    @property
    def encoding(self):
        return getattr(self.console, "encoding", "utf-8")

    def fileno(self):
        return self.console.fileno()


def setup_logger(output=None, defer=False, patience=None):
    """Tee stdout into ``output`` (a .txt/.log path, or a directory holding ``log.txt``).

    An existing log file is never overwritten: a ``-YYYY-MM-DD-HH-MM-SS`` suffix is added.
    With ``defer=True`` nothing is shown or written until ``sys.stdout.commit()`` (or ``patience``
    seconds have passed; see :class:`Logger`). Returns the path written to (``None`` while deferred: it is chosen at commit).
    """
    if output is None:
        return None
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    console = sys.stdout
    if isinstance(console, Logger):  # a second setup_logger in one process: do not nest tees
        console.close()
        console = console.console
    logger = Logger(fpath, console=console, defer=defer, patience=patience)
    sys.stdout = logger
    return None if defer else logger.fpath


def restore_stdout():
    """Undo :func:`setup_logger` (used by tests and by runs embedded in a Python process)."""
    if isinstance(sys.stdout, Logger):
        logger = sys.stdout
        sys.stdout = logger.console
        logger.close()
