"""Per-iteration training time, evaluation throughput and peak memory of every trainer, built from
its real config (ViT-B/16 with random weights, same FLOPs as the real model).

    python benchmarks/bench_trainers.py --device cpu --iters 3 --out benchmarks/results/cpu.json
    python benchmarks/bench_trainers.py --device cuda --iters 20 --trainers CoOp CoCoOp MaPLe APLe MuDPT

Each trainer runs in its own process so that peak memory is its own. Prints a markdown table.
"""
import argparse
import json
import os.path as osp
import subprocess
import sys

HERE = osp.dirname(osp.abspath(__file__))



def _cases():
    """{trainer: "<folder>/<config>.yaml"}: every registered trainer with something to train, with its
    base-to-novel recipe config (from the registry, never a hand-kept list)."""
    root = osp.dirname(HERE)
    if root not in sys.path:
        sys.path.insert(0, root)
    from vlprompt.engine.methods import load_plugins, method_specs

    load_plugins()
    out = {}
    for spec in method_specs():
        recipes = spec.all_recipes()
        recipe = recipes.get("base2new") or next(iter(recipes.values()))
        if spec.eval_only:
            continue
        name = recipe["config"]
        out[spec.name] = f"{name}.yaml" if "/" in name else f"{spec.config_folder}/{name}.yaml"
    return out


CASES = _cases()


def run_one(trainer, config, n_classes, device, iters, eval_images):
    import torch

    sys.path.insert(0, HERE)
    from common import build, peak_memory_mb, timed

    torch.manual_seed(0)
    tr = build(trainer, config, n_classes, device=device, opts=["DATALOADER.TEST.BATCH_SIZE", "100"])
    batch = next(iter(tr.train_loader_x))
    tr.set_model_mode("train")
    tr.epoch, tr.batch_idx, tr.num_batches, tr.max_epoch = 0, 0, 10**9, tr.max_epoch
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = timed(lambda: tr.forward_backward(batch), device, iters)
    train_mem = peak_memory_mb(device)
    tr.set_model_mode("eval")
    x = batch["img"].repeat((eval_images + batch["img"].shape[0] - 1) // batch["img"].shape[0], 1, 1, 1)[:eval_images]
    x = x.to(tr.device)

    def _eval():
        with torch.no_grad():
            tr.model_inference(x)

    ev = timed(_eval, device, max(1, iters // 2))
    return {
        "trainer": trainer, "config": config, "device": device, "classes": n_classes,
        "batch": int(batch["img"].shape[0]), "train_step_s": step,
        "train_images_per_s": batch["img"].shape[0] / step, "eval_images_per_s": eval_images / ev,
        "peak_mem_mb": train_mem, "trainable_params": getattr(tr, "num_trainable_params", None),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--trainers", nargs="+", default=list(CASES))
    p.add_argument("--classes", type=int, default=50, help="label-space size (train and eval)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--eval-images", type=int, default=100)
    p.add_argument("--out", default="")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        res = run_one(args.trainers[0], CASES[args.trainers[0]], args.classes, args.device, args.iters,
                      args.eval_images)
        print("RESULT " + json.dumps(res))
        return 0
    rows = []
    for t in args.trainers:
        cmd = [sys.executable, osp.abspath(__file__), "--one", "--trainers", t, "--device", args.device,
               "--classes", str(args.classes), "--iters", str(args.iters), "--eval-images", str(args.eval_images)]
        print(f"[bench] {t} ...", file=sys.stderr, flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            print(f"[bench] {t} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[0][7:]))
    print("| trainer | batch | train step (s) | train img/s | eval img/s | peak mem (MiB) | trainable params |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trainer']} | {r['batch']} | {r['train_step_s']:.3f} | {r['train_images_per_s']:.1f} | "
              f"{r['eval_images_per_s']:.1f} | {r['peak_mem_mb']:.0f} | {r['trainable_params']:,} |")
    if args.out:
        import os

        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
