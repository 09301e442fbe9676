"""A whole few-shot sweep of the frozen-feature family from a warm feature store, against the same sweep
with the store disabled (features computed in every run).

    nice -n 10 python benchmarks/bench_fewshot_sweep.py --max-load 0.5 --out benchmarks/results/fewshot_sweep_cpu.json
    python benchmarks/bench_fewshot_sweep.py --quick          # 1 seed x 2 shot counts: a check that it works

The sweep is the one a user runs: ``python -m vlprompt.sweep --methods <M>:toy --protocol few_shot
--datasets toy_shapes --shots 1 2 4 8 16 --seeds 1 2 3 --jobs 1`` (each run its own ``train.py``
process, one at a time), on the toy world (ToyShapes, the shipped toy CLIP) for LPPP, GDA, TaskRes,
CLAP, TwoSFS and ProLIP: 6 x 5 x 3 = 90 runs per pass. Three passes, each into its own empty output tree:

* ``fill``: one sweep command per method; the store at its default path (``FEATURES.DIR`` empty:
  ``$VLPROMPT_FEATURE_CACHE``, else ``~/.cache/vlprompt/features``; ``--store-dir`` for another folder)
  is filled by the sweep itself (a store that already holds these entries makes this pass warm too; it
  also writes the toy data);
* ``warm``: one sweep command per run (method, shots, seed), every feature served from the store;
* ``per_run``: the same commands, each with ``--opts FEATURES.DIR <its own empty folder>``: every run
  computes (and writes) every feature it uses. The store cannot simply be switched off: these methods
  train on stored training features (``FEATURES.TRAIN_CACHE False`` is refused by LP++, for one).

The warm and per-run passes time the same commands (one sweep CLI start per run in both), so their
ratio is the store's effect. ``--max-load X`` waits before each pass until the 1-minute load average is
below X; the load averages before and after each pass are recorded. The JSON (``--out``, and printed)
holds per-method (summed over its commands) and total wall-clock seconds per pass, the ratio per_run /
warm (total and per method), the run counts the sweep planned (its ``--dry-run``) and the load averages.
"""
import argparse
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

METHODS = ("LPPP", "GDA", "TaskRes", "CLAP", "TwoSFS", "ProLIP")
SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)
QUICK_SHOTS = (1, 4)
QUICK_SEEDS = (1,)
DATASET = "toy_shapes"
PASSES = ("fill", "warm", "per_run")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--shots", nargs="+", type=int, default=None, help=f"default {' '.join(map(str, SHOTS))}")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help=f"default {' '.join(map(str, SEEDS))}")
    p.add_argument("--quick", action="store_true",
                   help=f"shots {' '.join(map(str, QUICK_SHOTS))}, seed {' '.join(map(str, QUICK_SEEDS))} "
                        "(unless --shots / --seeds are given)")
    p.add_argument("--root", default=None, help="data root of the toy world (default: a folder under --work)")
    p.add_argument("--work", default=None, help="output trees and logs (default: a temporary folder, removed)")
    p.add_argument("--store-dir", default=None,
                   help="feature store folder (default: the store's default path, FEATURES.DIR empty)")
    p.add_argument("--max-load", type=float, default=None,
                   help="before each pass, wait until the 1-minute load average is below this")
    p.add_argument("--max-wait", type=float, default=1800.0, help="give up waiting for --max-load after this (s)")
    p.add_argument("--out", default=None, help="write the JSON here as well")
    args = p.parse_args(argv)
    args.shots = args.shots or list(QUICK_SHOTS if args.quick else SHOTS)
    args.seeds = args.seeds or list(QUICK_SEEDS if args.quick else SEEDS)
    return args


def sweep_command(method, shots, seeds, output_root, data_root, store_dir=None):
    """The ``python -m vlprompt.sweep`` command of a few-shot sweep of one method."""
    cmd = [sys.executable, "-m", "vlprompt.sweep", "--methods", f"{method}:toy", "--protocol", "few_shot",
           "--datasets", DATASET, "--shots", *map(str, shots), "--seeds", *map(str, seeds),
           "--root", data_root, "--output-root", output_root, "--jobs", "1"]
    if store_dir:  # --tag: one config folder name whatever the store folder (the sweep then skips a run done)
        cmd += ["--opts", "FEATURES.DIR", store_dir, "--tag", "bench"]
    return cmd


def plan(args, work):
    """[(pass, method, command, store folder to remove after it or None)] in the order they run: the fill
    pass one sweep per method; the warm and per-run passes one sweep per (method, shots, seed), the
    per-run one each with its own empty store folder (so both time the same commands, and each per-run
    run computes every feature it uses)."""
    data_root = args.root or osp.join(work, "data")
    steps = [("fill", m, sweep_command(m, args.shots, args.seeds, osp.join(work, "fill"), data_root,
                                       args.store_dir), None) for m in args.methods]
    for name in PASSES[1:]:
        for m in args.methods:
            for K in args.shots:
                for s in args.seeds:
                    store = osp.join(work, "stores", f"{m}_{K}_{s}") if name == "per_run" else None
                    steps.append((name, m, sweep_command(m, [K], [s], osp.join(work, name), data_root,
                                                         store or args.store_dir), store))
    return steps


def wait_for_load(max_load, max_wait):
    """Seconds waited until the 1-minute load average is below ``max_load``."""
    t0 = time.time()
    while os.getloadavg()[0] >= max_load:
        if time.time() - t0 > max_wait:
            sys.exit(f"Error: the 1-minute load average stayed at or above {max_load} for {max_wait:.0f} s "
                     f"(now {os.getloadavg()[0]:.2f}); run on a quieter machine or raise --max-load")
        time.sleep(5)
    return time.time() - t0


def planned_runs(cmd, env):
    """How many runs the sweep plans for ``cmd`` (its ``--dry-run``: ``# plan: N runs, ...``)."""
    proc = subprocess.run(cmd + ["--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True)
    m = re.search(r"# plan: (\d+) runs", proc.stdout)
    if proc.returncode != 0 or m is None:
        sys.exit(f"Error: the sweep could not plan {' '.join(cmd[3:])}:\n{proc.stderr[-2000:]}")
    return int(m.group(1))


def count_results(output_root):
    return sum("results.json" in files for _, _, files in os.walk(osp.join(output_root, "few_shot")))


def main(argv=None):
    args = parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="vlprompt_bench_fewshot_")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    steps = plan(args, work)
    # the sweep's own plan: a method whose card declares it eval-only is planned as one zero-shot run
    # (shots_0) per seed, whatever --shots says, so the counts are read from the sweep, not assumed
    runs = {m: planned_runs(cmd, env) for p, m, cmd, _ in steps if p == "fill"}
    report = {"dataset": DATASET, "methods": args.methods, "shots": args.shots, "seeds": args.seeds,
              "runs_per_method": runs, "runs_per_pass": sum(runs.values()), "jobs": 1,
              "store": args.store_dir or "default (FEATURES.DIR empty)",
              "cpu_count": os.cpu_count(), "passes": {}}
    short = [m for m in args.methods if runs[m] != len(args.shots) * len(args.seeds)]
    if short:
        report["note"] = (f"planned by the sweep with fewer runs than shots x seeds: {', '.join(short)} "
                          "(eval-only method cards are planned as one zero-shot run per seed)")
        print(f"[bench_fewshot_sweep] {report['note']}", file=sys.stderr, flush=True)
    for name in PASSES:
        waited = wait_for_load(args.max_load, args.max_wait) if args.max_load is not None else 0.0
        rec = {"waited_s": round(waited, 1), "load_before": os.getloadavg(), "methods": {}}
        for _, method, cmd, store in [s for s in steps if s[0] == name]:
            shots = cmd[cmd.index("--shots") + 1:cmd.index("--seeds")]
            seeds = cmd[cmd.index("--seeds") + 1:cmd.index("--root")]
            print(f"[bench_fewshot_sweep] {name}: {method} shots {' '.join(shots)} seeds {' '.join(seeds)}",
                  file=sys.stderr, flush=True)
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
            dt = time.perf_counter() - t
            if proc.returncode != 0:
                sys.exit(f"Error: the {name} sweep of {method} failed (exit {proc.returncode}); logs under "
                         f"{osp.join(work, name, 'sweep_logs')}\n{proc.stderr[-2000:]}")
            rec["methods"][method] = rec["methods"].get(method, 0.0) + dt
            if store:
                shutil.rmtree(store, ignore_errors=True)
        rec["methods"] = {m: round(v, 2) for m, v in rec["methods"].items()}
        rec["total_s"] = round(sum(rec["methods"].values()), 2)
        rec["load_after"] = os.getloadavg()
        rec["results_json"] = count_results(osp.join(work, name))
        if rec["results_json"] != report["runs_per_pass"]:
            sys.exit(f"Error: the {name} pass wrote {rec['results_json']} results.json, expected "
                     f"{report['runs_per_pass']} (see {work})")
        report["passes"][name] = rec
    warm, cold = report["passes"]["warm"], report["passes"]["per_run"]
    report["ratio_per_run_over_warm"] = {
        "total": round(cold["total_s"] / warm["total_s"], 2),
        **{m: round(cold["methods"][m] / warm["methods"][m], 2) for m in args.methods}}
    if args.work is None:  # kept after a failure, for its logs
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
