"""GPU check: every trainer's fp16 / amp / bf16 training step and evaluation against fp32, and timings.

For each trainer (built from its real config on fabricated classes, ViT-B/16 with random weights:
nothing is downloaded) and each precision, the trainer is built from the same seed (same weights),
then:

* **agreement**: the first training step's loss (``forward_backward`` from the same state) and the
  evaluation logits of a fixed batch are compared with fp32: every loss must be finite,
  ``|loss - loss_fp32| <= LOSS_TOL * max(1, |loss_fp32|)`` and
  ``max|logits - logits_fp32| <= LOGIT_TOL * max(1, max|logits_fp32|)``;
* **timings**: train step (median and min of ``--iters`` steps after ``--warmup``) and evaluation
  throughput (images/s over ``--eval-batches`` batches of ``--eval-batch`` images, text included).

One JSON (``--out``) holds the environment, the tolerances, one row per (trainer, precision) and
``ok``; the exit status is 1 if a check failed. ``benchmarks/gpu_check.sh`` runs the full check on one
CUDA GPU (<= 8 minutes); ``--device cpu --tiny`` is a dry run of the same code on a tiny random model
(used by the test suite).
"""
import argparse
import math
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)

from bench_trainers import CASES  # noqa: E402
from common import write_json  # noqa: E402

PRECISIONS = ("fp32", "fp16", "amp", "bf16")
LOSS_TOL = 0.05
LOGIT_TOL = 0.05


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny random backbone and few classes (dry run)")
    p.add_argument("--trainers", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    p.add_argument("--classes", type=int, default=None, help="label space (default 100; --tiny: 5)")
    p.add_argument("--iters", type=int, default=None, help="timed train steps (default 10; --tiny: 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --tiny: 0)")
    p.add_argument("--eval-batches", type=int, default=None, help="default 5; --tiny: 1")
    p.add_argument("--eval-batch", type=int, default=None, help="default 100; --tiny: 2")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new rows after this many seconds")
    p.add_argument("--out", default="", help="JSON path (default benchmarks/results/gpu_check_<device>.json)")
    args = p.parse_args(argv)
    tiny = args.tiny
    for name, full, small in (("classes", 100, 5), ("iters", 10, 1), ("warmup", 3, 0), ("eval_batches", 5, 1),
                              ("eval_batch", 100, 2)):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}")
    if "fp32" not in args.precisions:
        args.precisions = ["fp32"] + list(args.precisions)  # the reference every other precision is checked against
    if not args.out:
        args.out = osp.join(HERE, "results", f"gpu_check_{args.device}{'_tiny' if tiny else ''}.json")
    return args


def environment(device):
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
           "host": platform.node(), "cpu_threads": torch.get_num_threads()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    else:
        from vlprompt.clip.precision import cpu_supports_bf16

        env["cpu_bf16"] = cpu_supports_bf16()
    return env


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def check_row(trainer, prec, args, data_root, ref=None):
    """Build ``trainer`` at ``prec``; agreement with ``ref`` (the fp32 row's tensors) and timings."""
    import torch

    from common import build

    opts = [f"TRAINER.{trainer.upper()}.PREC", prec, "DATALOADER.TEST.BATCH_SIZE", str(args.eval_batch)]
    if args.tiny:
        opts += ["MODEL.BACKBONE.NAME", "test-vit-tiny", "DATALOADER.TRAIN_X.BATCH_SIZE", "2"]
    t0 = time.perf_counter()
    tr = build(trainer, CASES[trainer], args.classes, device=args.device, opts=opts, data_root=data_root)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    batch = next(iter(tr.train_loader_x))
    x_eval = [torch.randn(args.eval_batch, 3, 224, 224, generator=g).to(tr.device) for _ in range(args.eval_batches)]
    tr.epoch, tr.batch_idx, tr.num_batches = 0, 0, 10**9

    def evaluate():
        tr.set_model_mode("eval")
        if hasattr(tr.model, "text_cache"):
            tr.model.text_cache.clear()
        with torch.no_grad():
            return [tr.model_inference(x).float() for x in x_eval]

    logits = evaluate()[0].cpu()
    tr.set_model_mode("train")
    first = {k: float(v) for k, v in tr.forward_backward(batch).items() if isinstance(v, (int, float))}
    steps = []
    for i in range(args.warmup + args.iters):
        _sync(args.device)
        t = time.perf_counter()
        summary = tr.forward_backward(batch)
        _sync(args.device)
        if i >= args.warmup:
            steps.append(time.perf_counter() - t)
    last = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    evals = []
    for _ in range(max(1, args.iters // 5)):
        _sync(args.device)
        t = time.perf_counter()
        evaluate()
        _sync(args.device)
        evals.append(time.perf_counter() - t)
    n_img = args.eval_batch * args.eval_batches
    row = {
        "trainer": trainer, "requested": prec, "effective": tr.precision.mode,
        "autocast": str(tr.precision.autocast_dtype).replace("torch.", "") if tr.precision.autocast_dtype else None,
        "classes": args.classes, "batch": int(batch["img"].shape[0]), "build_s": build_s,
        "first_step": first, "last_step": last,
        "train_step_median_s": statistics.median(steps), "train_step_min_s": min(steps),
        "eval_images_per_s": n_img / statistics.median(evals), "eval_images": n_img,
        "finite": all(math.isfinite(v) for v in list(first.values()) + list(last.values()))
        and bool(torch.isfinite(logits).all()),
    }
    if args.device == "cuda":
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    checks = {"finite": row["finite"]}
    if ref is not None:
        loss, loss32 = first.get("loss"), ref["first_step"].get("loss")
        if loss is not None and loss32 is not None:
            row["loss_diff"] = abs(loss - loss32)
            checks["loss"] = row["loss_diff"] <= LOSS_TOL * max(1.0, abs(loss32))
        scale = float(ref["_logits"].abs().max())
        row["logit_max_abs_diff"] = float((logits - ref["_logits"]).abs().max())
        checks["logits"] = row["logit_max_abs_diff"] <= LOGIT_TOL * max(1.0, scale)
    row["checks"] = checks
    row["ok"] = all(checks.values())
    row["_logits"] = logits
    del tr
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (use --device cpu --tiny for a dry run)", file=sys.stderr)
        return 2
    data_root = tempfile.mkdtemp(prefix="vlprompt_gpu_check_")
    start = time.perf_counter()
    result = {"environment": environment(args.device), "tiny": args.tiny, "classes": args.classes,
              "tolerances": {"loss": f"|loss - loss_fp32| <= {LOSS_TOL} * max(1, |loss_fp32|)",
                             "logits": f"max|logits - logits_fp32| <= {LOGIT_TOL} * max(1, max|logits_fp32|)"},
              "rows": [], "skipped": [], "ok": True}
    for trainer in args.trainers:
        ref = None
        for prec in args.precisions:
            if time.perf_counter() - start > args.budget_s:
                result["skipped"].append(f"{trainer} {prec} (time budget of {args.budget_s:.0f} s spent)")
                continue
            print(f"[gpu_check] {trainer} {prec} ...", file=sys.stderr, flush=True)
            try:
                row = check_row(trainer, prec, args, data_root, ref)
            except Exception as e:  # one failing combination must not hide the others
                row = {"trainer": trainer, "requested": prec, "ok": False, "error": f"{type(e).__name__}: {e}"}
            if prec == "fp32" and "_logits" in row:
                ref = row
            clean = {k: v for k, v in row.items() if not k.startswith("_")}
            result["rows"].append(clean)
            result["ok"] = result["ok"] and clean["ok"]
            print(f"[gpu_check] {trainer} {prec}: " + ("ok" if clean["ok"] else f"FAILED {clean.get('checks') or clean.get('error')}")
                  + (f", step {clean['train_step_median_s'] * 1e3:.1f} ms, eval {clean['eval_images_per_s']:.0f} img/s"
                     if "train_step_median_s" in clean else ""), file=sys.stderr, flush=True)
            write_json(result, args.out)
    result["wall_s"] = time.perf_counter() - start
    write_json(result, args.out)
    print(f"[gpu_check] {'all checks passed' if result['ok'] else 'SOME CHECKS FAILED'}; wrote {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
