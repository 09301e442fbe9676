"""vlprompt against the official way of computing the same thing, side by side in one process.

For every trainer (built from its real config, ViT-B/16 with random weights, fabricated classes) and
every class count K: one training step (``forward_backward``: forward, backward and the optimiser
step, learned state restored before every call so both arms see the same weights) and one evaluation
(``--eval-batches`` test batches of ``--eval-batch`` images, text features included), each computed by
vlprompt and by the reference arm (:mod:`reference`), A/B interleaved after one warm-up each; median
and min of ``--reps`` repetitions, and the largest loss / logit difference between the arms.

    python benchmarks/bench_reference.py --trainers CoOp MaPLe APLe --classes 10 100 1000 \\
        --reps 5 --out benchmarks/results/reference_cpu.json
    python benchmarks/bench_reference.py --plot benchmarks/results/reference_cpu.json  # -> .png next to it

Progress goes to stderr; results are written after every (trainer, K) so an interrupted run keeps
what it measured.
"""
import argparse
import copy
import json
import os.path as osp
import statistics
import sys
import tempfile
import time

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)

from bench_trainers import CASES  # noqa: E402
from common import ab, build, sync, write_json  # noqa: E402

#: ``--small-batch``: the training batches of the rows measured before stop 7 (every prompt learner at 4 images,
#: CoCoOp at 1), kept as a labelled extra; the default is the config's own batch (CoOp / ProGrad / TCP /
#: CLIP-LoRA 32, KgCoOp 128, the base-to-novel configs of the other prompt learners 4, CoCoOp 1)
CPU_BATCH = {"CoOp": 4, "CoCoOp": 1, "KgCoOp": 4, "ProGrad": 4, "TCP": 4, "CLIPLoRA": 4}

#: ``--background``: a steady job started before a row and stopped after it, so the row measures both arms
#: on a busy machine. ``busy``: one core spinning in pure Python (one core taken by other work);
#: ``torch``: another 2-thread torch process running small matrix products in a loop (a second training
#: job on the same node: its OpenMP threads compete with both arms' threads for the cores)
BACKGROUND = {
    "none": None,
    "busy": "while True: pass",
    "torch": ("import torch\ntorch.set_num_threads(2)\nx = torch.randn(64, 512)\nw = torch.randn(512, 512)\n"
              "while True: y = (x @ w).relu().sum()"),
}


#: trainers that have a config case but whose official way the reference arm does not restate yet: asked for,
#: they are refused with this reason (never a TypeError halfway through a batch of rows)
NO_REFERENCE_ARM = {
    "RPO": "its text pass runs with an attention mask (the read-only prompts) that the official-way 77-token pass "
           "(benchmarks/reference.py) does not take yet",
    "MMA": "its adapters add to each block's residual, which the official-way 77-token pass "
           "(benchmarks/reference.py) does not take yet",
    "CoPrompt": "its training reads class descriptions, which the benchmark's fabricated dataset does not have",
}


def load_average():
    import os

    return os.getloadavg()[0]


def busy_cores(window_s=3.0):
    """CPU cores kept busy by all processes over the next ``window_s`` seconds (from /proc/stat; None where it
    does not exist). Unlike the 1-minute load average it does not remember the previous row for a minute."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle

    try:
        t0, i0 = snap()
        time.sleep(window_s)
        t1, i1 = snap()
    except (OSError, ValueError, IndexError):
        return None
    import os

    n = os.cpu_count() or 1
    return n * (1.0 - (i1 - i0) / max(1, t1 - t0))


def wait_for_load(max_load, max_wait_s, log=print, poll_s=10.0):
    """Wait until the machine is idle: the cores busy over 3 s (``busy_cores``; the 1-minute load average where
    /proc/stat is missing) below ``max_load``, at most ``max_wait_s``; returns the value reached. Raises
    ``RuntimeError`` when the machine stays busy, so a row is never taken on a loaded machine."""
    t0 = time.time()
    while True:
        busy = busy_cores()
        load = busy if busy is not None else load_average()
        if load < max_load:
            return load
        if time.time() - t0 >= max_wait_s:
            raise RuntimeError(f"the machine stayed busy ({load:.2f} >= --max-load {max_load}) for "
                               f"{max_wait_s:.0f} s: run the benchmark on an idle machine or raise --max-load")
        log(f"[ref] {load:.2f} cores busy (>= {max_load}): waiting ...")
        time.sleep(poll_s)


class background:
    """``with background("torch"):`` runs the steady job of ``BACKGROUND[kind]`` for the block's duration."""

    def __init__(self, kind):
        if kind not in BACKGROUND:
            raise ValueError(f"unknown background {kind!r}; one of {', '.join(BACKGROUND)}")
        self.kind, self.proc = kind, None

    def __enter__(self):
        import subprocess

        if BACKGROUND[self.kind]:
            self.proc = subprocess.Popen([sys.executable, "-c", BACKGROUND[self.kind]],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2.0)  # its imports done, it runs steadily before the first timing
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        return False


def _snapshot(tr):
    models = {n: copy.deepcopy(m.state_dict()) for n, m in tr._models.items()}
    optims = {n: copy.deepcopy(o.state_dict()) for n, o in tr._optims.items() if o is not None}
    return models, optims


def _restore(tr, snap):
    models, optims = snap
    for n, sd in models.items():
        tr._models[n].load_state_dict(sd)
    for n, sd in optims.items():
        tr._optims[n].load_state_dict(sd)


def _floats(summary):
    return {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}


def _commit():
    """The repository's commit (``+dirty`` with uncommitted changes to tracked files), or None."""
    import subprocess

    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, timeout=10)  # noqa: E731
        head = run("rev-parse", "--short", "HEAD").stdout.strip()
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _stats(ts):
    return {"median_s": statistics.median(ts), "min_s": min(ts), "times_s": ts}


def bench_one(trainer, n_classes, device, reps, eval_batches, eval_batch, data_root, batch_size=None, log=print,
              official_train_max=None, backbone=None, bg="none", max_load=None, max_wait_s=1800.0, small_batch=False):
    """One row: ``trainer`` at ``n_classes`` classes, both arms timed and compared. ``backbone``: a
    ``MODEL.BACKBONE.NAME`` other than the config's (the tests use a tiny one). ``batch_size`` /
    ``eval_batch`` None or 0: the config's ``DATALOADER.TRAIN_X.BATCH_SIZE`` / ``DATALOADER.TEST.BATCH_SIZE``
    (``small_batch``: the small CPU batch of ``CPU_BATCH`` instead of the config's training batch). ``bg``: a
    ``BACKGROUND`` job running during the row; ``max_load``: wait for the load average to fall below it
    first (the row records the load average before and after)."""
    import torch

    from vlprompt.engine.methods import method_spec

    opts = ["MODEL.BACKBONE.NAME", backbone] if backbone else []
    node = method_spec(trainer).cfg_node
    if device == "cpu" and node:
        # fp32 on a CPU: the configs' amp / bf16 would run as bf16 autocast on a CPU with native bf16, and
        # the arms are compared to float rounding (fp16 falls back to fp32 on a CPU anyway)
        opts += [f"TRAINER.{node}.PREC", "fp32"]
    bs = batch_size or (CPU_BATCH.get(trainer) if small_batch else None)
    if bs:
        opts += ["DATALOADER.TRAIN_X.BATCH_SIZE", str(bs)]
    torch.manual_seed(0)
    tr = build(trainer, CASES[trainer], n_classes, device=device, opts=opts, data_root=data_root)
    batch = next(iter(tr.train_loader_x))
    eval_batch = eval_batch or int(tr.cfg.DATALOADER.TEST.BATCH_SIZE)
    busy_before = wait_for_load(max_load, max_wait_s, log) if max_load is not None else busy_cores()
    load_before = load_average()
    with background(bg):
        row = _timed_row(tr, batch, trainer, n_classes, device, reps, eval_batches, eval_batch, log,
                         official_train_max)
    row.update(background=bg, busy_cores_before=busy_before, load_before=load_before, load_after=load_average(),
               batch_source="small CPU batch" if bs else "config")
    return row


def _timed_row(tr, batch, trainer, n_classes, device, reps, eval_batches, eval_batch, log, official_train_max):
    import torch

    from reference import official_way

    tr.epoch, tr.batch_idx, tr.num_batches = 0, 0, 10**9
    snap = _snapshot(tr)

    def step():
        _restore(tr, snap)
        tr.set_model_mode("train")
        return _floats(tr.forward_backward(batch))

    def step_ref():
        with official_way(tr):
            return step()

    skip_train_ref = official_train_max is not None and n_classes > official_train_max
    if skip_train_ref:
        # the official training step keeps K x 77 tokens of activations per text block for the backward
        # pass (about 0.43 MB per token at ViT-B/16 in fp32): at K = 1000 that is ~33 GB, more than this
        # machine has, so only vlprompt's arm is timed (the row says so)
        log(f"[ref] {trainer} K={n_classes}: train step x{reps} (vlprompt only: official arm skipped above "
            f"K={official_train_max}) ...")
        s_ours, t_ours = step(), []
        for _ in range(reps):
            sync(device)
            t = time.perf_counter()
            step()
            sync(device)
            t_ours.append(time.perf_counter() - t)
        s_ref, t_ref, loss_diff = None, None, None
    else:
        log(f"[ref] {trainer} K={n_classes}: train step x{reps} (A/B) ...")
        s_ours, s_ref, t_ours, t_ref = ab(step, step_ref, reps, device)
        loss_diff = max(abs(s_ours[k] - s_ref[k]) for k in s_ours if k in s_ref and "acc" not in k)
    _restore(tr, snap)

    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(eval_batch, 3, 224, 224, generator=g).to(tr.device) for _ in range(eval_batches)]

    def evaluate():
        tr.set_model_mode("eval")
        if hasattr(tr.model, "text_cache"):
            tr.model.text_cache.clear()  # a fresh evaluation: text features once, then cached
        with torch.no_grad():
            return torch.cat([tr.model_inference(x) for x in xs])

    def evaluate_ref():
        with official_way(tr):
            return evaluate()

    log(f"[ref] {trainer} K={n_classes}: evaluation ({eval_batches} x {eval_batch} images) x{reps} (A/B) ...")
    l_ours, l_ref, e_ours, e_ref = ab(evaluate, evaluate_ref, reps, device)
    n_img = eval_batches * eval_batch
    row = {
        "trainer": trainer, "classes": n_classes, "device": device, "commit": _commit(),
        "batch": int(batch["img"].shape[0]),
        "eval_images": n_img, "eval_batch": eval_batch, "reps": reps, "torch_threads": torch.get_num_threads(),
        "train_ours": _stats(t_ours), "train_official": _stats(t_ref) if t_ref else None,
        "train_official_skipped": (f"not run above K={official_train_max}: its activations do not fit in "
                                   "this machine's memory") if skip_train_ref else None,
        "eval_ours": _stats(e_ours), "eval_official": _stats(e_ref),
        "train_ratio_median": statistics.median(t_ref) / statistics.median(t_ours) if t_ref else None,
        "train_ratio_min": min(t_ref) / min(t_ours) if t_ref else None,
        "eval_ratio_median": statistics.median(e_ref) / statistics.median(e_ours),
        "eval_ratio_min": min(e_ref) / min(e_ours),
        "eval_images_per_s_ours": n_img / statistics.median(e_ours),
        "eval_images_per_s_official": n_img / statistics.median(e_ref),
        "loss_ours": s_ours, "loss_official": s_ref, "max_loss_diff": loss_diff,
        "max_logit_diff": float((l_ours - l_ref).abs().max()),
    }
    tr_txt = f"{row['train_ratio_median']:.2f}x" if t_ref else f"{statistics.median(t_ours):.2f} s (official not run)"
    log(f"[ref] {trainer} K={n_classes}: train {tr_txt}, eval {row['eval_ratio_median']:.2f}x, "
        f"loss diff {_e(loss_diff)}, logit diff {row['max_logit_diff']:.1e}")
    return row


def _e(v):
    return "-" if v is None else f"{v:.1e}"


def table(rows):
    lines = ["| trainer | K | batch | eval batch | background | busy before | load before / after | "
             "train official (s) | train vlprompt (s) | train ratio | eval official (s) | eval vlprompt (s) | "
             "eval ratio | max loss diff | max logit diff | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("train_official"):
            t_off = f"{r['train_official']['median_s']:.2f}"
            t_ratio = f"{r['train_ratio_median']:.2f}x (min {r['train_ratio_min']:.2f}x)"
        else:
            t_off, t_ratio = "not run (memory)", "-"
        load = (f"{r['load_before']:.1f} / {r['load_after']:.1f}" if r.get("load_before") is not None else "-")
        busy = f"{r['busy_cores_before']:.2f}" if r.get("busy_cores_before") is not None else "-"
        lines.append(
            f"| {r['trainer']} | {r['classes']} | {r.get('batch', '-')} | {r.get('eval_batch', '-')} | "
            f"{r.get('background', 'none')} | {busy} | {load} | {t_off} | {r['train_ours']['median_s']:.2f} | {t_ratio} | "
            f"{r['eval_official']['median_s']:.2f} | {r['eval_ours']['median_s']:.2f} | "
            f"{r['eval_ratio_median']:.2f}x (min {r['eval_ratio_min']:.2f}x) | "
            f"{_e(r.get('max_loss_diff'))} | {r['max_logit_diff']:.1e} | {r.get('commit') or '-'} |")
    return "\n".join(lines)


def plot(rows, out_png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for name in sorted({r["trainer"] for r in rows}):
        rs = sorted((r for r in rows if r["trainer"] == name), key=lambda r: r["classes"])
        ks = [r["classes"] for r in rs]
        for arm, style in (("ours", "-o"), ("official", "--x")):
            tk = [r["classes"] for r in rs if r.get(f"train_{arm}")]
            line = axes[0].plot(tk, [r[f"train_{arm}"]["median_s"] for r in rs if r.get(f"train_{arm}")], style,
                                label=f"{name} ({'vlprompt' if arm == 'ours' else 'official way'})")
            axes[1].plot(ks, [r[f"eval_images_per_s_{arm}"] for r in rs], style, color=line[0].get_color(),
                         label=f"{name} ({'vlprompt' if arm == 'ours' else 'official way'})")
        c = line[0].get_color()
        tk = [r["classes"] for r in rs if r.get("train_ratio_median")]
        axes[2].plot(tk, [r["train_ratio_median"] for r in rs if r.get("train_ratio_median")], "-o", color=c,
                     label=f"{name} train")
        axes[2].plot(ks, [r["eval_ratio_median"] for r in rs], ":s", color=c, label=f"{name} eval")
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[2].set(xscale="log", xlabel="classes K", ylabel="official / vlprompt (median)",
                title="speed-up over the official way (A/B)")
    axes[2].legend(fontsize=7)
    axes[0].set(xscale="log", yscale="log", xlabel="classes K", ylabel="train step (s, median)", title="train step")
    axes[1].set(xscale="log", yscale="log", xlabel="classes K", ylabel="eval images / s", title="evaluation throughput")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    dev = rows[0]["device"] if rows else "?"
    fig.suptitle(f"ViT-B/16 (random weights), {dev}: vlprompt vs the official way")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--trainers", nargs="+", default=[t for t in CASES if t not in NO_REFERENCE_ARM],
                   choices=list(CASES), help="default: every trainer with a reference arm")
    p.add_argument("--classes", nargs="+", type=int, default=[50])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--eval-batches", type=int, default=1)
    p.add_argument("--eval-batch", type=int, default=0,
                   help="images per evaluation batch (0: the config's DATALOADER.TEST.BATCH_SIZE, 100 in the configs)")
    p.add_argument("--batch-size", type=int, default=0, help="training batch (0: the config's)")
    p.add_argument("--small-batch", action="store_true",
                   help="the small training batches of the earlier CPU rows (prompt learners 4, CoCoOp 1)")
    p.add_argument("--background", default="none", choices=list(BACKGROUND),
                   help="a steady job during each row: busy (one core spinning), torch (a 2-thread torch loop)")
    p.add_argument("--max-load", type=float, default=None, metavar="X",
                   help="before each row, wait until fewer than X cores are busy (over 3 s, /proc/stat) and record "
                        "that and the 1-minute load average")
    p.add_argument("--max-wait", type=float, default=1800.0, metavar="S", help="give up waiting after S seconds")
    p.add_argument("--official-train-max-classes", type=int, default=None, metavar="K",
                   help="above K classes, time only vlprompt's training step (the official one does not fit in memory)")
    p.add_argument("--out", default="")
    p.add_argument("--append", action="store_true", help="add rows to an existing --out file")
    p.add_argument("--plot", default="", metavar="JSON", help="only draw the plot for a results file")
    p.add_argument("--table", default="", metavar="JSON", help="only print the markdown table of a results file")
    args = p.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(table(json.load(f)))
        return 0
    if args.plot:
        with open(args.plot) as f:
            rows = json.load(f)
        print(plot(rows, osp.splitext(args.plot)[0] + ".png"))
        return 0
    if args.reps < 1:
        p.error("--reps must be >= 1")
    refused = [t for t in args.trainers if t in NO_REFERENCE_ARM]
    if refused:
        print(f"Error: no reference arm for {refused[0]}: {NO_REFERENCE_ARM[refused[0]]}", file=sys.stderr)
        return 2
    rows = []
    if args.append and args.out and osp.exists(args.out):
        with open(args.out) as f:
            rows = json.load(f)
    data_root = tempfile.mkdtemp(prefix="vlprompt_ref_")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    for t in args.trainers:
        for k in args.classes:
            rows.append(bench_one(t, k, args.device, args.reps, args.eval_batches, args.eval_batch, data_root,
                                  args.batch_size or None, log, args.official_train_max_classes,
                                  bg=args.background, max_load=args.max_load, max_wait_s=args.max_wait,
                                  small_batch=args.small_batch))
            if args.out:
                write_json(rows, args.out)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
