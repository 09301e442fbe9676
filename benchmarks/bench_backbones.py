"""Train step and eval throughput of one method on each backbone family at base size with random
weights, beside ViT-B/16, measured side by side in one process (families interleaved in every round,
warm-up first; median and min reported).

``--method ivlp`` (default): IVLP, deep text + vision prompts (2+2 tokens, depth 9), so the family text
and image encoders are both on the timed path. ``--method lora``: CLIP-LoRA with the official adapters
(r 2, q/k/v of every block of both towers; dropout 0.25), so the LoRA attention of each family is timed
(``nn.MultiheadAttention`` replacement on CLIP, fused-qkv thirds on SigLIP / PE-Core, separate q/k/v on
EVA02); its train step runs the adapted text tower over every class, as the method does.

Also checks, at base size, that the unprompted prompted encoders equal open_clip's encode_text /
encode_image (max abs difference reported).

    PYTHONPATH=. python benchmarks/bench_backbones.py --device cpu --rounds 5 --out bench_backbones_cpu.json
    PYTHONPATH=. python benchmarks/bench_backbones.py --method lora --rounds 3 --out bench_backbones_lora_cpu.json

SigLIP's real tokenizer is a Hugging Face sentencepiece model (needs a download); here the token ids
are CLIP BPE ids folded into SigLIP's vocabulary (same sequence length 64, so the same cost).
"""
import argparse
import json
import os.path as osp
import statistics
import sys
import time

import torch
import torch.nn.functional as F

MODELS = ["ViT-B/16", "ViT-B-16-SigLIP", "EVA02-B-16", "PE-Core-B-16"]


class _FoldedNoStart:
    """SigLIP layout (no start token, EOS, pad to 64) with CLIP BPE ids folded into the vocabulary."""

    def __init__(self, vocab, ctx):
        from vlprompt.clip.tokenizer import NoStartBPETokenizer

        self._t = NoStartBPETokenizer(ctx)
        self.vocab = vocab
        self.first_slot = 0
        self.eot = self._t.eot % vocab
        self.context_length = ctx

    def __call__(self, texts, context_length=None):
        return self._t(texts, context_length) % self.vocab

    def eot_positions(self, ids):
        return (ids == self.eot).int().argmax(dim=-1)

    def count(self, text):
        return self._t.count(text)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def build(name, device, classnames, method="ivlp"):
    from vlprompt.clip import build_clip_model
    from vlprompt.clip.blocks import DeepPromptedCLIP, IndependentPrompts
    from vlprompt.clip.tokenizer import tokenize
    from vlprompt.clip.towers import prompted_encoders

    t0 = time.perf_counter()
    clip = build_clip_model(name, random_init=True)
    built_s = time.perf_counter() - t0
    if name == "ViT-B-16-SigLIP":
        clip.vlprompt_tokenizer = _FoldedNoStart(clip.text.vocab_size, clip.text.context_length)
    clip.requires_grad_(False).to(device)
    # exactness at base size
    te, ve = prompted_encoders(clip)
    ids = tokenize(["a photo of a dog.", "a cat."], model=clip).to(device)
    x = torch.randn(2, 3, 224, 224, device=device)
    with torch.no_grad():
        d_text = (te.encode_tokens(ids) - clip.encode_text(ids)).abs().max().item()
        d_image = (ve(x) - clip.encode_image(x)).abs().max().item()
    if method == "lora":
        sys.path.insert(0, ".")
        from trainers.clip_lora import LoRACLIP

        model = LoRACLIP(clip, classnames, "a photo of a {}.").to(device)
        learnable = model.lora
    else:
        learnable = IndependentPrompts(clip, classnames, 2, 9, 2, 9, "a photo of a")
        model = DeepPromptedCLIP(clip, learnable).to(device)
    opt = torch.optim.SGD(learnable.parameters(), lr=1e-3)
    return {"model": model, "opt": opt, "build_s": built_s, "max_abs_diff_text": d_text,
            "n_learnable": sum(p.numel() for p in learnable.parameters()),
            "max_abs_diff_image": d_image, "types": [type(model.text_encoder).__name__, type(model.image_encoder).__name__]}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--method", default="ivlp", choices=["ivlp", "lora"])
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    dev = args.device
    classnames = [f"class number {i}" for i in range(args.classes)]
    names = args.models.split(",")
    built = {n: build(n, dev, classnames, args.method) for n in names}
    xt = torch.randn(args.train_batch, 3, 224, 224, device=dev)
    yt = torch.arange(args.train_batch, device=dev) % args.classes
    xe = torch.randn(args.eval_batch, 3, 224, 224, device=dev)

    def train_step(b):
        m = b["model"].train()
        b["opt"].zero_grad()
        F.cross_entropy(m(xt), yt).backward()
        b["opt"].step()

    def eval_pass(b):
        m = b["model"].eval()
        with torch.no_grad():
            m(xe)

    for b in built.values():  # warm-up (also fills the eval text cache)
        train_step(b)
        eval_pass(b)
        eval_pass(b)
    times = {n: {"train": [], "eval": []} for n in names}
    for _ in range(args.rounds):
        for n in names:
            times[n]["train"].append(timed(lambda: train_step(built[n]), dev))
            times[n]["eval"].append(timed(lambda: eval_pass(built[n]), dev))
    ref = names[0]
    out = {"device": dev, "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
           "train_batch": args.train_batch, "eval_batch": args.eval_batch, "classes": args.classes,
           "method": {"ivlp": "IVLP 2+2 ctx, depth 9 (both towers)",
                      "lora": "CLIP-LoRA r 2, q/k/v, all blocks, both towers"}[args.method], "models": {}}
    for n in names:
        tr, ev = times[n]["train"], times[n]["eval"]
        out["models"][n] = {
            "encoders": built[n]["types"], "learnable_parameters": built[n]["n_learnable"],
            "train_step_s_median": statistics.median(tr), "train_step_s_min": min(tr),
            "eval_img_per_s_median": args.eval_batch / statistics.median(ev),
            "eval_img_per_s_max": args.eval_batch / min(ev),
            "train_ratio_vs_ref_median": statistics.median(tr) / statistics.median(times[ref]["train"]),
            "eval_ratio_vs_ref_median": statistics.median(times[ref]["eval"]) / statistics.median(ev),
            "max_abs_diff_text": built[n]["max_abs_diff_text"], "max_abs_diff_image": built[n]["max_abs_diff_image"],
        }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
        from common import write_json

        write_json(out, args.out)


if __name__ == "__main__":
    sys.exit(main())
