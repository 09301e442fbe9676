"""A base-to-novel *evaluation* sweep with and without the feature store, side by side in one process.

    python benchmarks/bench_feature_store.py --out benchmarks/results/feature_store_cpu.json

The sweep: ZeroshotCLIP, ZeroshotCLIP2, CoOp, CoCoOp and CLIP_Adapter (their base-to-novel configs,
ViT-B/16 with random weights: the real architecture and FLOPs) x seeds 1-3 x {base, new} on a fabricated
ImageFolder dataset, i.e. 30 evaluation runs (``--methods`` for a subset; the issue's minimum is
ZeroshotCLIP, CoOp, CoCoOp: 18 runs). Each run's trainer is built once; its evaluation (``trainer.test()``) is then timed
alternately without the store (``TEST.FEATURE_CACHE False``) and with it, in ``--rounds`` rounds. Each
round has its own store folder, empty when the sweep starts, so a round's store timings include
computing every entry once (the cold sweep: the first run of each split misses, all the others hit; with R runs per split the cold sweep's ratio cannot exceed R). The
logits of both modes are compared run by run (they must be identical).

Reports per round the evaluation time of the whole sweep in both modes and their ratio (median and min
over rounds), the per-run ratio of the runs served from the store (a warm store: what every run of a
later sweep gets), and whether all logits and accuracies were identical.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import statistics
import sys
import tempfile
import time

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)

SWEEP = [("ZeroshotCLIP", "CoOp/vit_b16.yaml"), ("ZeroshotCLIP2", "CoOp/vit_b16.yaml"),
         ("CoOp", "CoOp/vit_b16_ctxv1.yaml"), ("CoCoOp", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"),
         ("CLIP_Adapter", "CLIP_Adapter/vit_b16.yaml")]


def _evaluate(trainer, store_dir):
    import torch

    from vlprompt.utils import restore_stdout

    trainer.cfg.defrost()
    trainer.cfg.TEST.FEATURE_CACHE = store_dir is not None
    if store_dir is not None:
        trainer.cfg.FEATURES.DIR = store_dir
    trainer.cfg.freeze()
    trainer._feature_store = None
    trainer._feature_tower_digest = None  # every sweep run is its own process: it digests the weights once
    outs = []
    original = trainer.evaluator.process

    def record(mo, gt):
        outs.append(mo.detach().clone())
        original(mo, gt)

    trainer.evaluator.process = record
    t0 = time.perf_counter()
    try:
        acc = trainer.test()
    finally:
        trainer.evaluator.process = original
        restore_stdout()
    seconds = time.perf_counter() - t0
    store = getattr(trainer, "_feature_store", None)
    hit = store is not None and store.hits > 0
    return seconds, acc, torch.cat(outs), hit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=14, help="images per class (the split keeps ~30%% for test)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", nargs="+", default=[m for m, _ in SWEEP], help="a subset of " + str([m for m, _ in SWEEP]))
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    import torch

    from common import build, make_folder_dataset

    torch.manual_seed(0)
    data_root = tempfile.mkdtemp(prefix="vlprompt_bench_fs_")
    make_folder_dataset(osp.join(data_root, f"k{args.classes}"), args.classes, n_per_class=args.per_class)
    stores = [tempfile.mkdtemp(prefix=f"vlprompt_store_r{r}_") for r in range(args.rounds)]
    for s in stores:
        os.rmdir(s)  # empty (absent) when the sweep starts
    warm_store = tempfile.mkdtemp(prefix="vlprompt_store_warmup_")
    runs, identical = [], True
    warmed = False
    sweep = [(m, c) for m, c in SWEEP if m in args.methods]
    for trainer_name, config in sweep:
        for seed in args.seeds:
            for subsample in ("base", "new"):
                opts = ["DATASET.SUBSAMPLE_CLASSES", subsample, "SEED", str(seed), "DATASET.NUM_SHOTS", "-1"]
                tr = build(trainer_name, config, args.classes, device=args.device, opts=opts, data_root=data_root)
                if not warmed:  # one untimed evaluation per mode (allocator, kernels, imports)
                    _evaluate(tr, None)
                    _evaluate(tr, warm_store)
                    warmed = True
                row = {"trainer": trainer_name, "seed": seed, "split": subsample, "n_test": len(tr.dm.dataset.test),
                       "plain_s": [], "store_s": [], "store_hit": []}
                for r in range(args.rounds):
                    t_a, acc_a, logits_a, _ = _evaluate(tr, None)
                    t_b, acc_b, logits_b, hit = _evaluate(tr, stores[r])
                    same = bool(torch.equal(logits_a, logits_b)) and acc_a == acc_b
                    identical &= same
                    row["plain_s"].append(t_a)
                    row["store_s"].append(t_b)
                    row["store_hit"].append(hit)
                    row["acc"] = acc_a
                    row["identical"] = row.get("identical", True) and same
                runs.append(row)
                print(f"{trainer_name:12s} seed {seed} {subsample:4s}: plain {min(row['plain_s']):.2f} s, store "
                      f"{[round(x, 2) for x in row['store_s']]} s (hit {row['store_hit']}), acc {row['acc']:.1f}, "
                      f"identical {row['identical']}", flush=True)
                del tr
    per_round = []
    for r in range(args.rounds):
        plain = sum(x["plain_s"][r] for x in runs)
        store = sum(x["store_s"][r] for x in runs)
        per_round.append({"plain_s": plain, "store_s": store, "ratio": plain / store})
    hit_ratios = [x["plain_s"][r] / x["store_s"][r] for x in runs for r in range(args.rounds) if x["store_hit"][r]]
    by_method = {}
    for name, _ in sweep:
        rows = [x for x in runs if x["trainer"] == name]
        plain = sum(statistics.median(x["plain_s"]) for x in rows)
        store = sum(statistics.median(x["store_s"]) for x in rows)
        by_method[name] = {"plain_s": plain, "store_s": store, "ratio": plain / store}
    result = {
        "setup": {"backbone": "ViT-B/16 (random weights)", "device": args.device, "classes": args.classes,
                  "per_class": args.per_class, "seeds": args.seeds, "rounds": args.rounds,
                  "runs": len(runs), "torch_threads": torch.get_num_threads()},
        "sweep_ratio_median": statistics.median(r["ratio"] for r in per_round),
        "sweep_ratio_min": min(r["ratio"] for r in per_round),
        "per_round": per_round,
        "warm_run_ratio_median": statistics.median(hit_ratios) if hit_ratios else None,
        "warm_run_ratio_min": min(hit_ratios) if hit_ratios else None,
        "by_method": by_method,
        "identical_logits_and_accuracy": identical,
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    for d in stores + [warm_store, data_root]:
        shutil.rmtree(d, ignore_errors=True)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
