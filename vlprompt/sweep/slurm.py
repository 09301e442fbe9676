"""Slurm job arrays for a sweep plan.

The plan is split into two phases: runs with no dependency (training runs, zero-shot evaluations)
and runs that evaluate a trained model (tests). Each phase becomes one or more job arrays (a
phase larger than ``array_max`` tasks is cut into chunks). Every task is one ``train.py`` call,
written into the script itself (a bash ``case`` on ``SLURM_ARRAY_TASK_ID``), so the scripts are
self-contained and readable.

The test arrays wait for all training arrays with ``--dependency=afterany:...`` by default (``afterok``
can be chosen). With ``afterany`` one failed training task does not hold back every test: each test
task checks that its own training run wrote ``results.json`` and fails with a clear message
otherwise. With ``afterok`` Slurm keeps the whole test array pending if any training task fails.
Tasks whose ``results.json`` already exists exit at once, so resubmitting resumes a sweep.
"""
import os
import os.path as osp
import shlex
import shutil
import subprocess

from ..errors import InvalidValueError, UserRuntimeError

__all__ = ["SlurmOptions", "write_slurm", "submit"]


class SlurmOptions:
    def __init__(self, partition=None, time="04:00:00", gpus_per_task=1, account=None, cpus_per_task=8,
                 mem=None, max_parallel=None, job_name="vlprompt", setup=(), extra=(), dependency="afterany",
                 array_max=1000):
        if dependency not in ("afterany", "afterok"):
            raise InvalidValueError(f"--slurm-dependency must be afterany or afterok, got {dependency}")
        if int(array_max) < 1:
            raise InvalidValueError(f"--array-max must be at least 1, got {array_max}")
        self.partition = partition
        self.time = time
        self.gpus_per_task = int(gpus_per_task)
        self.account = account
        self.cpus_per_task = cpus_per_task
        self.mem = mem
        self.max_parallel = max_parallel
        self.job_name = job_name
        self.setup = list(setup)
        self.extra = list(extra)
        self.dependency = dependency
        self.array_max = int(array_max)


def _chunks(items, n):
    return [items[i:i + n] for i in range(0, len(items), n)]


def _array_script(name, tasks, data_root, prefix, repo, opts, log_dir):
    q = shlex.quote
    n = len(tasks)
    array = f"0-{n - 1}" + (f"%{opts.max_parallel}" if opts.max_parallel else "")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={opts.job_name}-{name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --time={opts.time}",
        f"#SBATCH --cpus-per-task={opts.cpus_per_task}",
        f"#SBATCH --output={log_dir}/{name}_%A_%a.out",
    ]
    if opts.gpus_per_task > 0:
        lines.append(f"#SBATCH --gres=gpu:{opts.gpus_per_task}")
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    if opts.account:
        lines.append(f"#SBATCH --account={opts.account}")
    if opts.mem:
        lines.append(f"#SBATCH --mem={opts.mem}")
    lines += [f"#SBATCH {e}" for e in opts.extra]
    lines += [
        f"# {n} vlprompt runs, one per array task; written by python -m vlprompt.sweep --slurm",
        "set -euo pipefail",
        f"cd {q(repo)}",
    ]
    lines += list(opts.setup)
    lines += ['case "$SLURM_ARRAY_TASK_ID" in']
    for i, r in enumerate(tasks):
        cmd = " ".join(q(a) for a in r.command(data_root, prefix))
        dep = q(r.depends_on) if r.depends_on else "''"
        lines += [
            f"  {i})  # {r.describe()}",
            f"    OUT={q(r.output_dir)}; DEP={dep}",
            f"    CMD=({cmd}) ;;",
        ]
    lines += [
        '  *) echo "no task $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;',
        "esac",
        'if [ -f "$OUT/results.json" ]; then echo "already complete: $OUT"; exit 0; fi',
        'if [ -n "$DEP" ] && [ ! -f "$DEP/results.json" ]; then',
        '  echo "skipped: the training run $DEP did not complete (no results.json)" >&2; exit 3',
        "fi",
        'echo "host $(hostname) CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-} run: ${CMD[*]}"',
        '"${CMD[@]}"',
        "",
    ]
    return "\n".join(lines)


def write_slurm(runs, data_root, prefix, repo, out_dir, opts):
    """Write the array scripts and ``submit.sh`` into ``out_dir``; return the paths (submit first)."""
    out_dir = osp.abspath(out_dir)
    log_dir = osp.join(out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    todo = [r for r in runs if not r.is_complete()]
    first = [r for r in todo if r.depends_on is None]
    second = [r for r in todo if r.depends_on is not None]
    scripts = {"train": [], "test": []}
    for phase, tasks in (("train", first), ("test", second)):
        for c, chunk in enumerate(_chunks(tasks, opts.array_max)):
            name = phase if len(tasks) <= opts.array_max else f"{phase}{c}"
            path = osp.join(out_dir, f"{name}.sbatch")
            with open(path, "w") as f:
                f.write(_array_script(name, chunk, data_root, prefix, repo, opts, log_dir))
            scripts[phase].append(path)
    q = shlex.quote
    sub = [
        "#!/bin/bash",
        f"# Submit a vlprompt sweep: {len(first)} training/zero-shot runs, then {len(second)} test runs",
        f"# (test arrays depend on every training array with --dependency={opts.dependency}).",
        "set -euo pipefail",
        "TRAIN_IDS=()",
    ]
    for p in scripts["train"]:
        sub += [f"TRAIN_IDS+=($(sbatch --parsable {q(p)} | cut -d';' -f1))",
                f'echo "submitted {osp.basename(p)}: job ${{TRAIN_IDS[-1]}}"']
    for p in scripts["test"]:
        sub += [
            'if [ ${#TRAIN_IDS[@]} -gt 0 ]; then',
            f'  DEPS="--dependency={opts.dependency}:$(IFS=:; echo "${{TRAIN_IDS[*]}}")"',
            "else",
            '  DEPS=""',
            "fi",
            f"ID=$(sbatch --parsable $DEPS {q(p)} | cut -d';' -f1)",
            f'echo "submitted {osp.basename(p)}: job $ID ${{DEPS}}"',
        ]
    sub.append("")
    submit_path = osp.join(out_dir, "submit.sh")
    with open(submit_path, "w") as f:
        f.write("\n".join(sub))
    os.chmod(submit_path, 0o755)
    return [submit_path] + scripts["train"] + scripts["test"]


def submit(submit_path):
    """Run ``submit.sh`` if ``sbatch`` is on PATH. Returns (submitted, output)."""
    if shutil.which("sbatch") is None:
        return False, "sbatch not found on PATH"
    res = subprocess.run(["bash", submit_path], capture_output=True, text=True)
    if res.returncode != 0:
        raise UserRuntimeError(f"{submit_path} failed (exit {res.returncode}); sbatch said: "
                               f"{(res.stdout + res.stderr).strip()}")
    return True, res.stdout
