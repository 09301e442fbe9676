"""Local job runner: one process per slot (a GPU via CUDA_VISIBLE_DEVICES, or a CPU slot).

Runs whose ``results.json`` exists are skipped, so a crashed sweep resumes where it stopped. A run
that depends on another (a test on its train run) starts only after that one succeeded or was
already complete; if it failed, the dependent is reported as skipped. One failure never stops the
other jobs. stdout and stderr of each job go to ``<log_dir>/<run path>.log`` (appended, with a header
per attempt).

Stopping: every job runs in its own session (process group), so a Ctrl-C in the terminal reaches only
the sweep. On SIGINT, SIGTERM or SIGHUP the runner stops every running job's whole process group --
SIGINT first, then SIGTERM, then SIGKILL, each after ``grace`` seconds -- writes the status file, and
returns ``128 + signal`` (130 for Ctrl-C). A runner that cannot catch its end (SIGKILL: the OOM killer,
``timeout -s KILL``) still takes its jobs with it: on Linux each job gets SIGTERM when the runner dies
(``PR_SET_PDEATHSIG``), so it unwinds as on any SIGTERM (lock released, checkpoints kept). A job whose
output folder is still held by a live process (an orphan of an earlier sweep on a system without
``PR_SET_PDEATHSIG``, or the same run started by hand) is not started: the runner says so and waits
for that process; if it finished the run, the job counts as complete, else the job starts (and
resumes from the checkpoints). A failed job's summary line names its own ``Error:`` line. A closed stdout (``sweep | tee log`` with tee gone) never
stops this: the progress lines then go nowhere and the final message goes to stderr when it can.
"""
import ctypes
import ctypes.util
import json
import os
import os.path as osp
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..protocol.tree import discard_lone_run_note

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["Slot", "JobState", "Runner", "SweepInterrupted", "gpu_slots", "cpu_slots", "default_prefix", "log_path"]


@dataclass(frozen=True)
class Slot:
    name: str  # "gpu0", "cpu1"
    gpu: Optional[str] = None  # CUDA_VISIBLE_DEVICES value, None: environment untouched


def gpu_slots(spec):
    """'0,1,3' -> one slot per GPU id (ids must be distinct)."""
    ids = [g.strip() for g in str(spec).split(",") if g.strip()]
    if not ids:
        raise ValueError(f"--gpus needs GPU ids such as 0,1,2,3; got '{spec}'")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus lists a GPU twice: '{spec}' (one job per GPU at a time)")
    return [Slot(name=f"gpu{g}", gpu=g) for g in ids]


def cpu_slots(n):
    if int(n) < 1:
        raise ValueError(f"--jobs must be at least 1, got {n}")
    return [Slot(name=f"cpu{i}") for i in range(int(n))]


def default_prefix():
    return [sys.executable, "train.py"]


def log_path(run, log_dir, output_root):
    rel = osp.relpath(run.output_dir, output_root)
    if rel.startswith(".."):
        rel = run.output_dir.strip(os.sep).replace(os.sep, "__")
    return osp.join(log_dir, rel + ".log")


@dataclass
class JobState:
    run: object
    status: str = "pending"  # pending | complete | running | ok | failed | skipped | interrupted
    slot: Optional[Slot] = None
    rc: Optional[int] = None
    start: Optional[float] = None
    end: Optional[float] = None
    log: Optional[str] = None
    reason: str = ""
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)
    index: int = 0
    log_offset: int = 0  # where this attempt's output starts in ``log``
    held_by: Optional[tuple] = None  # (pid, command) of a live process holding the output folder


class SweepInterrupted(KeyboardInterrupt):
    """A stop signal received by the sweep (``signum``: the signal)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupt(signum, frame):
    raise SweepInterrupted(signum)


_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _write(stream, text):
    """Write and flush; False when the stream is gone (broken pipe, closed)."""
    try:
        stream.write(text)
        stream.flush()
        return True
    except (BrokenPipeError, OSError, ValueError):
        return False


def _fmt_secs(s):
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def _tail_since(path, offset, n=5):
    """The last ``n`` lines of ``path`` written after byte ``offset`` (this attempt's output)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(offset, os.path.getsize(path) - 4096))
            return f.read().decode("utf-8", "replace").splitlines()[-n:]
    except OSError:
        return []


def _error_line(path, offset):
    """The last ``Error: ...`` line that this attempt wrote into its log (train.py's one-line reason)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return ""
    errors = [ln.strip() for ln in text.splitlines() if ln.startswith("Error: ")]
    return errors[-1] if errors else ""


# the lock file of vlprompt.utils.lock (not imported: that package imports torch, the sweep does not)
_LOCK_NAME = ".vlprompt.lock"


def lock_holder(output_dir):
    """``(pid, command)`` of a live process holding ``output_dir``'s run lock (train.py's exclusive
    ``flock``), or None. A dead holder's stale lock file is not held (the kernel released it)."""
    path = osp.join(output_dir, _LOCK_NAME)
    if fcntl is None or not osp.isfile(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            try:
                owner = json.loads(os.read(fd, 65536).decode("utf-8", "replace") or "{}")
            except (OSError, ValueError):
                owner = {}
            owner = owner if isinstance(owner, dict) else {}
            return owner.get("pid"), owner.get("command")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover
        return None


def die_with_parent():
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux
    ``PR_SET_PDEATHSIG``; even on SIGKILL), or None where that does not exist. Only async-signal-safe
    calls run in the child (libc is loaded here, before the fork)."""
    libc = _libc()
    if libc is None:
        return None
    parent = os.getpid()
    sig = int(signal.SIGTERM)

    def preexec():
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), sig)

    return preexec


class Runner:
    """Run a plan on slots. ``run()`` returns the process exit status (0: nothing failed)."""

    def __init__(self, runs, data_root, slots, *, output_root, log_dir=None, prefix=None, cwd=None,
                 poll=0.2, stream=None, env=None, grace=10.0, err=None):
        self.data_root = data_root
        self.slots = list(slots)
        self.output_root = osp.abspath(output_root)
        self.log_dir = osp.abspath(log_dir or osp.join(self.output_root, "sweep_logs"))
        self.prefix = list(prefix or default_prefix())
        self.cwd = cwd
        self.poll = poll
        self.stream = stream or sys.stdout
        self.err = err or sys.stderr
        self.grace = float(grace)
        self.env = dict(os.environ if env is None else env)
        self.jobs: Dict[str, JobState] = {}
        for i, r in enumerate(runs):
            self.jobs[r.key] = JobState(run=r, index=i + 1)
        self.total = len(self.jobs)
        self._preexec = die_with_parent()

    # ---------------------------------------------------------------- output
    def _out(self, text):
        if self.stream is not None and not _write(self.stream, text):
            # stdout went away (a pipe whose reader died): keep running, say it once on stderr
            self.stream = None
            self._note("stdout is closed (broken pipe); the sweep goes on, see the job logs and sweep_status.json")

    def _note(self, text):
        if self.err is not None and not _write(self.err, text + "\n"):
            self.err = None

    def _say(self, msg):
        self._out(f"[{time.strftime('%H:%M:%S')}] {msg}\n")

    def _counts(self):
        c = {}
        for j in self.jobs.values():
            c[j.status] = c.get(j.status, 0) + 1
        return c

    def _progress(self):
        c = self._counts()
        done = c.get("ok", 0) + c.get("complete", 0)
        return (f"{done}/{self.total} done, {c.get('running', 0)} running, {c.get('failed', 0)} failed, "
                f"{c.get('skipped', 0)} skipped, {c.get('pending', 0)} pending")

    # ---------------------------------------------------------------- scheduling
    def _dep_state(self, job):
        dep = job.run.depends_on
        if dep is None:
            return "ready"
        d = self.jobs.get(dep)
        if d is None:  # not in this sweep: fine if it completed earlier
            return "ready" if osp.isfile(osp.join(dep, "results.json")) else "missing"
        if d.status in ("ok", "complete"):
            return "ready"
        if d.status in ("failed", "skipped", "interrupted"):
            return "broken"
        return "wait"

    def _start(self, job, slot):
        run = job.run
        job.log = log_path(run, self.log_dir, self.output_root)
        os.makedirs(osp.dirname(job.log), exist_ok=True)
        cmd = run.command(self.data_root, self.prefix)
        env = dict(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        logf = open(job.log, "a")
        where = f"CUDA_VISIBLE_DEVICES={slot.gpu} " if slot.gpu is not None else ""
        logf.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} on {slot.name}\n$ {where}{shlex.join(cmd)}\n")
        logf.flush()
        try:
            job.log_offset = logf.tell()
            job.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=self._preexec)
        except OSError as e:
            logf.write(f"could not start: {e}\n")
            logf.close()
            job.status, job.rc, job.reason = "failed", None, f"could not start: {e}"
            job.start = job.end = time.time()
            self._say(f"FAIL  [{job.index}/{self.total}] {run.describe()}  ({job.reason})  | {self._progress()}")
            return False
        job._logf = logf
        job.status, job.slot, job.start = "running", slot, time.time()
        self._say(f"START [{job.index}/{self.total}] {slot.name:5s} {run.describe()}  log: {job.log}  "
                  f"| {self._progress()}")
        return True

    def _finish(self, job, rc):
        job.rc, job.end = rc, time.time()
        job._logf.close()
        took = _fmt_secs(job.end - job.start)
        if rc == 0:
            job.status = "ok"
            note = "" if job.run.is_complete() else "  (warning: exit 0 but no results.json)"
            self._say(f"OK    [{job.index}/{self.total}] {job.slot.name:5s} {job.run.describe()}  {took}{note}  "
                      f"| {self._progress()}")
        else:
            job.status = "failed"
            discard_lone_run_note(job.run.output_dir)  # a refused job leaves its folder as it found it
            error = _error_line(job.log, job.log_offset)
            job.reason = f"exit status {rc}" + (f": {error}" if error else "")
            self._say(f"FAIL  [{job.index}/{self.total}] {job.slot.name:5s} {job.run.describe()}  {took}  "
                      f"exit {rc}, log: {job.log}  | {self._progress()}")
        job.proc = None

    def _skip_broken(self):
        changed = True
        while changed:
            changed = False
            for job in self.jobs.values():
                if job.status != "pending":
                    continue
                st = self._dep_state(job)
                if st in ("broken", "missing"):
                    job.status = "skipped"
                    job.reason = ("dependency failed or was skipped: " if st == "broken"
                                  else "dependency not in this sweep and not complete: ") + job.run.depends_on
                    self._say(f"SKIP  [{job.index}/{self.total}] {job.run.describe()}  ({job.reason})  "
                              f"| {self._progress()}")
                    changed = True

    def run(self):
        os.makedirs(self.log_dir, exist_ok=True)
        for job in self.jobs.values():
            if job.run.is_complete():
                job.status = "complete"
        main = threading.current_thread() is threading.main_thread()
        old_handlers = {}
        if main:
            # jobs run in their own sessions (so that a job's whole process tree can be stopped), so a
            # signal to the sweep (Ctrl-C, kill, Slurm, a closed terminal) must stop them explicitly
            old_handlers = {s: signal.signal(s, _raise_interrupt) for s in _STOP_SIGNALS}
        try:
            c = self._counts()
            self._say(f"sweep: {self.total} runs, {c.get('complete', 0)} already complete, "
                      f"{c.get('pending', 0)} to run on {len(self.slots)} slot(s) "
                      f"({', '.join(s.name for s in self.slots)}); logs in {self.log_dir}")
            self._loop()
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", signal.SIGINT)
            if main:  # a second Ctrl-C must not abandon the jobs half-stopped
                for s in _STOP_SIGNALS:
                    signal.signal(s, signal.SIG_IGN)
            name = signal.Signals(signum).name
            running = [j for j in self.jobs.values() if j.proc is not None]
            self._say(f"interrupted ({name}): stopping {len(running)} running job(s)")
            self._stop(running)
            self._summary()
            self._note(f"sweep interrupted by {name}: stopped {len(running)} running job(s); run the same "
                       f"command again to resume (finished runs are skipped)")
            return 128 + int(signum)
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
        return self._summary()

    def _loop(self):
        free = list(self.slots)
        running: List[JobState] = []
        while True:
            for job in list(running):  # reap
                rc = job.proc.poll()
                if rc is not None:
                    running.remove(job)
                    free.append(job.slot)
                    free.sort(key=self.slots.index)
                    self._finish(job, rc)
            self._skip_broken()
            waiting = False
            for job in self.jobs.values():  # start, in plan order
                if not free:
                    break
                if job.status == "pending" and self._dep_state(job) == "ready":
                    if self._held_elsewhere(job):
                        waiting = True
                        continue
                    if job.status != "pending":  # finished by the process we waited for
                        continue
                    slot = free.pop(0)
                    if self._start(job, slot):
                        running.append(job)
                    else:
                        free.insert(0, slot)
            self._skip_broken()
            if not running:
                pending = [j for j in self.jobs.values() if j.status == "pending"]
                if not pending:
                    break
                if not any(self._dep_state(j) == "ready" for j in pending):
                    for j in pending:  # waiting on nothing that can still finish (cannot happen for a valid plan)
                        j.status, j.reason = "skipped", f"dependency never ran: {j.run.depends_on}"
                    break
                if not waiting:
                    continue
            time.sleep(self.poll)

    def _held_elsewhere(self, job):
        """True while a live process (not one of ours) holds the job's output folder: say so once and
        wait. When it lets go, a job it finished becomes ``complete``; otherwise the job may start."""
        holder = lock_holder(job.run.output_dir)
        if holder is not None:
            if job.held_by is None:
                pid, command = holder
                job.held_by = holder
                self._say(f"WAIT  [{job.index}/{self.total}] {job.run.describe()}  (its output folder is in use "
                          f"by process {pid if pid is not None else '?'}"
                          f"{': ' + command if command else ''}; an earlier sweep's job? waiting for it to end)  "
                          f"| {self._progress()}")
            return True
        if job.held_by is not None:
            pid = job.held_by[0]
            job.held_by = None
            if job.run.is_complete():
                job.status = "complete"
                self._say(f"DONE  [{job.index}/{self.total}] {job.run.describe()}  (finished by process {pid})  "
                          f"| {self._progress()}")
        return False

    def _stop(self, jobs):
        """SIGINT, then SIGTERM, then SIGKILL to each job's process group, ``grace`` seconds apart."""
        live = list(jobs)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            for job in live:
                try:
                    os.killpg(job.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.time() + (self.grace if sig != signal.SIGKILL else 30.0)
            while time.time() < deadline and any(j.proc.poll() is None for j in live):
                time.sleep(0.05)
            live = [j for j in live if j.proc.poll() is None]
            if not live:
                break
        for job in jobs:
            try:  # stragglers of a group whose leader has exited (e.g. data-loader workers)
                os.killpg(job.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            job.proc.wait()
            job.status, job.rc, job.end = "interrupted", job.proc.returncode, time.time()
            job.reason = f"stopped by the sweep (exit {job.proc.returncode})"
            discard_lone_run_note(job.run.output_dir)
            job.proc = None
            logf = getattr(job, "_logf", None)
            if logf is not None and not logf.closed:
                logf.close()

    def states(self):
        return list(self.jobs.values())

    def _summary(self):
        c = self._counts()
        self._say(f"finished: {self._progress()}")
        failed = [j for j in self.jobs.values() if j.status in ("failed", "interrupted")]
        skipped = [j for j in self.jobs.values() if j.status == "skipped"]
        lines = []
        if failed:
            lines.append(f"\n{len(failed)} failed job(s):")
            for j in failed:
                lines.append(f"  FAILED  {j.run.describe()}  ({j.reason or j.status})\n          log: {j.log}")
                lines += [f"          | {line}" for line in (_tail_since(j.log, j.log_offset) if j.log else [])]
        if skipped:
            lines.append(f"\n{len(skipped)} job(s) skipped because a dependency did not succeed:")
            lines += [f"  SKIPPED {j.run.describe()}  ({j.reason})" for j in skipped]
        if lines:
            self._out("\n".join(lines) + "\n")
        status_file = osp.join(self.log_dir, "sweep_status.json")
        rows = [
            {"output_dir": j.run.output_dir, "protocol": j.run.protocol, "role": getattr(j.run, "role", ""),
             "phase": j.run.phase, "status": j.status, "rc": j.rc,
             "slot": j.slot.name if j.slot else None, "start": j.start, "end": j.end, "log": j.log,
             "reason": j.reason}
            for j in self.jobs.values()
        ]
        tmp = status_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"counts": c, "jobs": rows}, f, indent=1)
        os.replace(tmp, status_file)
        return 1 if (failed or skipped) else 0
