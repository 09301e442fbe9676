"""Memory of TDA's caches (and DMN-ZS's memory) at full capacity: measured, and computed from the shapes.

Fills every class of a ``--classes``-way problem (1000: ImageNet) to capacity with random ``--dim``-dimensional
features (512: ViT-B/16) through the procedures' own update code (trainers/tta/tda.py, dmn.py), then reports the
bytes held by the cached tensors and the largest temporaries of one prediction (the stacked keys and values that
``ClassCache.logits`` builds). The count is exact (tensor sizes), not a process RSS, so it does not depend on the
machine.

    python benchmarks/bench_tta_cache_memory.py --classes 1000 --dim 512 --out benchmarks/results/tta_cache_memory.json
"""
import argparse
import json
import os.path as osp
import sys

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MIB = 2.0 ** 20


def tda_memory(classes, dim, dtype):
    from trainers.tta.tda import TDA_NEGATIVE_DEFAULTS, TDA_POSITIVE_CAPACITY, ClassCache

    gen = torch.Generator().manual_seed(0)
    pos, neg = ClassCache(TDA_POSITIVE_CAPACITY), ClassCache(TDA_NEGATIVE_DEFAULTS["shot_capacity"])
    for c in range(classes):
        for _ in range(pos.capacity):
            f = torch.randn(1, dim, generator=gen).to(dtype)
            pos.update(c, f / f.norm(), torch.rand(1, generator=gen).to(dtype))
        for _ in range(neg.capacity):
            f = torch.randn(1, dim, generator=gen).to(dtype)
            p = torch.rand(1, classes, generator=gen).to(dtype)
            neg.update(c, f / f.norm(), torch.rand(1, generator=gen).to(dtype), p / p.sum())
    f = torch.randn(1, dim, generator=gen).to(dtype)
    f = f / f.norm()
    # run one read-out of each cache (checks that a full cache works at this size)
    pos.logits(f, 2.0, 5.0, classes)
    neg.logits(f, 0.117, 1.0, classes, mask=(0.03, 1.0))
    size = torch.tensor([], dtype=dtype).element_size()
    k_pos, k_neg = len(pos), len(neg)
    # temporaries of one read-out: stacked keys (K, D), values (K, C) in the feature dtype (+ int8 mask / int64
    # one-hot on the way), kernel (1, K)
    tmp_pos = k_pos * dim * size + k_pos * classes * (size + 8)
    tmp_neg = k_neg * dim * size + k_neg * classes * (2 * size + 1)
    return {
        "positive_entries": k_pos, "negative_entries": k_neg,
        "positive_bytes": pos.nbytes(), "negative_bytes": neg.nbytes(),
        "total_bytes": pos.nbytes() + neg.nbytes(),
        "formula_bytes": classes * (3 * (dim + 1) + 2 * (dim + 1 + classes)) * size,
        "readout_temporaries_bytes": max(tmp_pos, tmp_neg),
    }


def dmn_memory(classes, dim, memory_size=50):
    from trainers.tta.dmn import DynamicMemory

    text = torch.nn.functional.normalize(torch.randn(classes, dim), dim=-1)
    mem = DynamicMemory(text, memory_size=memory_size)
    # read-out temporaries: the (C, M + 1, D) concatenation, keys and values of that size
    tmp = 3 * classes * (memory_size + 1) * dim * 4
    return {"memory_bytes": mem.nbytes(), "readout_temporaries_bytes": tmp,
            "official_prediction_memory_bytes": classes * memory_size * classes * 4}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    out = {"classes": args.classes, "dim": args.dim,
           "tda_fp32": tda_memory(args.classes, args.dim, torch.float32),
           "tda_fp16": tda_memory(args.classes, args.dim, torch.float16),
           "dmn_fp32": dmn_memory(args.classes, args.dim)}
    for key in ("tda_fp32", "tda_fp16"):
        r = out[key]
        print(f"{key}: positive {r['positive_entries']} entries {r['positive_bytes'] / MIB:.2f} MiB, negative "
              f"{r['negative_entries']} entries {r['negative_bytes'] / MIB:.2f} MiB, "
              f"total {r['total_bytes'] / MIB:.2f} "
              f"MiB (formula {r['formula_bytes'] / MIB:.2f}); read-out temporaries "
              f"{r['readout_temporaries_bytes'] / MIB:.2f} MiB")
    r = out["dmn_fp32"]
    print(f"dmn_fp32: memory {r['memory_bytes'] / MIB:.2f} MiB; read-out temporaries "
          f"{r['readout_temporaries_bytes'] / MIB:.2f} MiB; the official unused prediction memory would add "
          f"{r['official_prediction_memory_bytes'] / MIB:.1f} MiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
