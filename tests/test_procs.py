"""The test fork server (tests/procs.py) starts processes that behave as ``python ...`` does: each case runs
both ways and must give the same exit status, stdout and stderr."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import procs

# the two tests of the server's own processes mean nothing when every request runs as a plain subprocess
serverless = pytest.mark.skipif(bool(os.environ.get("VLPROMPT_TEST_NO_FORKSERVER")),
                                reason="VLPROMPT_TEST_NO_FORKSERVER: no fork server")

CASES = {
    "argv and exit status": (["-c", "import sys; print(sys.argv); sys.exit(3)", "a", "b c"], {}),
    "SystemExit with a message": (["-c", "raise SystemExit('bye')"], {}),
    "uncaught exception": (["-c", "x = 1\nraise ValueError('boom')"], {}),
    "uncaught KeyboardInterrupt": (["-c", "raise KeyboardInterrupt"], {}),
    "atexit and a non-daemon thread": (["-c", "import atexit, threading, time\natexit.register(print, 'atexit')\n"
                                        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()"],
                                       {}),
    "cwd, environment, sys.path[0]": (["-c", "import os, sys; print(os.getcwd(), os.environ['PROCS_X'], "
                                       "repr(sys.path[0]), __name__)"], {"PROCS_X": "42"}),
}


def _both(args, extra_env, cwd):
    env = dict(os.environ, **extra_env)
    ours = procs.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    real = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    return ours, real


@pytest.mark.parametrize("case", list(CASES))
def test_a_forked_process_behaves_as_python_does(case, tmp_path):
    args, extra_env = CASES[case]
    ours, real = _both(args, extra_env, str(tmp_path))
    assert (ours.returncode, ours.stdout, ours.stderr) == (real.returncode, real.stdout, real.stderr)
    if case == "uncaught KeyboardInterrupt":
        assert ours.returncode == -signal.SIGINT
    if case == "uncaught exception":
        assert ours.returncode == 1 and 'File "<string>", line 2, in <module>' in ours.stderr


def test_torch_threads_follow_omp_num_threads():
    # a fresh python with OMP_NUM_THREADS=2 runs torch on 2 threads; the server started with the suite's 1
    code = "import torch; print(torch.get_num_threads())"
    for n in ("2", "1"):
        assert procs.run(["-c", code], env=dict(os.environ, OMP_NUM_THREADS=n), capture_output=True,
                         text=True, check=True).stdout == n + "\n"


@serverless
def test_the_exec_command_forwards_signals_and_exits_as_its_child(tmp_path):
    """What a sweep's --command gets: a process that runs the child through the server and dies as it did."""
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    p = subprocess.Popen([*procs.command(), "-c", code])
    for _ in range(600):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert child != p.pid
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == -signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        for _ in range(200):
            os.kill(child, 0)
            time.sleep(0.05)
    done = subprocess.run([*procs.command(), "-c", "import sys; print('out'); sys.exit(5)"], capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout) == (5, "out\n")


def test_scripts_and_modules_with_pythonpath(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("import sys\nprint(__name__, sys.argv[1:], __file__)\n")
    script = tmp_path / "s.py"
    script.write_text("import sys\nprint(__name__, sys.argv, sys.path[0] == %r)\n" % str(tmp_path))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    for args, env in ((["-m", "mod", "x"], {"PYTHONPATH": str(tmp_path / "pkg")}), ([str(script), "y"], {})):
        ours, real = _both(args, env, str(elsewhere))
        assert ours.returncode == 0, ours.stderr
        assert (ours.stdout, ours.stderr) == (real.stdout, real.stderr)


@serverless
def test_a_real_process_that_signals_reach(tmp_path):
    p = procs.popen(["-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"],
                    stdout=subprocess.PIPE, text=True)
    assert isinstance(p, procs.ForkedProcess)
    assert int(p.stdout.readline()) == p.pid != os.getpid()
    assert p.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(timeout=0.1)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == -signal.SIGTERM
    p.stdout.close()


def test_what_it_cannot_reproduce_runs_as_a_plain_subprocess():
    p = procs.popen(["-u", "-c", "pass"])
    assert isinstance(p, subprocess.Popen) and p.wait(timeout=60) == 0
    p = procs.popen(["-c", "pass"], env=dict(os.environ, PYTHONHASHSEED="7"))
    assert isinstance(p, subprocess.Popen) and p.wait(timeout=60) == 0
