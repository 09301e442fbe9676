"""Zero-shot evaluation of a CLIP model on toy data (used by pretraining, the docs numbers and tests).

Images go through the same preprocessing as the engine's test transform on toy data (the images are
already at the model's resolution, so resize and centre-crop are identities): ``ToTensor`` then
normalisation with CLIP's mean and std.
"""
import os.path as osp

import numpy as np
import torch
from PIL import Image

from .templates import TOY_TEMPLATES

__all__ = ["CLIP_MEAN", "CLIP_STD", "to_tensor", "class_text_features", "zero_shot_predict",
           "zero_shot_accuracy", "load_split_images"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_tensor(images):
    """uint8 array/tensor (N, H, W, 3) or list of PIL images -> normalised float tensor (N, 3, H, W)."""
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    x = torch.as_tensor(np.asarray(images)).float().div_(255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def class_text_features(model, classnames, template):
    from vlprompt.clip.tokenizer import tokenize

    texts = [template.format(c.replace("_", " ")) for c in classnames]
    feats = model.encode_text(tokenize(texts, context_length=model.positional_embedding.shape[0]))
    return feats / feats.norm(dim=-1, keepdim=True)


@torch.no_grad()
def zero_shot_predict(model, images, classnames, template, batch_size=500):
    """Predicted labels for ``images`` (normalised tensor) against ``classnames`` with ``template``."""
    model.eval()
    text = class_text_features(model, classnames, template)
    preds = []
    for i in range(0, images.shape[0], batch_size):
        f = model.encode_image(images[i:i + batch_size])
        f = f / f.norm(dim=-1, keepdim=True)
        preds.append((f @ text.T).argmax(-1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def zero_shot_accuracy(model, images, labels, classnames, template):
    """Top-1 accuracy in percent."""
    pred = zero_shot_predict(model, images, classnames, template)
    labels = torch.as_tensor(labels)
    return float((pred == labels).float().mean() * 100.0)


def load_split_images(dataset_dir, name, split="test", limit_per_class=None):
    """Images, labels and classnames of one split of a materialised toy dataset (read as the engine
    reads them: PIL, RGB). Returns ``(tensor, labels, classnames)``."""
    from vlprompt.utils import read_json

    from .data import split_file_name

    entries = read_json(osp.join(dataset_dir, split_file_name(name)))[split]
    names = {}
    per_class = {}
    keep = []
    for rel, label, cname in entries:
        names[int(label)] = cname
        per_class[label] = per_class.get(label, 0) + 1
        if limit_per_class is None or per_class[label] <= limit_per_class:
            keep.append((rel, int(label)))
    imgs = []
    for rel, _ in keep:
        with Image.open(osp.join(dataset_dir, "images", rel)) as im:
            imgs.append(np.asarray(im.convert("RGB")))
    labels = torch.tensor([y for _, y in keep])
    classnames = [names[i] for i in range(len(names))]
    return to_tensor(np.stack(imgs)), labels, classnames


def template_for(name):
    """The zero-shot template of toy dataset ``name``."""
    return TOY_TEMPLATES[name]


def main(argv=None):
    """``python -m vlprompt.toy.zeroshot --root DATA``: zero-shot top-1 of the toy CLIP per toy test set."""
    import argparse
    import time

    from vlprompt.clip import build_clip_model

    from .data import TOY_DATASETS, ensure_toy_dataset

    p = argparse.ArgumentParser(prog="python -m vlprompt.toy.zeroshot", description=main.__doc__)
    p.add_argument("--root", default="data", help="data folder (toy datasets are generated there if missing)")
    p.add_argument("--weights", default="", help="toy CLIP weight file (default: the shipped one)")
    p.add_argument("--datasets", nargs="+", default=list(TOY_DATASETS))
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    model = build_clip_model("toy-clip", path=args.weights)
    rows = []
    for name in args.datasets:
        t0 = time.time()
        d = ensure_toy_dataset(name, args.root)
        x, y, cnames = load_split_images(d, name, args.split)
        acc = zero_shot_accuracy(model, x, y, cnames, TOY_TEMPLATES[name])
        rows.append((name, TOY_DATASETS[name].style, len(cnames), len(y), acc))
        print(f"{name}: {acc:.2f}% ({len(y)} images, {len(cnames)} classes, {time.time() - t0:.1f}s)")
    print(f"\n| dataset | style | classes | {args.split} images | zero-shot top-1 |\n|---|---|---|---|---|")
    for name, style, k, n, acc in rows:
        print(f"| {name} | {style} | {k} | {n} | {acc:.1f} % |")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
