#!/usr/bin/env python
"""Per-image time of TPT: vlprompt's test-time procedure against the official per-image computation
(benchmarks/tta_reference.py), on identical inputs, A/B interleaved in one process.

Model: ViT-B/16 with random weights (no download), zero-shot base, 1000 classes (the bundled ImageNet class
names, so the prompts have ImageNet's token lengths), 64 views (random tensors, fixed seed), TPT's defaults
(1 step, p = 0.1, lr 5e-3). Per image:

* **vlprompt**: one batched image pass over the 64 views, then ``TPT.reset()`` + ``TPT.step()`` (text pass
  truncated to the longest EOT and prefix-shared, with gradients; one AdamW step; the final text pass without
  gradients; view 0's features reused);
* **official**: ``OfficialTPT(views)``: reset, the image encoder on the 64 views, the text encoder on 1000 prompts
  of 77 tokens with gradients, AdamW, then the image encoder on view 0 and the text encoder again.

Both arms start each image from the same context, so their outputs are compared too (selected views and
view-0 logits). Usage: ``python benchmarks/bench_tta.py [--reps 3] [--classes 1000] [--device cpu|cuda]
[--threads N] [--warmup 1] [--json out.json]``.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import torch  # noqa: E402


def classnames(n):
    from vlprompt.data.catalog import BUNDLED_CLASSNAMES_FILE

    with open(BUNDLED_CLASSNAMES_FILE) as f:
        names = [line.strip().split(" ", 1)[1] for line in f if line.strip()]
    return [names[i % len(names)] for i in range(n)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (0: none)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--views", type=int, default=64)
    p.add_argument("--backbone", default="ViT-B/16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default="", help="write the row here (with --append: add it to the list in the file)")
    p.add_argument("--append", action="store_true")
    p.add_argument("--ours-only", action="store_true",
                   help="time vlprompt's arm only (the official arm's 77-token text pass keeps about 0.43 MB of "
                        "activations per token at ViT-B/16 in fp32: 1000 classes need ~33 GB)")
    p.add_argument("--max-load", type=float, default=None, metavar="X",
                   help="wait until the 1-minute load average is below X before timing (recorded in the row)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import trainers  # noqa: F401  (registers TPT)
    from tta_reference import OfficialTPT
    from vlprompt.clip.backbone import build_clip_model
    from vlprompt.clip.blocks import ZeroShotHead
    from vlprompt.config import extend_cfg, get_cfg_default
    from vlprompt.tta import TTA_REGISTRY, BaseModel, Sample

    device = torch.device(a.device)
    torch.manual_seed(0)
    clip_model = build_clip_model(a.backbone, random_init=True).to(device).eval()
    for q in clip_model.parameters():
        q.requires_grad_(False)
    names = classnames(a.classes)
    head = ZeroShotHead(clip_model, names, "a photo of a {}.")
    base = BaseModel("ZeroshotCLIP", "zero_shot", clip_model, names, head.logit_scale, head.image_features,
                     head.text_features, device)
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TTA.METHOD = "TPT"
    cfg.TTA.N_VIEWS = a.views
    tpt = TTA_REGISTRY.get("TPT")(cfg, base)
    ref = OfficialTPT(clip_model, tpt.model.prompt_learner)
    size = clip_model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    g = torch.Generator().manual_seed(0)
    views = torch.randn(a.views, 3, size, size, generator=g).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ours():
        feats = base.image_features(views)
        tpt.reset()
        return tpt.step(Sample(views=views, image_features=feats, index=0, position=0)), tpt.last["selected"]

    def official():
        out, sel, _ = ref(views)
        return out, sel

    load_before = None
    if a.max_load is not None:
        from bench_reference import wait_for_load

        load_before = wait_for_load(a.max_load, 1800.0, log=lambda m: print(m, file=sys.stderr, flush=True))
    arms = [("vlprompt", ours)] if a.ours_only else [("vlprompt", ours), ("official", official)]
    times = {name: [] for name, _ in arms}
    outs = {}
    for rep in range(a.reps + a.warmup):  # the first ``warmup`` rounds are not timed
        for name, fn in (arms if rep % 2 == 0 else arms[::-1]):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            if rep >= a.warmup:
                times[name].append(time.perf_counter() - t0)
            outs[name] = out
    med = {k: statistics.median(v) for k, v in times.items()}
    both = not a.ours_only
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    row = {
        "backbone": a.backbone, "classes": a.classes, "views": a.views, "device": str(device),
        "threads": torch.get_num_threads(), "reps": a.reps,
        "vlprompt_s_per_image": med["vlprompt"], "official_s_per_image": med["official"] if both else None,
        "speedup": med["official"] / med["vlprompt"] if both else None,
        "official_skipped": None if both else "--ours-only: the official arm was not run",
        "same_selected_views": (outs["vlprompt"][1].tolist() == outs["official"][1].cpu().tolist()) if both else None,
        "max_abs_logit_diff": float((outs["vlprompt"][0].float() - outs["official"][0].float()).abs().max())
        if both else None,
        "load_before": load_before, "loadavg": load, "times": times,
    }
    print(json.dumps(row, indent=1))
    if a.json:
        rows = []
        if a.append and os.path.exists(a.json):
            with open(a.json) as f:
                rows = json.load(f)
            rows = rows if isinstance(rows, list) else [rows]
        sys.path.insert(0, HERE)
        from common import write_json

        write_json(rows + [row] if a.append else row, a.json, indent=1)
    return row


if __name__ == "__main__":
    main()
