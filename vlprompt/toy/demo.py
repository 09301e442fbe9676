"""The embedded demo: APLe base-to-novel on the toy world with the shipped toy CLIP, offline.

    python -m vlprompt.toy.demo            # or: python train.py  /  python train.py --demo

What it does, with the engine's own command line (each step is a ``python train.py ...`` run, planned
by the sweep presets, so the output tree is the usual CoOp/MaPLe one):

1. materialises the ``ToyShapes`` dataset under ``--root`` (default ``./data``) if it is missing;
2. zero-shot CLIP (``ZeroshotCLIP``) on the base and on the novel classes;
3. APLe (``--trainer``) trained on the 15 base classes (16 shots), tested on them, then tested on the
   15 novel classes with the trained prompts;
4. prints base / novel / HM of both side by side and returns them.

Outputs under ``--output-dir`` (default ``./output/demo``)::

    base2new/train_base/toy_shapes/shots_16/<TRAINER>/toy/seed<S>/   log.txt results.json prompt_learner/...
    base2new/test_new/toy_shapes/shots_16/<TRAINER>/toy/seed<S>/
    base2new/{train_base,test_new}/toy_shapes/shots_16/ZeroshotCLIP/toy/seed<S>/

Finished runs (those with a ``results.json``) are reused, so a second call only prints the table; pass
``--rerun`` to start over. This module never imports ``trainers``/``datasets`` itself: it runs the
repository's ``train.py`` command-line function (``train.cli``) in this process, one call per step, so it
needs a repository checkout. In-process rather than one ``python train.py`` process per step because
importing torch, torchvision and the engine takes several seconds per process, most of a toy step.
"""
import argparse
import collections
import io
import os
import os.path as osp
import re
import shlex
import shutil
import sys
import time

from vlprompt.errors import UserError

__all__ = ["run_demo", "main", "DemoError", "harmonic_mean"]

DATASET = "toy_shapes"
DATASET_NAME = "ToyShapes"
SHOTS = 16


class DemoError(UserError, RuntimeError):
    """The demo cannot run (no repository checkout, a failed run, ...)."""


#: the torch-free child process building the toy dataset while ``train.py`` imports torch and the engine
#: (:func:`start_background_build`); ``run_demo`` waits for it before it checks the dataset itself
_BACKGROUND_BUILD = None


def _demo_root(argv):
    """The data root a demo command line asks for (``--root X`` / ``--root=X``; default ``./data``)."""
    for i, a in enumerate(argv):
        if a == "--root" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--root="):
            return a.split("=", 1)[1]
    return "data"


def start_background_build(argv):
    """Start building the demo's toy dataset in a child process, if it is not built yet; called by ``train.py``
    before it imports torch, so the rendering (~7 s of CPU, over a fork pool: the child is torch-free) runs beside
    the imports (~7 s) instead of after them.

    Torch-free (this module and :mod:`vlprompt.toy.data` import numpy and PIL only). The child is quiet and
    exits 0 whatever happens: ``run_demo`` waits for it, then checks (and if needed builds) the dataset
    itself, so every message and error comes from the demo as before. Returns the child or None.
    """
    global _BACKGROUND_BUILD
    import subprocess

    from .data import TOY_DATASETS, verify_toy_dataset

    if "-h" in argv or "--help" in argv:
        return None
    spec = TOY_DATASETS[DATASET_NAME]
    root = osp.abspath(osp.expanduser(_demo_root(argv)))
    if verify_toy_dataset(spec, osp.join(root, spec.dirname), check_content=False)[0]:
        return None  # built already: run_demo verifies it as usual
    code = ("import sys\n"
            "try:\n"
            "    from vlprompt.toy.data import ensure_toy_dataset\n"
            "    ensure_toy_dataset(sys.argv[1], sys.argv[2], log=None)\n"
            "except BaseException:\n"
            "    pass\n")
    here = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
    try:
        _BACKGROUND_BUILD = subprocess.Popen([sys.executable, "-c", code, DATASET_NAME, root], env=env,
                                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
    except OSError:
        _BACKGROUND_BUILD = None  # the demo builds it itself
    return _BACKGROUND_BUILD


def _prepare_first_run():
    """What the first run would do first anyway, done while the dataset build finishes: import open_clip (the
    toy CLIP is an open_clip model; ~1.7 s with timm) and collect the environment report every run logs
    (once per process)."""
    from vlprompt.utils import collect_env_info

    import open_clip  # noqa: F401

    collect_env_info()


def harmonic_mean(base, novel):
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


def _repo_root():
    here = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    if not (osp.isfile(osp.join(here, "train.py")) and osp.isdir(osp.join(here, "configs", "trainers"))):
        raise DemoError(
            f"The demo runs the repository's train.py, which is not beside the vlprompt package ({here}). "
            "Run it from a repository checkout (git clone ...; cd vlprompt; python train.py --demo)."
        )
    return here


def _accuracy(output_dir):
    from vlprompt.utils import read_json

    path = osp.join(output_dir, "results.json")
    if not osp.isfile(path):
        raise DemoError(f"{path} is missing after the run; see {osp.join(output_dir, 'log.txt')}")
    res = read_json(path)
    metrics = res.get("metrics") or {}
    if "accuracy" not in metrics:
        raise DemoError(f"{path} has no metrics.accuracy (got keys {sorted(metrics)})")
    return float(metrics["accuracy"])


# Lines of a train.py run worth showing as progress (everything is in the run's log.txt anyway).
_PROGRESS = re.compile(r"^(epoch \[|\* (total|accuracy|error|macro_f1)|Loading CLIP|Loading trainer|Creating a |"
                       r"Reading split|SUBSAMPLE|Checkpoint saved|Loading weights|.*[Ww]arning|.*[Ee]rror)")


class _Progress(io.TextIOBase):
    """The console of an in-process ``train.py`` run: keeps its last lines (for an error message) and passes
    on its progress lines (every line if ``verbose``; none if ``quiet``)."""

    def __init__(self, log, quiet, verbose, stdout):
        super().__init__()
        self.log, self.quiet, self.verbose, self.stdout = log, quiet, verbose, stdout
        self.tail = collections.deque(maxlen=40)
        self._partial = ""

    def writable(self):
        return True

    def write(self, text):
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self.tail.append(line + "\n")
            if self.verbose or (not self.quiet and _PROGRESS.match(line)):
                run_stdout, sys.stdout = sys.stdout, self.stdout  # ``log`` (print) writes to the real console
                try:
                    self.log("    " + line)
                finally:
                    sys.stdout = run_stdout
        return len(text)


def _run(cli, argv, cwd, log, quiet, verbose=False):
    """Run one ``train.py`` command line (``argv`` without the program) in this process through ``cli`` (the
    ``cli`` function of ``train.py``), as ``python train.py ...`` in ``cwd`` would (same command-line
    function, same files; the engine, torch and the toy CLIP's modules are imported once for all the demo's
    runs instead of once per run), streaming its progress lines (all lines if ``verbose``; none if
    ``quiet``)."""
    from vlprompt.utils import restore_stdout

    t0 = time.time()
    saved = sys.stdout, sys.stderr, os.getcwd()
    console = _Progress(log, quiet, verbose, saved[0])
    sys.stdout = sys.stderr = console
    os.chdir(cwd)
    try:
        rc = cli(list(argv))
    finally:
        restore_stdout()
        sys.stdout, sys.stderr = saved[0], saved[1]
        os.chdir(saved[2])
    if rc != 0:
        raise DemoError(
            f"train.py exited with status {rc} after {time.time() - t0:.0f}s:\n  python train.py {shlex.join(argv)}\n"
            f"Last lines of its output:\n" + "".join(console.tail)
        )
    return time.time() - t0


def run_demo(root=None, output_dir=None, trainer="APLe", config="toy", seed=1, shots=SHOTS, opts=(),
             rerun=False, quiet=False, verbose=False, log=print, cli=None):
    """Run the demo; return ``{"ZeroshotCLIP": {...}, trainer: {...}}`` with base/novel/HM accuracies.

    ``root``: data folder (default ``./data``); ``output_dir``: output root (default ``./output/demo``);
    ``config``: trainer config name under ``configs/trainers/<trainer>/`` (default ``toy``); ``opts``:
    extra ``KEY VALUE`` config options for the trainer's runs (e.g. ``["OPTIM.MAX_EPOCH", "2"]``); ``cli``:
    ``train.py``'s command-line function (``train.cli``), which runs each step.
    """
    if cli is None:
        raise DemoError("run_demo needs train.py's command-line function: run_demo(..., cli=train.cli), or run "
                        "python train.py --demo")
    from vlprompt.sweep.protocols import Method, SweepError, expand

    from .data import ToyDataError, ensure_toy_dataset

    repo = _repo_root()
    root = osp.abspath(osp.expanduser(root or "data"))
    output_dir = osp.abspath(osp.expanduser(output_dir or osp.join("output", "demo")))
    t_start = time.time()
    log(f"vlprompt demo: {trainer} base-to-novel on the toy world ({DATASET_NAME}, {shots} shots, seed {seed}) "
        f"with the toy CLIP")
    log(f"  data:   {root}\n  output: {output_dir}")
    global _BACKGROUND_BUILD
    if _BACKGROUND_BUILD is not None:
        if _BACKGROUND_BUILD.poll() is None:
            log(f"{DATASET_NAME}: finishing the build started beside the imports ...")
            _prepare_first_run()
        _BACKGROUND_BUILD.wait()
        _BACKGROUND_BUILD = None
    try:
        ensure_toy_dataset(DATASET_NAME, root, log=log)
    except ToyDataError as e:
        raise DemoError(str(e)) from e

    plan = []
    for label, method, extra in (("ZeroshotCLIP", Method("ZeroshotCLIP", "CoOp/" + config), []),
                                 (trainer, Method(trainer, config), list(opts))):
        try:
            runs = expand(method, "base2new", [DATASET], [seed], output_root=output_dir, root=repo, shots=shots,
                          opts=extra)
        except SweepError as e:
            raise DemoError(str(e)) from e
        plan.append((label, runs))

    results = {}
    n_total = sum(len(r) for _, r in plan)
    k = 0
    for label, runs in plan:
        accs = {}
        fresh = set()  # output dirs (re)made in this call: runs that depend on them are redone too
        for run in runs:
            k += 1
            part = "base" if "train_base" in run.output_dir else "novel"
            what = {"train": "train on base classes, test on base", "test": "test on novel classes",
                    "eval": f"zero-shot on {part} classes"}[run.phase]
            if run.is_complete() and not rerun and run.depends_on not in fresh:
                log(f"[{k}/{n_total}] {label}: {what} -- already done ({run.output_dir})")
            else:
                if osp.isdir(run.output_dir):
                    shutil.rmtree(run.output_dir)  # an unfinished or to-be-rerun attempt
                log(f"[{k}/{n_total}] {label}: {what}")
                secs = _run(cli, run.command(root, []), repo, log, quiet, verbose)
                fresh.add(run.output_dir)
                log(f"[{k}/{n_total}] {label}: done in {secs:.0f}s")
            accs[part] = _accuracy(run.output_dir)
        accs["hm"] = harmonic_mean(accs["base"], accs["novel"])
        results[label] = accs

    width = max(len(m) for m in results) + 2
    lines = [
        "",
        f"Base-to-novel on {DATASET_NAME} ({shots} shots, seed {seed}), toy CLIP, top-1 accuracy (%):",
        f"{'method':<{width}}{'base':>8}{'novel':>8}{'HM':>8}",
    ]
    for m, a in results.items():
        lines.append(f"{m:<{width}}{a['base']:>8.2f}{a['novel']:>8.2f}{a['hm']:>8.2f}")
    lines.append(f"(total {time.time() - t_start:.0f}s; runs under {output_dir})")
    log("\n".join(lines))
    return results


def main(argv=None, cli=None):
    """The demo's command line. ``cli``: ``train.py``'s command-line function (``python train.py`` passes its
    own); without it (``python -m vlprompt.toy.demo``) this process becomes ``python train.py --demo ...``."""
    if cli is None:
        train_py = osp.join(_repo_root(), "train.py")
        if not osp.isfile(train_py):
            print(f"Error: {train_py} is missing: the demo runs the checkout's train.py (run it from a vlprompt "
                  "checkout)", file=sys.stderr)
            return 2
        argv = sys.argv[1:] if argv is None else list(argv)
        os.execv(sys.executable, [sys.executable, train_py, "--demo", *argv])
    p = argparse.ArgumentParser(
        prog="python -m vlprompt.toy.demo",
        description="APLe base-to-novel on the procedural toy world with the shipped toy CLIP (offline, CPU).",
    )
    p.add_argument("--root", default="data", help="data folder; the toy dataset is generated there (default ./data)")
    p.add_argument("--output-dir", default=osp.join("output", "demo"), help="output root (default ./output/demo)")
    p.add_argument("--trainer", default="APLe", help="trainer to compare with zero-shot CLIP (default APLe)")
    p.add_argument("--config", default="toy", help="config name under configs/trainers/<TRAINER>/ (default toy)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--shots", type=int, default=SHOTS)
    p.add_argument("--rerun", action="store_true", help="run again even where results.json exists")
    p.add_argument("--quiet", action="store_true", help="do not show the runs' progress")
    p.add_argument("--verbose", action="store_true", help="stream the runs' whole output (it is in log.txt anyway)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra KEY VALUE config options for the trainer's runs")
    args = p.parse_args(argv)
    try:
        run_demo(root=args.root, output_dir=args.output_dir, trainer=args.trainer, config=args.config,
                 seed=args.seed, shots=args.shots, opts=args.opts, rerun=args.rerun, quiet=args.quiet,
                 verbose=args.verbose, cli=cli)
    except DemoError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
