"""The prompted encoders' "rows read" speed-up (``vlprompt.clip.prompted.READ_ROWS_ONLY``), A/B in one
process: every row computed (False) against only the rows read later (True). ViT-B/16, random weights.

* VPT-style image tower (8 deep prompts at every block, replaced at the next one): evaluation of a
  batch of images (no grad), and forward + backward into the prompts (a training step's tower part);
* the plain image tower (no prompts: CoOp, CoCoOp, KgCoOp, ...): evaluation;
* the text tower, CoOp-style (16-token generic context, K classes): forward + backward into the context.

    python benchmarks/bench_rows_read.py --reps 5 --out benchmarks/results/rows_read_cpu.json

Each case runs A/B interleaved after one warm-up each; median and min of ``--reps``, and the largest
difference between the outputs (and gradients) of the two arms, relative to the largest value.
"""
import argparse
import os.path as osp
import statistics
import sys

import torch

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
from common import ab, write_json  # noqa: E402


def _ab(fn, reps, device):
    """``fn()`` with READ_ROWS_ONLY False (A) and True (B), interleaved after a warm-up each."""
    from vlprompt.clip import prompted

    def arm(flag):
        prompted.READ_ROWS_ONLY = flag
        try:
            return fn()
        finally:
            prompted.READ_ROWS_ONLY = True

    out_all, out_read, t_all, t_read = ab(lambda: arm(False), lambda: arm(True), reps, device)
    out, times = {False: out_all, True: out_read}, {False: t_all, True: t_read}
    # relative to the largest value compared (the gradients of a sum of squares are large)
    diff = max(float((a - b).abs().max()) / max(1.0, float(b.abs().max())) for a, b in zip(out[False], out[True]))
    return {"all_rows_s": statistics.median(times[False]), "rows_read_s": statistics.median(times[True]),
            "speedup_median": statistics.median(times[False]) / statistics.median(times[True]),
            "speedup_min": min(times[False]) / min(times[True]), "times_all_rows_s": times[False],
            "times_rows_read_s": times[True], "max_rel_diff": diff}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--images", type=int, default=16, help="evaluation batch")
    p.add_argument("--train-images", type=int, default=4, help="training batch")
    p.add_argument("--classes", type=int, default=100, help="text tower classes")
    p.add_argument("--backbone", default="ViT-B/16", help="an open_clip / vlprompt backbone name (random weights)")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    from vlprompt.clip import PromptedTextEncoder, PromptedVisionEncoder, build_clip_model, tokenize

    dev = args.device
    clip = build_clip_model(args.backbone, random_init=True).to(dev).eval()
    for q in clip.parameters():
        q.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    d_v = clip.visual.transformer.width
    n, depth = 8, 12
    ve = PromptedVisionEncoder(clip, n, depth)
    plain = PromptedVisionEncoder(clip)
    prompts = (torch.randn(n, d_v, generator=g) * 0.02).to(dev).requires_grad_(True)
    deep = [(torch.randn(n, d_v, generator=g) * 0.02).to(dev).requires_grad_(True) for _ in range(depth - 1)]
    x_eval = torch.randn(args.images, 3, 224, 224, generator=g).to(dev)
    x_train = x_eval[: args.train_images]

    def vpt_eval():
        with torch.no_grad():
            return [ve(x_eval, prompts, deep)]

    def vpt_train():
        out = ve(x_train, prompts, deep)
        grads = torch.autograd.grad(out.square().sum(), [prompts] + deep)
        return [out.detach()] + list(grads)

    def plain_eval():
        with torch.no_grad():
            return [plain(x_eval)]

    te = PromptedTextEncoder(clip)
    toks = tokenize([f"X X X X X X X X X X X X X X X X class number {i}." for i in range(args.classes)]).to(dev)
    emb = te.embed(toks).detach()
    eot = toks.argmax(-1)
    assert int(eot.min()) > 17, "the 16 placeholder words are 16 tokens"
    ctx = (torch.randn(16, emb.shape[-1], generator=g) * 0.02).to(dev).requires_grad_(True)

    def text_train():
        e = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(args.classes, -1, -1), emb[:, 17:]], dim=1)
        out = te(e, eot, shared_prefix=17)
        (gc,) = torch.autograd.grad(out.square().sum(), [ctx])
        return [out.detach(), gc]

    cases = [
        (f"VPT image tower, evaluation ({args.images} images, {n} prompts x {depth} blocks)", vpt_eval),
        (f"VPT image tower, forward + backward ({args.train_images} images)", vpt_train),
        (f"plain image tower, evaluation ({args.images} images)", plain_eval),
        (f"text tower CoOp-style, forward + backward ({args.classes} classes)", text_train),
    ]
    rows = []
    for name, fn in cases:
        print(f"[rows-read] {name} x{args.reps} (A/B) ...", file=sys.stderr, flush=True)
        rows.append({"name": name, "device": dev, "torch_threads": torch.get_num_threads(), "reps": args.reps,
                     **_ab(fn, args.reps, dev)})
    print("| case | every row (s) | rows read (s) | speed-up | max rel. diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['all_rows_s']:.3f} | {r['rows_read_s']:.3f} | {r['speedup_median']:.2f}x "
              f"(min {r['speedup_min']:.2f}x) | {r['max_rel_diff']:.1e} |")
    if args.out:
        write_json(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
