"""torch.compile on vlprompt's training step and evaluation: does it pay off?

For each trainer (ViT-B/16, random weights, real config, K fabricated classes): the trainer's own
forward (``model.forward``) is wrapped in ``torch.compile`` (inductor, default mode) on a second,
identical trainer; the first call (compilation) is timed on its own, then the training step
(``forward_backward``, learned state restored before every call) and one evaluation batch run A/B
interleaved, eager vs compiled, median and min of ``--reps``; the loss and logit differences are
reported. Compilation is per class count and input shape (``dynamic=False``), so its cost is paid
again for every new K or batch size.

    python benchmarks/bench_compile.py --trainers CoOp MaPLe VPT --classes 50 --reps 5 \\
        --out benchmarks/results/compile_cpu.json
"""
import argparse
import os.path as osp
import statistics
import sys
import tempfile
import time

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)

from bench_reference import CPU_BATCH, _floats, _restore, _snapshot, ab, write_json  # noqa: E402
from bench_trainers import CASES  # noqa: E402
from common import build, sync  # noqa: E402


def bench_one(trainer, k, device, reps, eval_batch, data_root, log):
    import torch

    opts = []
    bs = CPU_BATCH.get(trainer) if device == "cpu" else None
    if bs:
        opts += ["DATALOADER.TRAIN_X.BATCH_SIZE", str(bs)]
    arms = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        tr = build(trainer, CASES[trainer], k, device=device, opts=opts, data_root=data_root)
        tr.epoch, tr.batch_idx, tr.num_batches = 0, 0, 10**9
        arms[name] = tr
    batch = next(iter(arms["eager"].train_loader_x))
    snaps = {n: _snapshot(t) for n, t in arms.items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(eval_batch, 3, 224, 224, generator=g)

    def step(name):
        def run():
            tr = arms[name]
            _restore(tr, snaps[name])
            tr.set_model_mode("train")
            return _floats(tr.forward_backward(batch))
        return run

    def evaluate(name):
        def run():
            tr = arms[name]
            tr.set_model_mode("eval")
            if hasattr(tr.model, "text_cache"):
                tr.model.text_cache.clear()
            with torch.no_grad():
                return tr.model_inference(x.to(tr.device))
        return run

    model = arms["compiled"].model
    model.forward = torch.compile(model.forward, dynamic=False)
    log(f"[compile] {trainer} K={k}: compiling (train step) ...")
    sync(device)
    t0 = time.perf_counter()
    step("compiled")()
    compile_train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate("compiled")()
    compile_eval_s = time.perf_counter() - t0
    log(f"[compile] {trainer} K={k}: first calls {compile_train_s:.1f} s (train) / {compile_eval_s:.1f} s (eval); "
        f"timing x{reps} (A/B) ...")
    s_e, s_c, t_e, t_c = ab(step("eager"), step("compiled"), reps, device)
    l_e, l_c, e_e, e_c = ab(evaluate("eager"), evaluate("compiled"), reps, device)
    row = {
        "trainer": trainer, "classes": k, "device": device, "reps": reps, "batch": int(batch["img"].shape[0]),
        "eval_batch": eval_batch, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "first_call_train_s": compile_train_s, "first_call_eval_s": compile_eval_s,
        "train_eager": t_e, "train_compiled": t_c, "eval_eager": e_e, "eval_compiled": e_c,
        "train_speedup_median": statistics.median(t_e) / statistics.median(t_c),
        "train_speedup_min": min(t_e) / min(t_c),
        "eval_speedup_median": statistics.median(e_e) / statistics.median(e_c),
        "eval_speedup_min": min(e_e) / min(e_c),
        "max_loss_diff": max(abs(s_e[n] - s_c[n]) for n in s_e if n in s_c and "acc" not in n),
        "max_logit_diff": float((l_e - l_c).abs().max()),
    }
    log(f"[compile] {trainer} K={k}: train {row['train_speedup_median']:.2f}x, eval {row['eval_speedup_median']:.2f}x "
        f"(compiled vs eager), loss diff {row['max_loss_diff']:.1e}, logit diff {row['max_logit_diff']:.1e}")
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--trainers", nargs="+", default=["CoOp", "MaPLe", "VPT"], choices=list(CASES))
    p.add_argument("--classes", nargs="+", type=int, default=[50])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    data_root = tempfile.mkdtemp(prefix="vlprompt_compile_")
    rows = []
    for t in args.trainers:
        for k in args.classes:
            try:
                rows.append(bench_one(t, k, args.device, args.reps, args.eval_batch, data_root, log))
            except Exception as e:  # a compiler failure is a result here, not a crash of the benchmark
                log(f"[compile] {t} K={k}: torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                rows.append({"trainer": t, "classes": k, "device": args.device, "error": f"{type(e).__name__}: {e}"[:2000]})
            if args.out:
                write_json(rows, args.out)
    for r in rows:
        if "error" in r:
            print(f"{r['trainer']} K={r['classes']}: compile failed: {r['error'][:200]}")
        else:
            print(f"{r['trainer']} K={r['classes']}: first call {r['first_call_train_s']:.0f} s; train "
                  f"{r['train_speedup_median']:.2f}x (min {r['train_speedup_min']:.2f}x), eval "
                  f"{r['eval_speedup_median']:.2f}x (min {r['eval_speedup_min']:.2f}x); loss diff "
                  f"{r['max_loss_diff']:.1e}, logit diff {r['max_logit_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
