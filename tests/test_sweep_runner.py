"""The sweep runner when its own end is abrupt (SIGKILL) or a job's output folder is held by a live
process left from an earlier sweep, and the failure summary's reason (issue 26, item 5). Real
processes and signals, with fake train.py jobs (no torch), so each test takes about a second."""
import fcntl
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest

from vlprompt.sweep import Runner, cpu_slots, expand
from vlprompt.sweep.cli import main as sweep_main
from vlprompt.sweep.runner import lock_holder
from tests.test_sweep import repo  # noqa: F401  (the fabricated repository fixture)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# A fake train.py: records its pid, then either sleeps (SLEEP=1; SIGTERM writes a marker and exits 143)
# or writes results.json; ERROR=1 prints train.py's one-line refusal and then some noise, exit 2.
FAKE = r"""
import json, os, signal, sys, time
a = sys.argv[1:]
out = a[a.index('--output-dir') + 1]
marks = os.environ['MARKS']
open(os.path.join(marks, 'ran'), 'a').write(out + '\n')
if os.environ.get('ERROR'):
    print('Error: ' + out + ' is in use by process 12345: one run at a time', file=sys.stderr, flush=True)
    for i in range(10):
        print('noise line', i, flush=True)
    sys.exit(2)
if os.environ.get('SLEEP'):
    def term(signum, frame):
        open(os.path.join(marks, 'sigterm'), 'w').write(str(os.getpid()))
        sys.exit(143)
    signal.signal(signal.SIGTERM, term)
    open(os.path.join(marks, 'pid.tmp'), 'w').write(str(os.getpid()))
    os.replace(os.path.join(marks, 'pid.tmp'), os.path.join(marks, 'pid'))
    time.sleep(60)
os.makedirs(out, exist_ok=True)
json.dump({'metrics': {'accuracy': 50.0}}, open(os.path.join(out, 'results.json'), 'w'))
"""

DRIVER = r"""
import json, sys
from vlprompt.sweep import Runner, cpu_slots, expand
repo, out, prefix = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
runs = expand("MyTrainer:mine", "few_shot", ["dtd"], [1], output_root=out, root=repo, shots=[1], specs={})
sys.exit(Runner(runs, "/d", cpu_slots(1), output_root=out, prefix=prefix, poll=0.05).run())
"""


def _runs(repo, out):
    return expand("MyTrainer:mine", "few_shot", ["dtd"], [1], output_root=out, root=repo, shots=[1], specs={})


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait(cond, timeout=30.0):
    deadline = time.time() + timeout
    while not cond() and time.time() < deadline:
        time.sleep(0.05)
    return cond()


class Lines:
    def __init__(self):
        self.parts = []

    def write(self, s):
        self.parts.append(s)

    def flush(self):
        pass

    @property
    def text(self):
        return "".join(self.parts)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")
def test_sigkill_of_the_runner_takes_its_job_with_it_and_the_rerun_completes(repo, tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    out = str(tmp_path / "out")
    env = dict(os.environ, MARKS=str(marks), SLEEP="1", PYTHONPATH=ROOT)
    prefix = json.dumps([sys.executable, "-c", FAKE])
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, repo, out, prefix], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert _wait(lambda: (marks / "pid").exists()), driver.stderr.read() if driver.poll() is not None else ""
    job = int((marks / "pid").read_text())
    assert _alive(job)
    driver.send_signal(signal.SIGKILL)  # what the OOM killer or `timeout -s KILL` does
    driver.wait(timeout=30)
    assert _wait(lambda: not _alive(job)), "the job outlived the SIGKILLed runner"
    assert (marks / "sigterm").read_text() == str(job)  # it got SIGTERM, so train.py unwinds cleanly
    # the same sweep again: the job runs and completes
    monkeypatch.setenv("MARKS", str(marks))
    monkeypatch.delenv("SLEEP", raising=False)
    runs = _runs(repo, out)
    runner = Runner(runs, "/d", cpu_slots(1), output_root=out, prefix=[sys.executable, "-c", FAKE], poll=0.02,
                    stream=Lines())
    assert runner.run() == 0
    assert [j.status for j in runner.states()] == ["ok"] and runs[0].is_complete()


HOLDER = r"""
import fcntl, json, os, sys, time
out, finish, hold = sys.argv[1], sys.argv[2] == '1', float(sys.argv[3])
os.makedirs(out, exist_ok=True)
fd = os.open(os.path.join(out, '.vlprompt.lock'), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, (json.dumps({'pid': os.getpid(), 'command': 'train.py (orphan)'}) + '\n').encode())
print('locked', flush=True)
time.sleep(hold)
if finish:
    json.dump({'metrics': {}}, open(os.path.join(out, 'results.json'), 'w'))
"""


def _orphan(out, finish, hold=1.0):
    """A live process (not the runner's child) holding ``out``'s run lock, as a job of a SIGKILLed
    runner does on a system without PR_SET_PDEATHSIG; it finishes the run or not."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, out, "1" if finish else "0", str(hold)],
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert p.stdout.readline().strip() == "locked"
    return p


@pytest.mark.parametrize("finish", [True, False])
def test_a_job_whose_folder_is_held_waits_for_the_holder(repo, tmp_path, monkeypatch, finish):
    """The rerun waits for the orphan: a run it finished counts as complete (not re-run, no lock
    failure); a run it left unfinished starts once the lock is free."""
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("MARKS", str(marks))
    out = str(tmp_path / "out")
    runs = _runs(repo, out)
    orphan = _orphan(runs[0].output_dir, finish)
    assert lock_holder(runs[0].output_dir) == (orphan.pid, "train.py (orphan)")
    lines = Lines()
    runner = Runner(runs, "/d", cpu_slots(1), output_root=out, prefix=[sys.executable, "-c", FAKE], poll=0.02,
                    stream=lines)
    assert runner.run() == 0
    orphan.wait(timeout=30)
    assert lock_holder(runs[0].output_dir) is None
    text = lines.text
    assert f"its output folder is in use by process {orphan.pid}: train.py (orphan)" in text
    assert text.count("WAIT ") == 1  # said once, not at every poll
    (state,) = runner.states()
    if finish:
        assert state.status == "complete" and f"(finished by process {orphan.pid})" in text
        assert not (marks / "ran").exists()  # never started
    else:
        assert state.status == "ok" and (marks / "ran").read_text().split() == [runs[0].output_dir]


def test_a_stale_lock_file_of_a_dead_process_is_not_held(tmp_path):
    out = str(tmp_path / "o")
    _orphan(out, False, hold=0).wait(timeout=30)
    assert osp.isfile(osp.join(out, ".vlprompt.lock")) and lock_holder(out) is None
    fd = os.open(osp.join(out, ".vlprompt.lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the probe left no lock behind
    os.close(fd)


def test_the_failure_summary_names_the_jobs_own_error_line(repo, tmp_path, monkeypatch, capsys):
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("MARKS", str(marks))
    monkeypatch.setenv("ERROR", "1")
    out = str(tmp_path / "out")
    runs = _runs(repo, out)
    log = osp.join(out, "sweep_logs", osp.relpath(runs[0].output_dir, out) + ".log")
    os.makedirs(osp.dirname(log))
    with open(log, "w") as f:  # an earlier attempt's error, which must not be taken for this one's
        f.write("Error: an older attempt\n")
    runs[0].write_note()  # as the sweep's command line does before it starts the runner
    assert os.listdir(runs[0].output_dir) == ["vlprompt_run.json"]
    runner = Runner(runs, "/d", cpu_slots(1), output_root=out, prefix=[sys.executable, "-c", FAKE], poll=0.02)
    assert runner.run() == 1
    assert not osp.exists(runs[0].output_dir)  # the refused job left its folder as it found it (no lone note)
    text = capsys.readouterr().out
    want = f"(exit status 2: Error: {runs[0].output_dir} is in use by process 12345: one run at a time)"
    assert want in text, text
    assert "an older attempt" not in text
    status = json.load(open(osp.join(out, "sweep_logs", "sweep_status.json")))
    assert status["jobs"][0]["reason"] == want[1:-1]


@pytest.mark.parametrize("opts, key", [(["OPTIM.LRR", "0.1"], "OPTIM.LRR"),
                                       (["TRAINER.COOP.N_CTXX", "2"], "TRAINER.COOP.N_CTXX")])
def test_dry_run_refuses_an_unknown_opts_key(repo, tmp_path, capsys, opts, key):
    rc = sweep_main(["--methods", "CoOp", "--protocol", "few_shot", "--datasets", "dtd", "--seeds", "1",
                     "--root", "/d", "--output-root", str(tmp_path / "out"), "--repo-root", repo, "--dry-run",
                     "--opts", *opts])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    assert cap.err.startswith(f"Error: Unknown config key {key} in the command-line options.")
    assert cap.err.count("Error:") == 1 and "Traceback" not in cap.err
    assert not (tmp_path / "out").exists()


def test_dry_run_refuses_a_grid_value_of_the_wrong_type(repo, tmp_path, capsys):
    rc = sweep_main(["--methods", "CoOp", "--protocol", "few_shot", "--datasets", "dtd", "--seeds", "1",
                     "--root", "/d", "--output-root", str(tmp_path / "out"), "--repo-root", repo, "--dry-run",
                     "--grid", "OPTIM.LR=0.1,fast"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("Error: ") and "OPTIM.LR" in err and "fast" in err


def test_dry_run_prints_a_methods_card_notes_once(tmp_path, capsys):
    """CLIP-LoRA's budget follows the shots, not OPTIM.MAX_EPOCH: the plan says so once, before the runs."""
    rc = sweep_main(["--methods", "CLIPLoRA", "CoOp", "--protocol", "few_shot", "--datasets", "dtd", "--seeds", "1", "2",
                     "--shots", "16", "--root", "/d", "--output-root", str(tmp_path / "out"), "--repo-root", ROOT,
                     "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    notes = [line for line in out.splitlines() if line.startswith("# note on ")]
    assert notes == ["# note on CLIPLoRA: the budget follows the shots, not OPTIM.MAX_EPOCH: "
                     "TRAINER.CLIPLORA.N_ITERS (500) x DATASET.NUM_SHOTS iterations (8,000 at 16 shots), split into "
                     "MAX_EPOCH epochs; for a shorter run lower TRAINER.CLIPLORA.N_ITERS, or set it to 0 for MAX_EPOCH "
                     "passes over the few-shot set"]
    assert out.index("# note on CLIPLoRA") < out.index("[1] ")
    assert not (tmp_path / "out").exists()


def test_training_free_methods_that_fit_on_the_shots_get_every_shot_count(tmp_path, capsys):
    """Tip-Adapter, the linear probe and GDA are eval-only (nothing for the loop to train) but fit on the
    few-shot images: the few-shot sweep gives them each shot count (DATASET.NUM_SHOTS K, shots_K), while
    zero-shot CLIP runs once per dataset (shots_0, no NUM_SHOTS)."""
    rc = sweep_main(["--methods", "TipAdapter", "LinearProbeCLIP", "GDA", "ZeroshotCLIP", "--protocol", "few_shot",
                     "--datasets", "dtd", "--seeds", "1", "--shots", "1", "4", "--root", "/d",
                     "--output-root", str(tmp_path / "out"), "--repo-root", ROOT, "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    cmds = [line.split() for line in out.splitlines() if "train.py" in line]
    for method in ("TipAdapter", "LinearProbeCLIP", "GDA"):
        mine = [c for c in cmds if c[c.index("--trainer") + 1] == method]
        assert [c[c.index("DATASET.NUM_SHOTS") + 1] for c in mine] == ["1", "4"], method
        assert [c[c.index("--output-dir") + 1].split(os.sep)[-2] for c in mine] == ["shots_1", "shots_4"]
        assert all("--eval-only" in c for c in mine)
    zs = [c for c in cmds if c[c.index("--trainer") + 1] == "ZeroshotCLIP"]
    assert len(zs) == 1 and "DATASET.NUM_SHOTS" not in zs[0] and zs[0][zs[0].index("--output-dir") + 1].endswith(
        os.path.join("shots_0", "seed1"))
