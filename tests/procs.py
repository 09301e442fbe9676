"""Real Python processes for the tests, started from an interpreter that has already imported torch.

Some tests start ``python train.py`` / ``python -c RUNNER`` processes on purpose (kill them with real signals,
hold a lock, check what a user sees on stderr). Each such process spends ~6 s of CPU importing torch,
torchvision (which imports ``torch._dynamo``), open_clip and the project before it does anything, which is a
large part of the suite's time on 2 cores. :func:`popen` and :func:`run` start the same processes from a
*fork server*: one helper process per test worker that imports those modules once, then forks a child per
request. The child is a real process with its own pid, exit status, signals, cwd, environment, argv and
stdin/stdout/stderr (passed as file descriptors over a Unix socket); it runs the script, ``-c`` code or ``-m``
module as the interpreter would (``__main__``, ``sys.path[0]``, ``PYTHONPATH``, ``PYTHONUNBUFFERED``,
``SystemExit`` codes, a traceback and status 1 for an uncaught exception, death by SIGINT for an uncaught
KeyboardInterrupt, non-daemon threads joined and ``atexit`` run at exit).

What it cannot reproduce it does not pretend to: a request with interpreter options (``-X``, ``-u``, ...), or an
environment whose ``PYTHON*`` variables differ from the server's in a way that acts at interpreter start-up
(``PYTHONHASHSEED``, ``PYTHONWARNINGS``, ...), runs as a plain ``subprocess`` instead. ``VLPROMPT_TEST_NO_FORKSERVER=1``
runs every request as a plain subprocess (to check that a test does not depend on the server).
The one difference that remains: the child's parent is the server, not the test (a test signals it by pid
and learns its exit status through the socket, as ``subprocess.Popen`` would).

For processes that the code under test starts itself (a sweep's jobs, scripts/run.sh's planner), :func:`command`
/ :func:`executable` give an interpreter command that runs its arguments the same way: a small process that
forwards the signals it gets to the child and exits as the child did (a SIGKILL of it would leave the child
running: not for tests that kill jobs). Tests that check what a fresh interpreter has imported (that a module
does not pull in torch) keep plain subprocesses. ``tests/test_procs.py`` compares the two ways.
"""
import json
import os
import os.path as osp
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# PYTHON* variables whose effect the child reproduces at fork time; any other difference falls back
_EMULATED = {"PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
SOCKET_ENV = "VLPROMPT_TEST_FORKSERVER"
_PRELOAD = ("torch", "torchvision", "open_clip", "vlprompt.engine", "vlprompt.sweep", "vlprompt.results")


# ------------------------------------------------------------------------------------------------
# client
# ------------------------------------------------------------------------------------------------


def _acts_at_start(key):
    """An environment variable the interpreter reads at start-up (``PYTHON*``; not a script's ``PYTHON=``)."""
    return key.startswith("PYTHON") and key != "PYTHON"


class _Server:
    """The fork server of this process (started on first use, stopped when this process exits); its socket's
    path is exported as ``VLPROMPT_TEST_FORKSERVER`` for the ``--exec`` command (:func:`command`)."""

    def __init__(self, path=None):
        if path is not None:  # a server that another process started (the --exec command)
            self.path, self.proc = path, None
            with open(osp.join(osp.dirname(path), "env.json")) as f:
                self.env = json.load(f)
            return
        self.dir = tempfile.mkdtemp(prefix="vlprompt_forkserver_")
        self.path = osp.join(self.dir, "sock")
        self.env = dict(os.environ)
        # stdin is the server's lifeline: it exits when this process closes the pipe (or dies); its own stderr
        # goes to a file (not to whatever the test that started it was capturing)
        log = osp.join(self.dir, "server.log")
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, osp.abspath(__file__), self.path], cwd=ROOT, env=self.env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            with open(log) as f:
                raise RuntimeError(f"the test fork server did not start (status {self.proc.poll()}):\n{f.read()}")
        with open(osp.join(self.dir, "env.json"), "w") as f:
            json.dump({k: v for k, v in self.env.items() if _acts_at_start(k)}, f)
        os.environ[SOCKET_ENV] = self.path

    def can_serve(self, args, env):
        if not args or (args[0].startswith("-") and args[0] not in ("-c", "-m")):
            return False
        keys = {k for k in set(env) | set(self.env) if _acts_at_start(k)} - _EMULATED
        return all(env.get(k) == self.env.get(k) for k in keys)

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


_server = None
_executable_dir = None
_server_lock = threading.Lock()


def _get_server():
    global _server
    with _server_lock:
        if _server is None or _server.proc.poll() is not None:
            _server = _Server()
            import atexit

            atexit.register(_server.stop)
        return _server


class ForkedProcess:
    """The part of ``subprocess.Popen``'s interface the tests use, for a child of the fork server."""

    def __init__(self, args, conn, stdout, stderr):
        self.args = args
        self._conn = conn
        self._buf = b""
        self.stdout, self.stderr = stdout, stderr
        self.returncode = None
        self.pid = int(self._line(None))

    def _line(self, timeout):
        self._conn.settimeout(timeout)
        while b"\n" not in self._buf:
            chunk = self._conn.recv(64)
            if not chunk:
                raise RuntimeError("the test fork server closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def _status(self, timeout):
        """The child's exit status (read once from the socket); ``socket.timeout`` while it runs."""
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(int(self._line(timeout)))
            self._conn.close()
        return self.returncode

    def poll(self):
        try:
            return self._status(0.0)
        except (BlockingIOError, socket.timeout):
            return None

    def wait(self, timeout=None):
        try:
            return self._status(timeout)
        except socket.timeout:
            raise subprocess.TimeoutExpired(self.args, timeout) from None

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout=None):
        got = {}

        def drain(name, f):
            got[name] = f.read()

        readers = [threading.Thread(target=drain, args=(n, f), daemon=True)
                   for n, f in (("stdout", self.stdout), ("stderr", self.stderr)) if f is not None]
        for t in readers:
            t.start()
        self.wait(timeout)
        for t in readers:
            t.join()
        for f in (self.stdout, self.stderr):
            if f is not None:
                f.close()
        return got.get("stdout"), got.get("stderr")


def popen(args, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False, start_new_session=False,
          _server_obj=None):
    """``subprocess.Popen([sys.executable, *args], ...)`` through the fork server (see the module's text).
    ``stdout``/``stderr``: None (inherit), ``subprocess.PIPE``, ``subprocess.DEVNULL``, ``subprocess.STDOUT``
    (stderr only) or a file object."""
    args = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    server = None if os.environ.get("VLPROMPT_TEST_NO_FORKSERVER") else (_server_obj or _get_server())
    if server is None or not server.can_serve(args, env):
        return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                                text=text, start_new_session=start_new_session)
    to_close, mine = [], {}

    def child_fd(spec, name, default):
        if spec is None:
            return default
        if spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            to_close.append(fd)
            return fd
        if spec == subprocess.PIPE:
            r, w = os.pipe()
            to_close.append(w)
            mine[name] = open(r, "r" if text else "rb", **({"encoding": "utf-8", "errors": "strict"} if text else {}))
            return w
        return spec if isinstance(spec, int) else spec.fileno()

    fds = [child_fd(stdin, "stdin", 0), child_fd(stdout, "stdout", 1)]
    fds.append(fds[1] if stderr == subprocess.STDOUT else child_fd(stderr, "stderr", 2))
    request = json.dumps({"args": args, "cwd": osp.abspath(cwd or os.getcwd()), "env": env,
                          "new_session": bool(start_new_session)}).encode()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(server.path)
        socket.send_fds(conn, [struct.pack("!Q", len(request))], fds)
        conn.sendall(request)
    finally:
        for fd in to_close:
            os.close(fd)
    return ForkedProcess(args, conn, mine.get("stdout"), mine.get("stderr"))


def run(args, *, cwd=None, env=None, capture_output=False, text=False, timeout=None, check=False, stdout=None,
        stderr=None, start_new_session=False):
    """``subprocess.run([sys.executable, *args], ...)`` through the fork server."""
    if capture_output:
        stdout = stderr = subprocess.PIPE
    p = popen(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text, start_new_session=start_new_session)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise
    cp = subprocess.CompletedProcess([sys.executable, *args], p.returncode, out, err)
    if check:
        cp.check_returncode()
    return cp


def command():
    """An interpreter command (a list: ``[sys.executable, procs.py, "--exec"]``) that runs its arguments as
    ``python ARGS`` would, through this process's fork server, for commands that the code under test starts
    itself (a sweep's ``--command``): it forwards the signals it gets to the child and exits as the child did.
    Only for tests that do not SIGKILL it: the child would outlive it."""
    if not os.environ.get("VLPROMPT_TEST_NO_FORKSERVER"):
        _get_server()
    return [sys.executable, osp.abspath(__file__), "--exec"]


def executable():
    """:func:`command` as one executable file (for a ``PYTHON=`` interpreter variable, as scripts/run.sh takes)."""
    import shlex

    global _executable_dir
    if _executable_dir is None:
        _executable_dir = tempfile.mkdtemp(prefix="vlprompt_forkserver_exec_")
    path = osp.join(_executable_dir, "python-forkserver")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec {shlex.join(command())} "$@"\n')
    os.chmod(path, 0o755)
    return path


def _exec(args):
    """The ``--exec`` command: run ``args`` in a child of the fork server named by the environment (a plain
    ``python`` where there is none, or where it cannot reproduce the request), forward signals, exit as it did."""
    path = os.environ.get(SOCKET_ENV)
    server = _Server(path) if path and osp.exists(path) else None
    if server is None or os.environ.get("VLPROMPT_TEST_NO_FORKSERVER") or not server.can_serve(args, os.environ):
        os.execv(sys.executable, [sys.executable, *args])
    p = popen(args, _server_obj=server)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda s, _frame: p.send_signal(s))
    rc = p.wait()
    if rc < 0:
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    sys.exit(rc)


# ------------------------------------------------------------------------------------------------
# server
# ------------------------------------------------------------------------------------------------


def _recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _exit_status_of(e):
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _report(exc_type, exc, tb):
    """Python's report of an uncaught exception, without the frames of this module and runpy above the code."""
    import runpy

    ours = {osp.abspath(__file__), osp.abspath(runpy.__file__)}
    while tb is not None and osp.abspath(tb.tb_frame.f_code.co_filename) in ours:
        tb = tb.tb_next
    sys.excepthook(exc_type, exc.with_traceback(tb), tb)


def _become(req, fds, base_path):
    """In the forked child: take the request's stdio, cwd, environment and argv, run it, exit as Python would."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    if req["new_session"]:
        os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    if os.environ.get("PYTHONUNBUFFERED"):
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    args = req["args"]
    import builtins
    import runpy
    import types

    status, interrupted = 0, False
    try:
        try:
            if args[0] == "-c":
                sys.argv = ["-c", *args[2:]]
                sys.path[:] = ["", *extra, *base_path]
                main = types.ModuleType("__main__")
                main.__dict__["__builtins__"] = builtins
                sys.modules["__main__"] = main
                exec(compile(args[1], "<string>", "exec"), main.__dict__)
            elif args[0] == "-m":
                sys.argv = [args[1], *args[2:]]
                sys.path[:] = [os.getcwd(), *extra, *base_path]
                if not hasattr(sys.modules.get(args[1]), "__path__"):  # a preloaded module, not a package:
                    sys.modules.pop(args[1], None)  # run afresh, as `python -m` would (and without runpy's warning)
                runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            else:
                script = osp.abspath(args[0])
                sys.argv = [args[0], *args[1:]]
                sys.path[:] = [osp.dirname(script), *extra, *base_path]
                runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            status = _exit_status_of(e)
        except KeyboardInterrupt:
            _report(*sys.exc_info())
            status, interrupted = 1, True
        except BaseException:
            _report(*sys.exc_info())
            status = 1
        import atexit
        import threading as _threading

        try:
            _threading._shutdown()
            atexit._run_exitfuncs()
        except SystemExit as e:
            status = _exit_status_of(e)
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        if interrupted:  # as Python does for an uncaught KeyboardInterrupt: die by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(status)


def _serve(path):
    import importlib
    import selectors

    server_path = list(sys.path)
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    base_path = [p for p in server_path[1:] if p not in extra and p != ROOT]
    sys.path.insert(0, ROOT)
    for name in _PRELOAD:
        importlib.import_module(name)
    from vlprompt.engine.methods import load_plugins

    load_plugins()
    sys.path.remove(ROOT)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the waiters are reaped by the kernel
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                if not os.read(sys.stdin.fileno(), 4096):
                    import shutil

                    listener.close()
                    shutil.rmtree(osp.dirname(path), ignore_errors=True)
                    return
                continue
            conn, _ = listener.accept()
            try:
                head, fds, _, _ = socket.recv_fds(conn, 8, 3)
                req = json.loads(_recv_exact(conn, struct.unpack("!Q", head)[0]))
            except Exception:
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:  # the waiter: forks the child, reports its pid, then its exit status
                sel.close()
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                child = os.fork()
                if child == 0:
                    conn.close()
                    _become(req, fds, base_path)
                for fd in fds:
                    os.close(fd)
                try:
                    conn.sendall(f"{child}\n".encode())
                    _, status = os.waitpid(child, 0)
                    conn.sendall(f"{status}\n".encode())
                finally:
                    os._exit(0)
            conn.close()
            for fd in fds:
                os.close(fd)


if __name__ == "__main__":
    if sys.argv[1] == "--exec":
        _exec(sys.argv[2:])
    else:
        _serve(sys.argv[1])
