"""The exact shortcuts vlprompt takes that the official code does not, measured against the official
way (ViT-B/16 with random weights; same FLOPs as the real model):

1. text transformer truncated at the longest EOT position vs the full 77-token pass (K class prompts);
2. CoCoOp's B x K conditioned prompts in one chunked pass vs the per-image Python loop;
3. evaluation: image-independent text features computed once per evaluation vs once per batch (MaPLe).

    python benchmarks/bench_shortcuts.py --device cpu --out benchmarks/results/shortcuts_cpu.json
"""
import argparse
import json
import os
import os.path as osp
import sys

import torch

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
from common import build, timed  # noqa: E402


def bench_truncation(device, n_classes, iters):
    from vlprompt.clip import build_clip_model, tokenize
    from vlprompt.clip.prompted import PromptedTextEncoder

    clip = build_clip_model("ViT-B/16", random_init=True).to(device)
    enc = PromptedTextEncoder(clip)
    tokens = tokenize([f"a photo of a class number {i}." for i in range(n_classes)]).to(device)
    emb = enc.embed(tokens)
    eot = tokens.argmax(-1)
    with torch.no_grad():
        full = timed(lambda: enc(emb, eot, truncate=False), device, iters)
        trunc = timed(lambda: enc(emb, eot, truncate=True), device, iters)
        diff = (enc(emb, eot, truncate=False) - enc(emb, eot, truncate=True)).abs().max().item()
    return {"name": "text pass: truncated vs full 77 tokens", "classes": n_classes, "tokens_used": int(eot.max()) + 1,
            "official_s": full, "ours_s": trunc, "speedup": full / trunc, "max_abs_diff": diff}


def bench_cocoop(device, n_classes, batch, iters):
    tr = build("CoCoOp", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", n_classes, device=device)
    model = tr.model
    model.eval()
    x = torch.randn(batch, 3, 224, 224, device=tr.device)
    with torch.no_grad():
        loop = timed(lambda: model.forward_loop(x), device, iters)
        fused = timed(lambda: model(x), device, iters)
        diff = (model.forward_loop(x) - model(x)).abs().max().item()
    return {"name": "CoCoOp: one chunked B x K pass vs per-image loop (eval)", "classes": n_classes, "batch": batch,
            "official_s": loop, "ours_s": fused, "speedup": loop / fused, "max_abs_diff": diff}


def bench_eval_cache(device, n_classes, n_batches, batch):
    tr = build("MaPLe", "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", n_classes, device=device)
    tr.set_model_mode("eval")
    xs = [torch.randn(batch, 3, 224, 224, device=tr.device) for _ in range(n_batches)]

    def run(clear_each_batch):
        with torch.no_grad():
            for x in xs:
                if clear_each_batch:
                    tr.model.text_cache.clear()
                tr.model_inference(x)

    per_batch = timed(lambda: run(True), device, 1)
    cached = timed(lambda: run(False), device, 1)
    return {"name": "eval: text features once per evaluation vs per batch (MaPLe)", "classes": n_classes,
            "batches": n_batches, "batch": batch, "official_s": per_batch, "ours_s": cached,
            "speedup": per_batch / cached}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    rows = [
        bench_truncation(args.device, args.classes, args.iters),
        bench_cocoop(args.device, args.classes, 4, args.iters),
        bench_eval_cache(args.device, args.classes, 4, 25),
    ]
    print("| shortcut | official way (s) | vlprompt (s) | speed-up | details |")
    print("|---|---|---|---|---|")
    for r in rows:
        det = ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                        if k not in ("name", "official_s", "ours_s", "speedup"))
        print(f"| {r['name']} | {r['official_s']:.3f} | {r['ours_s']:.3f} | {r['speedup']:.2f}x | {det} |")
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
