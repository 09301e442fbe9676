"""A base-to-novel *evaluation* sweep with and without the feature store, side by side in one process.

    nice -n 10 python benchmarks/bench_feature_store.py --out benchmarks/results/feature_store_cpu.json

The sweep: ZeroshotCLIP, CoOp, CoCoOp, KgCoOp, ProGrad and TCP (the methods whose test-time image
features are the frozen tower's; their base-to-novel configs) x seeds 1-3 x {base, new} on a
fabricated ImageFolder dataset: 36 evaluation runs, 18 per split (``--methods`` for a subset or for
ZeroshotCLIP2 / CLIP_Adapter). ViT-B/16 with random weights (the real architecture and FLOPs), saved
once to a weights file that every run loads through ``MODEL.BACKBONE.PATH``, as a real sweep loads
the pretrained file (``--weights random-init`` builds them in memory instead: no file, so the weights
digest is computed in every run).

The parent process writes the data and the weights file, waits until the file is older than the
weights-digest memo's margin, and runs the sweep in a child process (a digest is remembered only for
a file that has not changed since the process started: ``vlprompt/features/weights.py``).

Each run's trainer is built once (build time recorded, not part of the ratios: it is the same in both
modes and no part of the evaluation), its learned parameters are perturbed with the seed (a learned
state that is not the initial one), then its evaluation (``trainer.test()``) is timed alternately
without the store (``TEST.FEATURE_CACHE False``) and with it, in ``--rounds`` rounds. Before every
timed evaluation the in-process memos and text-feature caches are dropped (each run of a real sweep is
its own process: it computes its class text features once, in either mode).
Each round has its own store folder, empty when the sweep starts: a round's store timings include
computing each split's entry and the weights digest once (the cold sweep).

Besides the whole ``test()`` time, the benchmark times the **image-feature part**, i.e. what the
store replaces: without the store, reading and transforming the test images (the loader) plus the
frozen image tower's forward (hooks on the tower); with it, the store lookup (key, weights digest or
memo, reading and verifying the entry, or computing and writing it on a miss). The rest (text side,
logits, metrics, ``results.json``) is the same work in both modes; for CoCoOp it includes the
image-conditioned text pass, which depends on the learned Meta-Net and cannot be stored.

Reports: the whole sweep's ratio and the image-feature part's ratio per round (median, min), per
method and per mode, the runs served from a warm store, the build times, and whether all logits and
accuracies were identical (``torch.equal``).
"""
import argparse
import json
import os.path as osp
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)

SWEEP = [("ZeroshotCLIP", "CoOp/vit_b16.yaml"), ("CoOp", "CoOp/vit_b16_ctxv1.yaml"),
         ("CoCoOp", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"), ("KgCoOp", "KgCoOp/vit_b16_ep100_ctxv1.yaml"),
         ("ProGrad", "ProGrad/vit_b16_ep100.yaml"), ("TCP", "TCP/vit_b16_ep100_ctxv1.yaml"),
         ("ZeroshotCLIP2", "CoOp/vit_b16.yaml"), ("CLIP_Adapter", "CLIP_Adapter/vit_b16.yaml")]
DEFAULT_METHODS = ["ZeroshotCLIP", "CoOp", "CoCoOp", "KgCoOp", "ProGrad", "TCP"]
BACKBONE = "ViT-B/16"
OC_NAME = "ViT-B-16-quickgelu"


class _TimedLoader:
    """The test loader, timing the production of every batch (reading + transforming the images)."""

    def __init__(self, loader, clock):
        self._loader, self._clock = loader, clock

    def __iter__(self):
        it = iter(self._loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self._clock["image_s"] += time.perf_counter() - t0
            yield batch

    def __len__(self):
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def _fresh_process(trainer):
    """Drop what a run's process would not have yet: the store's in-process memos and the text-feature
    caches (a CoOp-style model caches its class text features during evaluation; without this, the
    second timed mode of a run would reuse the text pass of the first)."""
    import torch

    from vlprompt.clip.prompted import TextFeatureCache

    trainer._feature_store = None
    trainer._feature_tower_digest = None
    n = 0
    for obj in [trainer] + [m for v in vars(trainer).values() if isinstance(v, torch.nn.Module) for m in v.modules()]:
        for v in vars(obj).values():
            if isinstance(v, TextFeatureCache):
                v.clear()
                n += 1
    return n


def _evaluate(trainer, store_dir):
    """``(seconds, image-part seconds, acc, logits, store hit, digest how)`` of one ``trainer.test()``."""
    import torch

    from vlprompt.features import extract
    from vlprompt.utils import restore_stdout

    trainer.cfg.defrost()
    trainer.cfg.TEST.FEATURE_CACHE = store_dir is not None
    if store_dir is not None:
        trainer.cfg.FEATURES.DIR = store_dir
    trainer.cfg.freeze()
    _fresh_process(trainer)
    clock = {"image_s": 0.0, "tower_calls": 0}
    outs = []
    original_process = trainer.evaluator.process
    original_loader = trainer.test_loader
    original_cached = extract.cached_eval_batches
    hooks = []

    def record(mo, gt):
        outs.append(mo.detach().clone())
        original_process(mo, gt)

    def timed_cached(*a, **k):
        t0 = time.perf_counter()
        try:
            return original_cached(*a, **k)
        finally:
            clock["image_s"] += time.perf_counter() - t0

    if store_dir is None:
        tower = extract.frozen_tower(trainer)

        def pre(module, args):
            clock["t_tower"] = time.perf_counter()

        def post(module, args, out):
            clock["image_s"] += time.perf_counter() - clock.pop("t_tower")
            clock["tower_calls"] += 1

        hooks = [tower.register_forward_pre_hook(pre), tower.register_forward_hook(post)]
        trainer.test_loader = _TimedLoader(original_loader, clock)
    else:
        extract.cached_eval_batches = timed_cached
    trainer.evaluator.process = record
    t0 = time.perf_counter()
    try:
        acc = trainer.test()
    finally:
        seconds = time.perf_counter() - t0
        trainer.evaluator.process = original_process
        trainer.test_loader = original_loader
        extract.cached_eval_batches = original_cached
        for h in hooks:
            h.remove()
        restore_stdout()
    if store_dir is None and clock["tower_calls"] != len(original_loader):
        raise RuntimeError(f"{type(trainer).__name__}: the tower hook saw {clock['tower_calls']} calls for "
                           f"{len(original_loader)} batches: the image part is not what was timed")
    store = getattr(trainer, "_feature_store", None)
    hit = store is not None and store.hits > 0
    memo = getattr(trainer, "_feature_tower_digest", None)
    how = memo[2] if memo else None
    return seconds, clock["image_s"], acc, torch.cat(outs), hit, how


def _perturb(trainer, seed):
    import torch

    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name in trainer.get_model_names():
            for p in trainer._models[name].parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.device, p.dtype))


def _ratio(a, b):
    return a / b if b > 0 else float("inf")


def _summary(runs, rounds, methods):
    per_round = []
    for r in range(rounds):
        row = {}
        for part, a, b in (("whole", "plain_s", "store_s"), ("image", "plain_image_s", "store_image_s")):
            pa, sb = sum(x[a][r] for x in runs), sum(x[b][r] for x in runs)
            row[part] = {"plain_s": pa, "store_s": sb, "ratio": _ratio(pa, sb)}
        rest = [x for x in runs if x["trainer"] != "CoCoOp"]
        if rest and len(rest) != len(runs):
            pa, sb = sum(x["plain_s"][r] for x in rest), sum(x["store_s"][r] for x in rest)
            row["whole_without_cocoop"] = {"plain_s": pa, "store_s": sb, "ratio": _ratio(pa, sb)}
        per_round.append(row)

    def med_min(key):
        vals = [r[key]["ratio"] for r in per_round if key in r]
        return {"median": statistics.median(vals), "min": min(vals)} if vals else None

    by_method = {}
    for name in methods:
        rows = [x for x in runs if x["trainer"] == name]
        if not rows:
            continue
        out = {}
        for part, a, b in (("whole", "plain_s", "store_s"), ("image", "plain_image_s", "store_image_s"),
                           ("rest", "plain_rest_s", "store_rest_s")):
            ratios = []
            for r in range(rounds):
                pa, sb = sum(x[a][r] for x in rows), sum(x[b][r] for x in rows)
                ratios.append((pa, sb))
            out[part] = {"plain_s_per_round": [p for p, _ in ratios], "store_s_per_round": [s for _, s in ratios],
                         "ratio_median": statistics.median(_ratio(p, s) for p, s in ratios),
                         "ratio_min": min(_ratio(p, s) for p, s in ratios)}
        by_method[name] = out
    warm = [_ratio(x["plain_s"][r], x["store_s"][r]) for x in runs for r in range(rounds) if x["store_hit"][r]]
    warm_by_method = {}
    for name in methods:
        v = [_ratio(x["plain_s"][r], x["store_s"][r]) for x in runs if x["trainer"] == name for r in range(rounds)
             if x["store_hit"][r]]
        if v:
            warm_by_method[name] = {"median": statistics.median(v), "min": min(v), "n": len(v)}
    return {
        "per_round": per_round,
        "whole_sweep_ratio": med_min("whole"),
        "image_part_ratio": med_min("image"),
        "whole_sweep_without_cocoop_ratio": med_min("whole_without_cocoop"),
        "by_method": by_method,
        "warm_run_ratio": {"median": statistics.median(warm), "min": min(warm), "n": len(warm)} if warm else None,
        "warm_run_ratio_by_method": warm_by_method,
    }


def sweep(args):
    import torch

    from common import build
    from vlprompt.features.keys import module_digest

    stores = [osp.join(args.work, f"store_r{r}") for r in range(args.rounds)]  # absent: cold at the start
    warm_store = osp.join(args.work, "store_warmup")
    runs, identical, warmed = [], True, False
    builds = []
    weights_opts = (["MODEL.BACKBONE.PATH", args.weights_file, "MODEL.BACKBONE.RANDOM_INIT", "False"]
                    if args.weights_file else [])
    chosen = [(m, c) for m, c in SWEEP if m in args.methods]
    digest_s = []
    for trainer_name, config in chosen:
        for seed in args.seeds:
            for subsample in ("base", "new"):
                opts = ["DATASET.SUBSAMPLE_CLASSES", subsample, "SEED", str(seed), "DATASET.NUM_SHOTS", "-1",
                        *weights_opts]
                t0 = time.perf_counter()
                tr = build(trainer_name, config, args.classes, device=args.device, opts=opts, data_root=args.data)
                builds.append(time.perf_counter() - t0)
                _perturb(tr, seed)
                if not warmed:  # one untimed evaluation per mode (allocator, kernels, imports)
                    _evaluate(tr, None)
                    _evaluate(tr, warm_store)
                    from vlprompt.features.extract import frozen_tower

                    for _ in range(3):
                        t1 = time.perf_counter()
                        module_digest(frozen_tower(tr).visual)
                        digest_s.append(time.perf_counter() - t1)
                    warmed = True
                row = {"trainer": trainer_name, "seed": seed, "split": subsample, "n_test": len(tr.dm.dataset.test),
                       "build_s": builds[-1], "plain_s": [], "store_s": [], "plain_image_s": [], "store_image_s": [],
                       "plain_rest_s": [], "store_rest_s": [], "store_hit": [], "digest": [], "identical": True}
                for r in range(args.rounds):
                    t_a, i_a, acc_a, logits_a, _, _ = _evaluate(tr, None)
                    t_b, i_b, acc_b, logits_b, hit, how = _evaluate(tr, stores[r])
                    same = bool(torch.equal(logits_a, logits_b)) and acc_a == acc_b
                    identical &= same
                    row["identical"] &= same
                    row["plain_s"].append(t_a)
                    row["store_s"].append(t_b)
                    row["plain_image_s"].append(i_a)
                    row["store_image_s"].append(i_b)
                    row["plain_rest_s"].append(t_a - i_a)
                    row["store_rest_s"].append(t_b - i_b)
                    row["store_hit"].append(hit)
                    row["digest"].append(how)
                    row["acc"] = acc_a
                runs.append(row)
                print(f"{trainer_name:12s} seed {seed} {subsample:4s}: build {row['build_s']:.1f} s | plain "
                      f"{[round(x, 2) for x in row['plain_s']]} s (image part {[round(x, 2) for x in row['plain_image_s']]}) "
                      f"| store {[round(x, 2) for x in row['store_s']]} s (image part "
                      f"{[round(x, 3) for x in row['store_image_s']]}, hit {row['store_hit']}, digest {row['digest']}) "
                      f"| acc {row['acc']:.1f} identical {row['identical']}", flush=True)
                del tr
    result = {
        "setup": {"backbone": f"{BACKBONE} (random weights, " + ("loaded from a weights file)" if args.weights_file
                                                                 else "built in memory: RANDOM_INIT)"),
                  "device": args.device, "classes": args.classes, "per_class": args.per_class, "seeds": args.seeds,
                  "rounds": args.rounds, "methods": [m for m, _ in chosen], "runs": len(runs),
                  "runs_per_split": len(runs) // 2, "torch_threads": torch.get_num_threads(),
                  "torch": torch.__version__},
        **_summary(runs, args.rounds, [m for m, _ in chosen]),
        "build_s": {"total": sum(builds), "median": statistics.median(builds)},
        "weights_digest_s": {"median": statistics.median(digest_s), "min": min(digest_s)} if digest_s else None,
        "identical_logits_and_accuracy": identical,
        "runs": runs,
    }
    return result


def _make_weights_file(path):
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights as MODEL.BACKBONE.RANDOM_INIT
        model = open_clip.create_model(OC_NAME, pretrained=None, device="cpu")
    torch.save(model.state_dict(), path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=14, help="images per class (the split keeps ~30%% for test)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, help="a subset of " + str([m for m, _ in SWEEP]))
    p.add_argument("--weights", choices=["file", "random-init"], default="file")
    p.add_argument("--out", default="")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: JSON of the sweep's arguments
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods) - {m for m, _ in SWEEP})
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {[m for m, _ in SWEEP]}")

    if args.child:
        with open(args.child) as f:
            spec = json.load(f)
        result = sweep(argparse.Namespace(**spec))
        with open(spec["result"], "w") as f:
            json.dump(result, f, indent=1)
        return 0

    from common import make_folder_dataset
    from vlprompt.features.weights import MARGIN_S

    work = tempfile.mkdtemp(prefix="vlprompt_bench_fs_")
    try:
        data = osp.join(work, "data")
        make_folder_dataset(osp.join(data, f"k{args.classes}"), args.classes, n_per_class=args.per_class)
        weights_file = ""
        if args.weights == "file":
            weights_file = osp.join(work, "ViT-B-16-random.pt")
            _make_weights_file(weights_file)
            time.sleep(MARGIN_S + 1.5)  # the child starts after the file is older than the memo's margin
        spec = {"classes": args.classes, "per_class": args.per_class, "seeds": args.seeds, "rounds": args.rounds,
                "device": args.device, "methods": args.methods, "weights_file": weights_file, "data": data,
                "work": work, "result": osp.join(work, "result.json")}
        with open(osp.join(work, "spec.json"), "w") as f:
            json.dump(spec, f)
        rc = subprocess.call([sys.executable, osp.abspath(__file__), "--child", osp.join(work, "spec.json")])
        if rc != 0:
            print(f"the sweep process failed (exit {rc})", file=sys.stderr)
            return rc
        with open(spec["result"]) as f:
            result = json.load(f)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "by_method")}, indent=1))
    print(json.dumps(result["by_method"], indent=1))
    if args.out:
        from common import write_json

        write_json(result, args.out, indent=1)
    return 0 if result["identical_logits_and_accuracy"] else 1


if __name__ == "__main__":
    sys.exit(main())
