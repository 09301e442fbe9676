#!/usr/bin/env python
"""Kill a small sweep at random points, resume it, and check that nothing was lost or changed.

    python benchmarks/reliability.py                      # 12 kill points (every kind once), ~20 min on 2 cores
    python benchmarks/reliability.py --trials 24 --seed 3 --out /tmp/rel_bench --json report.json

What it does (real processes and signals, on the toy world with the shipped toy CLIP, CPU, offline):

1. runs the sweep ``python -m vlprompt.sweep --methods ZeroshotCLIP:CoOp/toy CoOp:toy --protocol base2new
   --datasets toy_shapes --seeds 1 --jobs 1 --opts OPTIM.MAX_EPOCH 3`` once, uninterrupted: the reference
   (its results.json metrics and its ``python -m vlprompt.results`` tables);
2. for each trial, runs the same sweep into a fresh output tree and, at a random moment, sends one signal
   (SIGKILL, SIGINT or SIGTERM) to one target: the sweep runner (SIGINT/SIGTERM go to its whole process
   group, as Ctrl-C or a hang-up would; SIGKILL to the runner alone, as the OOM killer would) or the
   ``train.py`` job running at that moment; the runner's stdout is either piped (``... | cat``, as
   ``| tee sweep.log``) or a file. The kinds cycle so that every (signal, target, piped) combination is tried;
   the moments are random (``--seed``);
3. records what the signal left: the runner's exit status, ``train.py`` jobs still alive after the runner
   exited (orphans), and the killed run's log.txt;
4. resumes the sweep (the same command, up to 3 times; while an orphan still runs, its folder must be
   refused by the output-folder lock), then checks that every run's metrics and the final tables equal the
   reference's, and that no partial ``*.tmp`` file or lock file is left in the output tree.

5. resume with a changed config (``--changed-config only`` runs just this part): one ``train.py`` run of CoOp
   (the sweep's base-class training command) is killed with SIGKILL after its first epoch, then started again
   with each of several changed configs (``OPTIM.MAX_EPOCH``, ``OPTIM.LR``, ``TRAINER.COOP.N_CTX``, ``--seed``,
   ``TEST.FINAL_MODEL``): each must be refused with one ``Error: Cannot resume ...`` line, exit 2, and leave every
   file of the folder unchanged; then it is resumed with a key that is safe to change (``TRAIN.PRINT_FREQ``),
   which must end with exit 0, record the change in results.json (``resume.changed_keys``) and give the
   reference sweep's metrics for that run.

The report (stdout, and ``--json``) gives how many kill points were tried and, per check, how many held.
Timings are not measured: this is a correctness benchmark. Expected under SIGKILL of the runner (the OOM
killer, ``timeout -s KILL``): on Linux its jobs die with it (each job is started with ``PR_SET_PDEATHSIG``),
so no orphan is left and the rerun starts them again from their last checkpoints; a trial that leaves an
orphan counts as failed. Elsewhere a killed process cannot stop its children: the output-folder lock then
keeps the resumed sweep out of their folders until they end (``resumed_job_refused_by_lock``).
"""
import argparse
import glob
import itertools
import json
import os
import os.path as osp
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def sweep_cmd(args, out):
    return [sys.executable, "-m", "vlprompt.sweep", "--methods", *args.methods, "--protocol", "base2new",
            "--datasets", args.dataset, "--seeds", "1", "--root", args.data_root, "--output-root", out,
            "--jobs", "1", "--opts", "OPTIM.MAX_EPOCH", str(args.epochs)]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="0")
    e.pop("VLPROMPT_DEBUG", None)
    return e


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def find_procs(out, needle):
    """pids of live processes whose command line holds ``needle`` and the output root ``out``."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            c = cmdline(int(d))
            if needle in c and out in c:
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if f.read().split(")")[-1].split()[0] == "Z":
                            continue
                except OSError:
                    continue
                pids.append(int(d))
    return sorted(pids)


def group_members(pgid):
    """pids of the live processes of process group ``pgid``."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                pids.append(int(d))
    return pids


def jobs_of(out):
    return find_procs(out, "train.py")


def start_sweep(args, out, piped, log):
    cmd = sweep_cmd(args, out)
    if piped:
        shell = "set -o pipefail; " + " ".join(map(_q, cmd)) + f" 2>&1 | cat > {_q(log)}"
        return subprocess.Popen(["bash", "-c", shell], cwd=REPO, env=env(), start_new_session=True)
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _q(s):
    import shlex

    return shlex.quote(str(s))


def run_to_end(args, out, log):
    with open(log, "a") as f:
        return subprocess.run(sweep_cmd(args, out), cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT).returncode


def tables(out):
    p = subprocess.run([sys.executable, "-m", "vlprompt.results", out], cwd=REPO, env=env(), capture_output=True,
                       text=True)
    return p.stdout


def metrics(out):
    res = {}
    for p in sorted(glob.glob(osp.join(out, "**", "results.json"), recursive=True)):
        with open(p) as f:
            res[osp.relpath(osp.dirname(p), out)] = json.load(f)["metrics"]
    return res


def leftovers(out):
    bad = []
    for dirpath, dirnames, filenames in os.walk(out):
        for fn in filenames:
            if fn.endswith(".tmp") or fn == ".vlprompt.lock":
                bad.append(osp.relpath(osp.join(dirpath, fn), out))
    return bad


def wait_gone(pids, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        pids = [p for p in pids if cmdline(p)]
        if not pids:
            return []
        time.sleep(0.2)
    return [p for p in pids if cmdline(p)]


def trial(args, i, kind, rng, ref, duration, work):
    sig_name, target, piped = kind
    sig = SIGNALS[sig_name]
    out = osp.join(work, f"trial{i:02d}")
    log = osp.join(work, f"trial{i:02d}.sweep.log")
    rec = {"trial": i, "signal": sig_name, "target": target, "piped": piped}
    proc = start_sweep(args, out, piped, log)
    at = rng.uniform(2.0, max(3.0, 0.9 * duration))
    rec["at_s"] = round(at, 1)
    t0 = time.time()
    victim = None
    while time.time() - t0 < at and proc.poll() is None:
        time.sleep(0.1)
    if proc.poll() is not None:
        rec["note"] = "the sweep ended before the kill point"
    elif target == "runner":
        runner = find_procs(out, "vlprompt.sweep")
        runner = [p for p in runner if "bash" not in cmdline(p).split()[0]]
        victim = runner[0] if runner else proc.pid
        if sig == signal.SIGKILL:
            os.kill(victim, sig)
        else:  # Ctrl-C / hang-up reach the pipeline's processes (runner and cat), not the shell above them
            pgid = os.getpgid(proc.pid)
            for pid in group_members(pgid):
                if pid != proc.pid or not piped:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
    else:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            running = jobs_of(out)
            if running:
                victim = running[0]
                rec["victim_cmd"] = "eval-only" if "--eval-only" in cmdline(victim) else "train"
                os.kill(victim, sig)
                break
            time.sleep(0.1)
        if victim is None:
            rec["note"] = "no job was running at the kill point"
    rec["killed"] = victim is not None
    try:
        rc = proc.wait(timeout=30 if target == "runner" else 600)
    except subprocess.TimeoutExpired:
        rc = None
    rec["runner_rc"] = rc  # piped: the pipeline's status (bash with pipefail)
    rec["runner_exited"] = rc is not None
    if rc is None:  # the runner ignored the signal: stop it for good (and record that)
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        proc.wait()
    time.sleep(1.0)
    orphans = jobs_of(out)
    rec["orphans"] = len(orphans)
    # resume: while an orphan still runs, the lock must keep the resumed sweep out of its folder
    attempts, refused = [], 0
    for _ in range(3):
        alive = jobs_of(out)
        rc = run_to_end(args, out, log)
        attempts.append(rc)
        if alive:
            for p in glob.glob(osp.join(out, "sweep_logs", "**", "*.log"), recursive=True):
                with open(p, errors="replace") as f:
                    if "is in use by process" in f.read():
                        refused += 1
            wait_gone(alive, 600)
        if rc == 0:
            break
    rec["resume_rcs"] = attempts
    rec["lock_refusals"] = refused
    rec["resumed_ok"] = attempts[-1] == 0
    got = metrics(out)
    rec["metrics_equal"] = got == ref["metrics"]
    if not rec["metrics_equal"]:
        rec["metrics_diff"] = {k: (ref["metrics"].get(k), got.get(k)) for k in set(ref["metrics"]) | set(got)
                               if ref["metrics"].get(k) != got.get(k)}
    rec["tables_equal"] = tables(out) == ref["tables"]
    rec["leftovers"] = leftovers(out)
    empty_logs = [osp.relpath(p, out) for p in glob.glob(osp.join(out, "base2new", "**", "log.txt*"), recursive=True)
                  if osp.getsize(p) == 0]
    rec["empty_logs"] = empty_logs
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return rec


CHANGED_CONFIGS = (
    ("OPTIM.MAX_EPOCH", ["OPTIM.MAX_EPOCH", "5"]),
    ("OPTIM.LR", ["OPTIM.LR", "0.005"]),
    ("TRAINER.COOP.N_CTX", ["TRAINER.COOP.N_CTX", "8"]),
    ("SEED", ["--seed", "2"]),
    ("TEST.FINAL_MODEL", ["TEST.FINAL_MODEL", "best_val"]),
)


def _snapshot(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for fn in files:
            if fn == ".vlprompt.lock":  # the dead run's lock: taken over and released by the next run
                continue
            path = osp.join(dirpath, fn)
            with open(path, "rb") as f:
                out[osp.relpath(path, folder)] = (os.stat(path).st_mtime_ns, f.read())
    return out


def changed_config_check(args, work, ref):
    """Item 5 of the module docstring; returns its record."""
    out = osp.join(work, "changed_config")
    shutil.rmtree(out, ignore_errors=True)

    def argv(seed="1", opts=()):
        a = ["--root", args.data_root, "--seed", seed, "--trainer", "CoOp", "--dataset-config-file",
             "configs/datasets/toy_shapes.yaml", "--config-file", "configs/trainers/CoOp/toy.yaml",
             "--output-dir", out, "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
             "OPTIM.MAX_EPOCH", str(args.epochs)]
        return [sys.executable, "train.py"] + a + list(opts)

    rec = {"refusals": {}, "safe_resume": None}
    proc = subprocess.Popen(argv(), cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = False
    for line in proc.stdout:
        if "model-last.pth.tar" in line:
            proc.kill()
            killed = True
            break
    proc.wait()
    proc.stdout.close()
    rec["killed_after_epoch_1"] = killed
    if not killed:
        rec["note"] = "the run ended before its first resume point"
        return rec
    for key, opts in CHANGED_CONFIGS:
        before = _snapshot(out)
        cmd = argv(seed=opts[1], opts=()) if opts[0] == "--seed" else argv(opts=opts)
        p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True)
        err = p.stderr.strip().splitlines()
        rec["refusals"][key] = {
            "rc": p.returncode,
            "one_error_line": len(err) == 1 and err[0].startswith("Error: Cannot resume") and key in err[0],
            "folder_unchanged": _snapshot(out) == before,
            "message": err[-1][:300] if err else "",
        }
    p = subprocess.run(argv(opts=["TRAIN.PRINT_FREQ", "5"]), cwd=REPO, env=env(), capture_output=True, text=True)
    safe = {"rc": p.returncode, "resumed": "Previous epoch: 1" in p.stdout}
    path = osp.join(out, "results.json")
    if osp.isfile(path):
        with open(path) as f:
            got = json.load(f)
        safe["changed_keys"] = (got.get("resume") or {}).get("changed_keys")
        refs = [m for k, m in ref["metrics"].items() if "train_base" in k and f"{os.sep}CoOp{os.sep}" in k]
        safe["metrics_equal_reference"] = bool(refs) and got["metrics"] == refs[0]
    rec["safe_resume"] = safe
    return rec


def changed_config_ok(rec):
    safe = rec.get("safe_resume") or {}
    return (rec.get("killed_after_epoch_1") and all(
        r["rc"] == 2 and r["one_error_line"] and r["folder_unchanged"] for r in rec["refusals"].values())
        and safe.get("rc") == 0 and safe.get("resumed") and safe.get("changed_keys") == {"TRAIN.PRINT_FREQ": [10, 5]}
        and safe.get("metrics_equal_reference"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=12, help="kill points to try (12 = each kind once)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    p.add_argument("--methods", nargs="+", default=["ZeroshotCLIP:CoOp/toy", "CoOp:toy"])
    p.add_argument("--dataset", default="toy_shapes")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data-root", default=None, help="toy data root (default: a temporary folder)")
    p.add_argument("--out", default=None, help="work folder (default: a temporary folder, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep every trial's output tree")
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("--changed-config", choices=("yes", "no", "only"), default="yes",
                   help="also (yes, default), never (no) or only (only) check the resume with a changed config")
    p.add_argument("--kinds", nargs="+", default=None, metavar="SIGNAL:TARGET:piped|file",
                   help="only these kill kinds, e.g. SIGINT:runner:piped SIGTERM:runner:piped")
    args = p.parse_args(argv)
    work = args.out or tempfile.mkdtemp(prefix="vlprompt_reliability_")
    os.makedirs(work, exist_ok=True)
    args.data_root = osp.abspath(args.data_root or osp.join(work, "data"))
    rng = random.Random(args.seed)

    ref_out = osp.join(work, "reference")
    shutil.rmtree(ref_out, ignore_errors=True)
    t0 = time.time()  # (the first sweep also builds the toy data: the kill points then cover a wider span)
    rc = run_to_end(args, ref_out, osp.join(work, "reference.sweep.log"))
    duration = time.time() - t0
    ref = {"metrics": metrics(ref_out), "tables": tables(ref_out)}
    if rc != 0 or not ref["metrics"]:
        print(f"the reference sweep failed (rc {rc}); see {work}/reference.sweep.log", file=sys.stderr)
        return 1
    print(f"reference sweep: {len(ref['metrics'])} runs, exit 0 (about {duration:.0f} s); kill points drawn in "
          f"[2, {0.9 * duration:.0f}] s")

    changed = None
    if args.changed_config != "no":
        changed = changed_config_check(args, work, ref)
        for key, r in changed["refusals"].items():
            print(f"resume with another {key}: rc {r['rc']}, one Error line {r['one_error_line']}, "
                  f"folder unchanged {r['folder_unchanged']}")
        print(f"resume with a safe key changed (TRAIN.PRINT_FREQ): {changed['safe_resume']}")
        print(f"resume with a changed config: {'held' if changed_config_ok(changed) else 'FAILED'}", flush=True)
        if args.changed_config == "only":
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"changed_config": changed}, f, indent=2)
            if not args.out and not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            return 0 if changed_config_ok(changed) else 1

    kinds = list(itertools.product(["SIGKILL", "SIGINT", "SIGTERM"], ["runner", "job"], [False, True]))
    if args.kinds:
        wanted = {tuple(k.split(":")) for k in args.kinds}
        kinds = [k for k in kinds if (k[0], k[1], "piped" if k[2] else "file") in wanted]
        if not kinds:
            p.error(f"no kill kind matches {args.kinds}")
    rng.shuffle(kinds)
    records = []
    for i in range(args.trials):
        kind = kinds[i % len(kinds)]
        rec = trial(args, i, kind, rng, ref, duration, work)
        records.append(rec)
        ok = rec["resumed_ok"] and rec["metrics_equal"] and rec["tables_equal"] and not rec["leftovers"]
        print(f"[{i + 1}/{args.trials}] {rec['signal']:7s} -> {rec['target']:6s} {'piped' if rec['piped'] else 'file '} "
              f"at {rec['at_s']:5.1f}s: runner rc {rec['runner_rc']}, orphans {rec['orphans']}, "
              f"resume rcs {rec['resume_rcs']}, lock refusals {rec['lock_refusals']}, "
              f"results {'equal' if rec['metrics_equal'] else 'DIFFER'}, tables {'equal' if rec['tables_equal'] else 'DIFFER'}, "
              f"leftovers {len(rec['leftovers'])}{'' if ok else '  <-- FAILED'}"
              + (f" ({rec['note']})" if rec.get("note") else ""), flush=True)

    def count(pred, subset=None):
        rs = [r for r in records if (subset is None or subset(r))]
        return f"{sum(1 for r in rs if pred(r))}/{len(rs)}"

    graceful = lambda r: r["target"] == "runner" and r["signal"] != "SIGKILL" and r["killed"]  # noqa: E731
    summary = {
        "kill_points": len(records),
        "signal_delivered": count(lambda r: r["killed"]),
        "resumed_to_exit_0": count(lambda r: r["resumed_ok"]),
        "metrics_equal_reference": count(lambda r: r["metrics_equal"]),
        "tables_equal_reference": count(lambda r: r["tables_equal"]),
        "no_tmp_or_lock_left": count(lambda r: not r["leftovers"]),
        "no_empty_log": count(lambda r: not r["empty_logs"]),
        "runner_SIGINT_SIGTERM_no_orphans": count(lambda r: r["orphans"] == 0, graceful),
        "runner_SIGINT_SIGTERM_no_orphans_piped": count(lambda r: r["orphans"] == 0, lambda r: graceful(r) and r["piped"]),
        "runner_SIGKILL_no_orphans": count(
            lambda r: r["orphans"] == 0, lambda r: r["target"] == "runner" and r["signal"] == "SIGKILL" and r["killed"]),
        "resumed_job_refused_by_lock_(orphan_alive)": sum(r["lock_refusals"] for r in records),
    }
    if changed is not None:
        summary["resume_with_changed_config_refused_and_safe_keys_applied"] = "1/1" if changed_config_ok(changed) else "0/1"
    print("\nsummary (held / tried, or a count):")
    for k, v in summary.items():
        print(f"  {k:42s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "trials": records, "reference_runs": sorted(ref["metrics"]),
                       "changed_config": changed}, f, indent=2)
    if not args.out and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    # every signal, SIGKILL of the runner included, must leave no job behind (on Linux the runner's jobs
    # get SIGKILL when it dies: PR_SET_PDEATHSIG); elsewhere the lock keeps a resumed sweep out of them
    orphans_fail = sys.platform.startswith("linux")
    failed = [r for r in records if not (r["resumed_ok"] and r["metrics_equal"] and r["tables_equal"]
                                          and not r["leftovers"] and not (orphans_fail and r["orphans"]))]
    return 1 if failed or (changed is not None and not changed_config_ok(changed)) else 0


if __name__ == "__main__":
    sys.exit(main())
