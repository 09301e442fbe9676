"""One live writer per output folder: ``OUTPUT_DIR/.vlprompt.lock``.

``train.py`` holds :class:`OutputDirLock` around the whole run (rank 0 under torch.distributed).
The lock is an exclusive ``fcntl.flock`` on the lock file, which the kernel releases when the
holder exits in any way (including ``kill -9``), so a live holder is never mistaken for a dead
one and a dead one never blocks: the next run finds the file (with the dead process's pid and
host in it), takes the lock over and says so. The file is removed on a clean release.
"""
import json
import os
import os.path as osp
import socket
import time

from .errors import UserError, UserFileError
from .tools import mkdir_if_missing

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["OutputDirLock", "OutputDirLocked", "LOCK_NAME"]

LOCK_NAME = ".vlprompt.lock"


class OutputDirLocked(UserError, RuntimeError):
    """Another live process holds the output folder (``.pid``/``.host`` name it)."""

    def __init__(self, directory, pid=None, host=None, since=None, command=None):
        self.directory = directory
        self.pid = pid
        self.host = host
        who = f"process {pid}" if pid is not None else "another process"
        if host:
            who += f" on host {host}"
        when = f" since {since}" if since else ""
        what = f" ({command})" if command else ""
        stop = f" (kill {pid})" if pid is not None and host == socket.gethostname() else ""
        super().__init__(
            f"{directory} is in use by {who}{when}{what}: one run at a time writes into an output "
            f"folder. Nothing was changed. Wait for that run to finish, stop it{stop}, "
            "or use another --output-dir."
        )

    def __reduce__(self):
        return (type(self), (self.directory, self.pid, self.host))


def _read_owner(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536).decode("utf-8", "replace").strip()
        return json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}


class OutputDirLock:
    """Exclusive lock on ``directory`` (created if missing). Use as a context manager or call
    :meth:`acquire` / :meth:`release`. ``acquire`` raises :class:`OutputDirLocked` when a live
    process holds it, and prints a message when it takes over the lock of a dead process.

    ``created_dir`` tells whether ``acquire`` created ``directory`` (so a refused run can remove it).
    """

    def __init__(self, directory, command=None):
        self.directory = osp.abspath(directory)
        self.path = osp.join(self.directory, LOCK_NAME)
        self.command = command
        self._fd = None
        self.created_dir = False
        self.took_over = None
        self.takeover_message = ""

    @property
    def held(self):
        return self._fd is not None

    def acquire(self, quiet=False):
        """Take the lock; ``quiet=True`` leaves printing :attr:`takeover_message` to the caller."""
        if self._fd is not None:
            return self
        if fcntl is None:  # pragma: no cover
            return self
        self.created_dir = not osp.isdir(self.directory)
        while True:
            try:
                mkdir_if_missing(self.directory)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # a read-only place, a file in the way, a full disk: the user's folder
                raise UserFileError(
                    f'Cannot write into the output folder "{self.directory}" ({e.strerror or e}'
                    f'{": " + str(e.filename) if e.filename and e.filename != self.directory else ""}). '
                    "Choose a writable --output-dir."
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _read_owner(fd)
                os.close(fd)
                raise OutputDirLocked(self.directory, owner.get("pid"), owner.get("host"), owner.get("since"),
                                      owner.get("command")) from None
            # the holder may have unlinked the file between our open and our flock: retry on the new one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        owner = _read_owner(fd)
        if owner.get("pid") is not None and owner.get("pid") != os.getpid():
            self.took_over = owner
            self.takeover_message = (
                f"Taking over the stale lock {self.path} of process {owner.get('pid')} on host "
                f"{owner.get('host')} (since {owner.get('since')}), which is no longer running")
            if not quiet:
                print(self.takeover_message)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.command}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self):
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # still holding the flock: nobody else can be mid-acquire on it
        except OSError:
            pass
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass
