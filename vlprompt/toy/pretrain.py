"""Contrastive pretraining of the toy CLIP on captioned images of the toy world.

    python -m vlprompt.toy.pretrain --out vlprompt/toy/weights/toy_clip.pt

Reproducible: the image pool, the captions, the batches and the initial weights are all drawn from
``--seed``; with the same torch version and thread count the run repeats (floating-point reduction
order can differ across thread counts and CPUs, so weights may then differ in the last bits).

Data: a pool of ``--pool`` rendered images over all 8 colours x 10 shapes of the world (so both the
ToyShapes and ToySymbols label spaces are covered), half of them clean photos and the rest spread over
the five other styles (photos dominate, as on the web); each image is JPEG-encoded and decoded once,
like the materialised datasets. Like web data, the pool is biased: each shape mostly appears in one
size and on one background (:data:`SHAPE_BIAS`), whereas the datasets draw nuisances uniformly. Every step draws a batch, flips half of it horizontally (swapping
"left"/"right" in the caption) and writes a fresh random caption per image.

Loss: CLIP's symmetric InfoNCE, with every caption that truthfully describes an image counted as a
positive for it (captions omit nuisances at random, so many images in a batch fit one caption; a
generic "a photo of ..." also fits night, blurry and noisy photos).

Only token ids that occur in the training captions ever get a gradient; the token-embedding rows of
all other ids stay exactly at their seeded initial values (no weight decay on embeddings), which is
what lets the weight file store only the used rows.
"""
import argparse
import dataclasses
import io
import math
import multiprocessing
import os
import os.path as osp
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .clip_model import TOY_CLIP_CFG, TOY_IMAGE_SIZE, TOY_WEIGHTS, create_toy_clip, save_toy_clip, token_embedding_init
from .data import JPEG_QUALITY, TOY_DATASETS, class_list
from .templates import TOY_TEMPLATES
from .world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, STYLES, caption_spec, render, sample_scene, scene_rng
from .zeroshot import to_tensor, zero_shot_accuracy

STYLE_PROBS = {"photo": 0.5, "sketch": 0.1, "cartoon": 0.1, "night": 0.1, "blurry": 0.1, "noisy": 0.1}
PHOTO_LIKE = ("photo", "night", "blurry", "noisy")  # styles a generic "a photo of ..." caption fits
_POOL_KEY = 7  # separates the pretraining image stream from the datasets' streams
_EVAL_KEY = 8


# Web-like spurious correlations of the pretraining data: each shape usually comes in one size and on
# one background (the datasets draw both uniformly). A caption that does not state the size or the
# background is therefore learnt as "the typical one", so zero-shot prompts such as "a photo of a red
# star." are biased towards the typical size/background, while the image encoder still sees every
# combination. Few-shot prompt learning on unbiased data can correct that; zero-shot cannot.
SHAPE_BIAS = {  # shape: (usual size, usual background)
    "circle": ("small", "striped"),
    "square": ("large", "plain"),
    "triangle": ("large", "dotted"),
    "star": ("small", "checkered"),
    "cross": ("small", "gradient"),
    "heart": ("large", "striped"),
    "diamond": ("small", "plain"),
    "ring": ("large", "dotted"),
    "moon": ("small", "checkered"),
    "arrow": ("large", "gradient"),
}
P_USUAL_SIZE = 0.85
P_USUAL_BACKGROUND = 0.6


def _pool_scene(rng):
    styles = list(STYLE_PROBS)
    style = styles[int(rng.choice(len(styles), p=[STYLE_PROBS[s] for s in styles]))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    usual_size, usual_bg = SHAPE_BIAS[shape]
    size = usual_size if rng.random() < P_USUAL_SIZE else [s for s in SIZES if s != usual_size][0]
    if rng.random() < P_USUAL_BACKGROUND:
        background = usual_bg
    else:
        others = [b for b in BACKGROUNDS if b != usual_bg]
        background = others[int(rng.integers(len(others)))]
    return sample_scene(rng, shape=shape, style=style, size=size, background=background)


def _pool_item(args):
    seed, i, size = args
    scene = _pool_scene(scene_rng(_POOL_KEY, seed, i))
    buf = io.BytesIO()
    render(scene, size).save(buf, format="JPEG", quality=JPEG_QUALITY)
    buf.seek(0)
    with Image.open(buf) as im:
        arr = np.asarray(im.convert("RGB"))
    return scene, arr


def build_pool(n, seed, size=TOY_IMAGE_SIZE, workers=1, log=print):
    """``(scenes, uint8 array (n, size, size, 3))``; each item depends only on ``(seed, index)``."""
    t0 = time.time()
    jobs = [(seed, i, size) for i in range(n)]
    if workers > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers) as pool:
            items = pool.map(_pool_item, jobs, chunksize=256)
    else:
        items = [_pool_item(j) for j in jobs]
    scenes = [s for s, _ in items]
    images = np.stack([a for _, a in items])
    log(f"Rendered a pool of {n} images in {time.time() - t0:.1f}s")
    return scenes, images


def build_eval_sets(seed, per_class=10, size=TOY_IMAGE_SIZE):
    """Small in-memory zero-shot eval sets: ToyShapes classes in every style, and ToySymbols."""
    sets = {}
    for name, spec_name, styles in (("ToyShapes", "ToyShapes", STYLES), ("ToySymbols", "ToySymbols", ("photo",))):
        spec = TOY_DATASETS[spec_name]
        classes = class_list(spec)
        for style in styles:
            imgs, labels = [], []
            for label, (colour, shape) in enumerate(classes):
                for i in range(per_class):
                    rng = scene_rng(_EVAL_KEY, seed, STYLES.index(style), label, i, len(classes))
                    sc = sample_scene(rng, colour=colour, shape=shape, style=style)
                    buf = io.BytesIO()
                    render(sc, size).save(buf, format="JPEG", quality=JPEG_QUALITY)
                    buf.seek(0)
                    with Image.open(buf) as im:
                        imgs.append(np.asarray(im.convert("RGB")))
                    labels.append(label)
            cnames = [f"{c} {s}" for c, s in classes]
            sets[f"{name}/{style}"] = (to_tensor(np.stack(imgs)), torch.tensor(labels), cnames,
                                       TOY_TEMPLATES[spec_name])
    return sets


def evaluate(model, eval_sets):
    return {k: zero_shot_accuracy(model, x, y, c, t) for k, (x, y, c, t) in eval_sets.items()}


def encode_text_truncated(model, tokens):
    """``model.encode_text`` on the first L positions only (L = longest sequence in the batch).

    Exact: the text transformer is causal and pooling takes the EOT position, so positions after
    the last EOT cannot change the result.
    """
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ model.text_projection


def _attr_ids(scene):
    return (list(COLOURS).index(scene.colour), SHAPES.index(scene.shape), SIZES.index(scene.size),
            POSITIONS.index(scene.position), BACKGROUNDS.index(scene.background), STYLES.index(scene.style))


def compatibility(img_attrs, cap_attrs, cap_mentioned):
    """(B, B) bool: caption j truthfully describes image i.

    ``img_attrs``/``cap_attrs``: (B, 6) ints (colour, shape, size, position, background, style) of the
    images and of the scenes the captions were written for; ``cap_mentioned``: (B, 4) bools (size,
    position, background, style stated).
    """
    a = img_attrs[:, None, :]
    b = cap_attrs[None, :, :]
    same = a == b
    ok = same[..., 0] & same[..., 1]
    for k, col in ((0, 2), (1, 3), (2, 4)):
        ok &= ~cap_mentioned[None, :, k] | same[..., col]
    photo_like = torch.tensor([STYLES.index(s) for s in PHOTO_LIKE])
    img_photo_like = torch.isin(img_attrs[:, 5], photo_like)[:, None]
    cap_is_photo = (cap_attrs[:, 5] == STYLES.index("photo"))[None, :]
    style_ok = same[..., 5] | (cap_is_photo & img_photo_like)
    ok &= ~cap_mentioned[None, :, 3] | style_ok
    return ok


def multi_positive_clip_loss(img_f, txt_f, logit_scale, compat):
    logits = logit_scale * img_f @ txt_f.t()
    t = compat.float()
    loss_i = -(t / t.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(t.t() / t.t().sum(1, keepdim=True) * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


def _flip_position(pos):
    return {"left": "right", "right": "left"}.get(pos, pos)


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(out=TOY_WEIGHTS, steps=1500, batch_size=256, pool=40000, lr=1.5e-3, weight_decay=0.1, warmup=75,
             seed=0, threads=2, eval_every=250, log=print, max_minutes=None, eval_per_class=10):
    from vlprompt.clip.tokenizer import tokenize

    torch.set_num_threads(threads)
    t_start = time.time()
    log(f"toy CLIP pretraining: steps={steps} batch={batch_size} pool={pool} lr={lr} seed={seed} "
        f"threads={threads}")
    scenes, images = build_pool(pool, seed, workers=threads, log=log)
    eval_sets = build_eval_sets(seed, per_class=eval_per_class)
    pool_x = to_tensor(images)  # (N, 3, H, W) normalised
    del images

    model = create_toy_clip(seed=seed)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    gen = torch.Generator().manual_seed(seed)
    token_cache = {}
    used_tokens = set()

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    t_train = time.time()
    history = []
    done = 0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(0, pool, (batch_size,), generator=gen)
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x = pool_x[idx]
        x[flip] = x[flip].flip(-1)
        crng = scene_rng(_POOL_KEY, seed, 10**9 + step)
        texts, cap_attrs, mentioned = [], [], []
        for j, (i, fl) in enumerate(zip(idx.tolist(), flip.tolist())):
            sc = scenes[i]
            if fl:
                sc = dataclasses.replace(sc, position=_flip_position(sc.position))
            text, ment = caption_spec(sc, crng)
            texts.append(text)
            cap_attrs.append(_attr_ids(sc))
            mentioned.append([k in ment for k in ("size", "position", "background", "style")])
        toks = []
        for text in texts:
            if text not in token_cache:
                token_cache[text] = tokenize(text)[0]
                used_tokens.update(int(t) for t in token_cache[text] if int(t) != 0)
            toks.append(token_cache[text])
        toks = torch.stack(toks)
        # Image j shows exactly the (possibly flipped) scene caption j was written for.
        scene_attrs = torch.tensor(cap_attrs)
        compat = compatibility(scene_attrs, scene_attrs, torch.tensor(mentioned))

        img_f = F.normalize(model.encode_image(x), dim=-1)
        txt_f = F.normalize(encode_text_truncated(model, toks), dim=-1)
        loss = multi_positive_clip_loss(img_f, txt_f, model.logit_scale.exp(), compat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        done = step + 1
        if done % 25 == 0 or done == 1:
            el = time.time() - t_train
            eta = el / done * (steps - done)
            log(f"step {done}/{steps} loss {loss.item():.4f} scale {model.logit_scale.exp().item():.1f} "
                f"lr {lr_at(step):.2e} elapsed {el / 60:.1f} min eta {eta / 60:.1f} min")
        if eval_every and (done % eval_every == 0 or done == steps):
            accs = evaluate(model, eval_sets)
            model.train()
            history.append({"step": done, **{k: round(v, 2) for k, v in accs.items()}})
            log(f"zero-shot @ step {done}: " + ", ".join(f"{k} {v:.1f}" for k, v in accs.items()))
        if max_minutes is not None and (time.time() - t_start) / 60 > max_minutes:
            log(f"Stopping early at step {done}: --max-minutes {max_minutes} reached")
            break
    train_seconds = time.time() - t_train
    model.eval()
    accs = evaluate(model, eval_sets)
    # Sanity check of the storage scheme: untouched token rows are still at their initial values.
    init = token_embedding_init(TOY_CLIP_CFG["text_cfg"]["vocab_size"], TOY_CLIP_CFG["text_cfg"]["width"])
    changed = (model.token_embedding.weight.detach() != init).any(dim=1).nonzero().flatten().tolist()
    if not set(changed) <= used_tokens:
        raise RuntimeError(f"token rows {sorted(set(changed) - used_tokens)[:10]} changed without being used")
    meta = {
        "steps": done,
        "batch_size": batch_size,
        "pool": pool,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "threads": threads,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "torch": str(torch.__version__),
        "vocab_rows": len(used_tokens),
        "zero_shot_eval": {k: round(v, 2) for k, v in accs.items()},
        "history": history,
        "command": " ".join(["python -m vlprompt.toy.pretrain"] + sys.argv[1:]),
    }
    save_toy_clip(model, out, sorted(used_tokens), meta=meta)
    log(f"Saved {out} ({osp.getsize(out) / 1e6:.2f} MB) and {out}.sha256; "
        f"training took {train_seconds / 60:.1f} min ({(time.time() - t_start) / 60:.1f} min in all)")
    log("final zero-shot (in-memory eval sets): " + ", ".join(f"{k} {v:.1f}" for k, v in accs.items()))
    return model, meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=TOY_WEIGHTS, help="weight file to write (a .sha256 is written beside it)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--pool", type=int, default=40000, help="number of rendered training images")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=75)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads and pool-rendering processes")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--max-minutes", type=float, default=None, help="stop early (and save) after this long")
    args = p.parse_args(argv)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    pretrain(out=args.out, steps=args.steps, batch_size=args.batch_size, pool=args.pool, lr=args.lr,
             weight_decay=args.weight_decay, warmup=args.warmup, seed=args.seed, threads=args.threads,
             eval_every=args.eval_every, max_minutes=args.max_minutes)


if __name__ == "__main__":
    main()
