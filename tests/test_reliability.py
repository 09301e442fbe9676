"""Reliability as users meet it (issue 12): the README's commands, line-buffered logs, the
output-folder lock, checkpoint errors, partial-write cleanup and file modes. The kill tests use
real processes and signals."""
import json
import os
import re
import signal
import socket
import stat
import subprocess

import pytest
import torch

import train as train_mod
from tests import procs
from tests.helpers import METHOD_YAML, make_image_folder, register_linear_probe, write_method_yaml
from vlprompt.utils import (
    CheckpointError,
    OutputDirLock,
    OutputDirLocked,
    atomic_write,
    clean_stale_tmp,
    load_checkpoint,
    restore_stdout,
    resume_from_checkpoint,
    save_checkpoint,
)
from vlprompt.utils.logger import Logger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
register_linear_probe()

# train.py with the test trainer registered; PROBE_DELAY seconds of sleep per batch keep a run alive
# long enough to be killed in the middle (the sleep paces the run; nothing is timed).
RUNNER = f"""
import os, sys, time
sys.path.insert(0, {ROOT!r})
from tests.helpers import register_linear_probe
cls = register_linear_probe()
delay = float(os.environ.get("PROBE_DELAY", "0"))
if delay:
    fb = cls.forward_backward
    def forward_backward(self, batch):
        time.sleep(delay)
        return fb(self, batch)
    cls.forward_backward = forward_backward
import train
sys.exit(train.entry_point(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_image_folder(str(root / "five"), n_classes=3, n_per_class=10)
    return root


@pytest.fixture(scope="module")
def dataset_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "five.yaml"
    p.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    return str(p)


@pytest.fixture(scope="module")
def method_yaml(tmp_path_factory):
    return write_method_yaml(tmp_path_factory.mktemp("cfgm") / "probe.yaml", METHOD_YAML)


def run_cli(argv):
    try:
        return train_mod.cli(argv)
    finally:
        restore_stdout()


def args_for(root, ds, m, out, *opts):
    return ["--root", str(root), "--seed", "1", "--trainer", "TestLinearProbe", "--dataset-config-file", ds,
            "--config-file", m, "--output-dir", str(out)] + list(opts)


def spawn(argv, delay):
    env = dict(os.environ, PROBE_DELAY=str(delay), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return procs.popen(["-c", RUNNER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                       env=env)


def read_until(proc, needle):
    """Read ``proc``'s stdout until a line containing ``needle``; returns the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return lines
    proc.wait()
    raise AssertionError(f"{needle!r} never printed; rc={proc.returncode}\n{''.join(lines)}\n{proc.stderr.read()}")


def kill9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


# ------------------------------------------------------------------------------------------------
# item 1: the README's commands
# ------------------------------------------------------------------------------------------------


def _quickstart_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"## Quickstart\s+```bash\n(.*?)```", text, re.S).group(1)
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _requirement_names(path, seen=()):
    names = set()
    for line in open(path):
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            names |= _requirement_names(os.path.join(os.path.dirname(path), line[2:].strip()))
        elif line:
            names.add(re.split(r"[<>=!~\[ ;]", line)[0].lower())
    return names


def _installed_by(command):
    """Package names a ``pip install`` command line installs (``-r`` files and ``-e .[extras]``)."""
    names = set()
    for part in command.split("&&"):
        tokens = part.replace('"', "").replace("'", "").split()
        if tokens[:2] != ["pip", "install"]:
            continue
        i = 2
        while i < len(tokens):
            t = tokens[i]
            if t == "-r":
                names |= _requirement_names(os.path.join(ROOT, tokens[i + 1]))
                i += 2
                continue
            if t == "-e":
                i += 1
                continue
            m = re.fullmatch(r"\.(\[(.*)\])?", t)
            if m:
                names |= _requirement_names(os.path.join(ROOT, "requirements.txt"))
                setup = open(os.path.join(ROOT, "setup.py")).read()
                extras = re.search(r"extras_require=(\{.*?\})", setup, re.S)
                extras = eval(extras.group(1)) if extras else {}  # a literal dict in setup.py
                for extra in (m.group(2) or "").split(","):
                    for req in extras.get(extra.strip(), []):
                        names.add(re.split(r"[<>=!~\[ ;]", req)[0].lower())
            i += 1
    return names


def test_readme_install_provides_what_the_readme_test_command_needs():
    install, main_job, tests = _quickstart_commands()
    assert tests == "python -m pytest -q" and main_job == "python train.py"
    installed = _installed_by(install)
    assert "pytest" in installed, install
    assert {"torch", "open_clip_torch", "yacs"} <= installed
    # CI runs the README's commands themselves (read from README.md), not a copy of them
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "README.md" in ci and "pip install -r" not in ci


# ------------------------------------------------------------------------------------------------
# item 3: line-buffered log.txt
# ------------------------------------------------------------------------------------------------


def test_logger_writes_each_line_through(tmp_path):
    import io

    log = Logger(str(tmp_path / "log.txt"), console=io.StringIO())
    log.write("first line\n")
    assert (tmp_path / "log.txt").read_text() == "first line\n"  # no flush() needed
    log.write("second")
    log.write(" half\n")
    assert (tmp_path / "log.txt").read_text() == "first line\nsecond half\n"
    log.close()


def test_deferred_log_commit_discard_and_patience(tmp_path):
    import io

    console = io.StringIO()
    held = Logger(str(tmp_path / "a" / "log.txt"), console=console, defer=True)
    held.write("args dump\n")
    assert console.getvalue() == "" and not (tmp_path / "a").exists()
    held.discard()  # a refused run: nothing shown, nothing written
    held.write("after\n")
    assert console.getvalue() == "after\n" and not (tmp_path / "a").exists()

    console = io.StringIO()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "log.txt").write_text("old run\n")
    held = Logger(str(tmp_path / "b" / "log.txt"), console=console, defer=True)
    held.write("args dump\n")
    path = held.commit()
    assert path.startswith(str(tmp_path / "b" / "log.txt-")) and open(path).read() == "args dump\n"
    assert console.getvalue() == "args dump\n"
    held.close()

    console = io.StringIO()
    slow = Logger(str(tmp_path / "c" / "log.txt"), console=console, defer=True, patience=0.05)
    slow.write("reading a large split\n")
    timer = slow._timer
    timer.join(30)  # the patience ran out: the log starts by itself
    assert not slow.deferred and (tmp_path / "c" / "log.txt").read_text() == "reading a large split\n"
    slow.discard()  # too late to drop: the log stays
    slow.write("more\n")
    assert (tmp_path / "c" / "log.txt").read_text() == "reading a large split\nmore\n"
    slow.close()


def test_log_of_a_killed_run_ends_at_its_last_line(tmp_path, data_root, dataset_yaml, method_yaml):
    out = tmp_path / "run"
    proc = spawn(args_for(data_root, dataset_yaml, method_yaml, out), delay=0.3)
    try:
        read_until(proc, "epoch [1/3] batch [2/3]")
        # the line is on stdout, so (line-buffered) it is already in log.txt, before any flush
        assert "epoch [1/3] batch [2/3]" in (out / "log.txt").read_text()
    finally:
        kill9(proc)
    log = (out / "log.txt").read_text()
    assert "** Config **" in log and "epoch [1/3] batch [2/3]" in log


@pytest.mark.parametrize("sig,rc,name", [(signal.SIGINT, 130, "Ctrl-C / SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_interrupted_run_says_one_line_and_unwinds(tmp_path, data_root, dataset_yaml, method_yaml, sig, rc, name):
    out = tmp_path / "run"
    # six epochs: the run is stopped in the second, and the four after it (~4 s of paced batches) keep it alive
    # even when this process reads the line late on a loaded machine (with three epochs the run once finished
    # first and exited 0)
    proc = spawn(args_for(data_root, dataset_yaml, method_yaml, out, "TRAIN.CHECKPOINT_FREQ", "1",
                          "OPTIM.MAX_EPOCH", "6"), delay=0.3)
    read_until(proc, "epoch [2/6] batch [1/3]")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith(f"Interrupted ({name}). The checkpoints and log in {out} are kept")
    assert not (out / ".vlprompt.lock").exists()  # the run unwound: the lock was released
    assert (out / "log.txt").read_text().rstrip().endswith("again to resume.")
    assert (out / "head" / "checkpoint").read_text().strip() == "model.pth.tar-1"


# ------------------------------------------------------------------------------------------------
# item 5: the output-folder lock
# ------------------------------------------------------------------------------------------------


def test_lock_is_exclusive_and_released(tmp_path):
    d = tmp_path / "out" / "deep"
    a = OutputDirLock(str(d))
    with a:
        assert a.created_dir and (d / ".vlprompt.lock").is_file()
        with pytest.raises(OutputDirLocked) as e:
            OutputDirLock(str(d)).acquire()
        assert e.value.pid == os.getpid() and e.value.host == socket.gethostname()
        assert f"process {os.getpid()} on host {socket.gethostname()}" in str(e.value)
    assert not (d / ".vlprompt.lock").exists()
    with OutputDirLock(str(d)) as b:  # free again
        assert b.held and b.took_over is None


def test_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, data_root, dataset_yaml,
                                                                      method_yaml, capsys):
    out = tmp_path / "run"
    opts = ["TRAIN.CHECKPOINT_FREQ", "1"]
    first = spawn(args_for(data_root, dataset_yaml, method_yaml, out, *opts), delay=0.3)
    try:
        read_until(first, "epoch [2/3] batch [1/3]")
        # stopped, not dead: it holds the lock and cannot save epoch 2's checkpoint while the second run tries
        first.send_signal(signal.SIGSTOP)
        before = sorted(os.listdir(out))
        rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out, *opts))
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("Error: ") and err.count("\n") == 1
        assert f"in use by process {first.pid} on host {socket.gethostname()}" in err
        assert sorted(os.listdir(out)) == before  # the refused run wrote nothing (no log.txt-<time>)
    finally:
        kill9(first)
    assert json.loads((out / ".vlprompt.lock").read_text())["pid"] == first.pid  # left by kill -9
    # a partial write left by an interrupted save: the next run in the folder removes it
    stale = out / "head" / ".model.pth.tar-2.k3j4h5g6.tmp"
    stale.write_bytes(b"partial")
    from vlprompt.utils.tools import PROCESS_START

    # written before this process started, as a dead run's partial write is (the next run is this process)
    os.utime(stale, (PROCESS_START - 1, PROCESS_START - 1))
    assert run_cli(args_for(data_root, dataset_yaml, method_yaml, out, *opts)) == 0
    stdout = capsys.readouterr().out
    assert f"Taking over the stale lock {out / '.vlprompt.lock'} of process {first.pid}" in stdout
    assert "Previous epoch: 1" in stdout  # resumed from the dead run's checkpoint
    assert not stale.exists()
    assert not (out / ".vlprompt.lock").exists()
    logs = sorted(f for f in os.listdir(out) if f.startswith("log.txt-"))
    assert len(logs) == 1 and "Taking over the stale lock" in (out / logs[0]).read_text()


# ------------------------------------------------------------------------------------------------
# item 6: checkpoint errors and partial writes
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def good_checkpoint(tmp_path):
    state = {"state_dict": {"weight": torch.randn(64, 64), "bias": torch.zeros(64)}, "epoch": 2, "optimizer": None,
             "scheduler": None}
    return save_checkpoint(state, str(tmp_path / "ckpt"))


@pytest.mark.parametrize("how", ["empty", "10 bytes", "half", "all but 20 bytes", "garbage"])
def test_damaged_checkpoint_raises_one_clear_error(good_checkpoint, how):
    data = open(good_checkpoint, "rb").read()
    damaged = {"empty": b"", "10 bytes": data[:10], "half": data[: len(data) // 2],
               "all but 20 bytes": data[:-20], "garbage": os.urandom(len(data))}[how]
    with open(good_checkpoint, "wb") as f:
        f.write(damaged)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(good_checkpoint)
    assert isinstance(e.value, RuntimeError) and e.value.path == good_checkpoint
    msg = str(e.value)
    assert good_checkpoint in msg and ("truncated or corrupt" in msg or "empty" in msg)
    assert "Delete it" in msg and "weights_only" not in msg


def test_pickled_checkpoint_is_refused_without_advising_to_unpickle(tmp_path):
    import argparse

    p = str(tmp_path / "legacy.pth.tar")
    torch.save({"state_dict": {}, "epoch": 1, "scheduler": argparse.Namespace(lr=1)}, p)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    assert p in str(e.value) and "pickled Python objects" in str(e.value)
    assert "weights_only" not in str(e.value)
    with pytest.raises(ValueError):
        load_checkpoint(p, weights_only=False)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "absent.pth.tar"))


def test_resume_from_damaged_or_missing_checkpoint_names_the_file(good_checkpoint, tmp_path):
    d = os.path.dirname(good_checkpoint)
    model = torch.nn.Linear(64, 64)
    model.weight.data.zero_()
    assert resume_from_checkpoint(d, model) == 2
    with open(good_checkpoint, "r+b") as f:
        f.truncate(300)
    with pytest.raises(CheckpointError) as e:
        resume_from_checkpoint(d, model)
    assert e.value.path == good_checkpoint
    os.remove(good_checkpoint)
    with pytest.raises(CheckpointError, match="not found"):
        resume_from_checkpoint(d, model)
    with open(os.path.join(d, "checkpoint"), "w") as f:
        f.write("")
    with pytest.raises(CheckpointError, match="pointer .* is empty"):
        resume_from_checkpoint(d, model)
    torch.save({"weights": torch.zeros(1)}, os.path.join(d, "other.pth"))
    with open(os.path.join(d, "checkpoint"), "w") as f:
        f.write("other.pth\n")
    with pytest.raises(CheckpointError, match="no state_dict or epoch"):
        resume_from_checkpoint(d, model)


def test_partial_write_of_a_killed_process_is_cleaned_up(tmp_path):
    d = tmp_path / "ckpt"
    code = (f"import sys, time; sys.path.insert(0, {ROOT!r})\n"
            "from vlprompt.utils import atomic_write\n"
            f"with atomic_write({str(d / 'model.pth.tar-3')!r}, 'wb') as f:\n"
            "    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = procs.popen(["-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_until(proc, "writing")
    finally:
        kill9(proc)
    tmps = [f for f in os.listdir(d) if f.endswith(".tmp")]
    assert len(tmps) == 1 and tmps[0].startswith(".model.pth.tar-3.")
    assert not (d / "model.pth.tar-3").exists()
    # this test process started before the killed one, so for it the file is not (yet) stale ...
    assert clean_stale_tmp(str(d)) == []
    # ... for the next run it is: age it to before this process started
    from vlprompt.utils.tools import PROCESS_START
    os.utime(d / tmps[0], (PROCESS_START - 10, PROCESS_START - 10))
    with atomic_write(str(d / "keep.txt")) as f:  # this process's write in progress is never removed
        f.write("x")
        assert clean_stale_tmp(str(d)) == [str(d / tmps[0])]
    assert sorted(os.listdir(d)) == ["keep.txt"]


# ------------------------------------------------------------------------------------------------
# item 8: file modes honour the umask
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, method_yaml, umask, expected):
    root = tmp_path / "d"
    make_image_folder(str(root / "five"), n_classes=3, n_per_class=10)
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    out = tmp_path / "run"
    old = os.umask(umask)
    try:
        assert run_cli(args_for(root, str(ds), method_yaml, out, "DATASET.NUM_SHOTS", "2",
                                "OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0")) == 0
    finally:
        os.umask(old)
    files = [out / "results.json", out / "config.yaml", out / "log.txt", out / "head" / "model.pth.tar-1",
             out / "head" / "checkpoint", root / "five" / "split_vlprompt_ImageFolder.json",
             root / "five" / "split_fewshot" / "shot_2-seed_1.json"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == expected, (f, oct(f.stat().st_mode))
