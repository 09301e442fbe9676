"""bf16 on a CPU against fp32 on the toy world: zero-shot top-1 of the shipped toy CLIP per toy test set
in fp32 and under CPU bf16 autocast (the arithmetic of ``PREC bf16`` / ``amp`` on a CPU), the share of
test images whose prediction is the same, and the smallest image-feature cosine between the two.

    python benchmarks/bf16_toy.py --root data --out benchmarks/results/bf16_toy_cpu.json
"""
import argparse
import os.path as osp
import sys

import torch
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(model, x, classnames, template, bf16):
    from vlprompt.toy.zeroshot import class_text_features

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        text = class_text_features(model, classnames, template)
        feats = model.encode_image(x)
    feats, text = feats.float(), text.float()
    logits = F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t()  # fp32 logits, as in the trainers
    return feats, logits.argmax(-1)


def main(argv=None):
    from vlprompt.clip import build_clip_model
    from vlprompt.clip.precision import cpu_supports_bf16
    from vlprompt.toy.data import TOY_DATASETS, ensure_toy_dataset
    from vlprompt.toy.templates import TOY_TEMPLATES
    from vlprompt.toy.zeroshot import load_split_images

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="data")
    p.add_argument("--datasets", nargs="+", default=list(TOY_DATASETS))
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    model = build_clip_model("toy-clip").eval()
    rows = []
    for name in args.datasets:
        print(f"[bf16_toy] {name} ...", file=sys.stderr, flush=True)
        x, y, cnames = load_split_images(ensure_toy_dataset(name, args.root), name, "test")
        f32, p32 = run(model, x, cnames, TOY_TEMPLATES[name], False)
        f16, p16 = run(model, x, cnames, TOY_TEMPLATES[name], True)
        rows.append({"dataset": name, "images": int(len(y)), "classes": len(cnames),
                     "top1_fp32": float((p32 == y).float().mean() * 100), "top1_bf16": float((p16 == y).float().mean() * 100),
                     "same_prediction_pct": float((p32 == p16).float().mean() * 100),
                     "min_feature_cosine": float(F.cosine_similarity(f32, f16, dim=-1).min())})
    print("| toy test set | images | fp32 top-1 | bf16 top-1 | same prediction | min feature cosine |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['images']} | {r['top1_fp32']:.2f} % | {r['top1_bf16']:.2f} % | "
              f"{r['same_prediction_pct']:.2f} % | {r['min_feature_cosine']:.5f} |")
    if args.out:
        sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
        from common import write_json

        write_json({"cpu_native_bf16": cpu_supports_bf16(), "torch": torch.__version__, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
