"""The test-time run: a stream of single test images through a test-time procedure (episodic or online).

``run_test_time(trainer)`` is what ``train.py --eval-only ... TTA.METHOD <name>`` calls instead of the plain
test: it wraps the built (and loaded) trainer's model (:meth:`vlprompt.tta.base.BaseModel.from_trainer`),
refuses a procedure/base pair that does not fit (one line), then for every test image of the stream

1. reads the image and makes its ``V`` views (:class:`vlprompt.tta.views.ViewMaker`, seeded per image);
2. computes the raw image features of all views in one batched pass of the base model's image tower;
3. episodic procedures: ``reset()`` (online procedures were reset once, at the start of the stream);
4. ``step(sample)`` -> (K,) logits; prediction = argmax, confidence = max softmax probability.

**Order.** ``TTA.ORDER``: ``dataset`` (the split's order), ``shuffle`` (a permutation drawn with
``random.Random(TTA.ORDER_SEED)``), or ``auto`` (episodic: dataset order, as the TTA-VLM benchmark; online:
shuffled, as TDA's and DMN's ``DataLoader(shuffle=True)``). The order is recorded (its sha256 in results.json, the
indices in the per-sample outputs).

**Outputs** (in ``OUTPUT_DIR``): ``results.json`` (the engine's record; metrics ``accuracy``, ``error``, ``ece``
(C-TPT's 20-bin ECE, in %) and the ``tta`` block: method, base model and kind, episodic/online, number of views,
AugMix, view seed, order and order seed, procedure state summary, seconds per image) and ``tta_outputs.json``
(per sample in stream order: dataset index, label, prediction, confidence; what the TTA-VLM benchmark keeps to
recompute accuracy and calibration). ``TTA.SAVE_LOGITS True`` also writes ``tta_logits.pt`` ((N, K) fp32 logits in
stream order, for other metrics).
"""
import hashlib
import json
import os.path as osp
import random
import time

import torch

from vlprompt.utils import atomic_write

from .base import BaseModel, Sample, TTAError, get_procedure
from .objectives import expected_calibration_error
from .views import ViewMaker, augmix_for_dataset

__all__ = ["run_test_time", "stream_order", "OUTPUTS_FILE", "LOGITS_FILE", "ORDERS"]

OUTPUTS_FILE = "tta_outputs.json"
LOGITS_FILE = "tta_logits.pt"
ORDERS = ("auto", "dataset", "shuffle")


def stream_order(n, order, seed, episodic):
    """The dataset indices in stream order (see the module docstring)."""
    order = str(order).lower()
    if order not in ORDERS:
        raise TTAError(f"TTA.ORDER must be one of {', '.join(ORDERS)}, got '{order}'")
    if order == "auto":
        order = "dataset" if episodic else "shuffle"
    idx = list(range(n))
    if order == "shuffle":
        random.Random(int(seed)).shuffle(idx)
    return idx, order


def check_tta_cfg(cfg):
    """Cheap checks of the TTA keys (before anything is built)."""
    t = cfg.TTA
    cls = get_procedure(t.METHOD)
    if int(t.N_VIEWS) < 1:
        raise TTAError(f"TTA.N_VIEWS must be >= 1, got {t.N_VIEWS}")
    if str(t.AUGMIX).lower() not in ("auto", "on", "off"):
        raise TTAError(f"TTA.AUGMIX must be auto, on or off, got '{t.AUGMIX}'")
    if str(t.ORDER).lower() not in ORDERS:
        raise TTAError(f"TTA.ORDER must be one of {', '.join(ORDERS)}, got '{t.ORDER}'")
    return cls


def _read(path):
    from vlprompt.utils import read_image

    return read_image(path)


def run_test_time(trainer, progress=True):
    """Run the test-time procedure ``cfg.TTA.METHOD`` over the test split; returns the metrics dict."""
    cfg = trainer.cfg
    cls = check_tta_cfg(cfg)
    base = BaseModel.from_trainer(trainer)
    reason = cls.refusal(base)
    if reason:
        raise TTAError(f"{cfg.TTA.METHOD} cannot wrap {base.name}: {reason}")
    if hasattr(trainer, "set_model_mode"):
        trainer.set_model_mode("eval")
    proc = cls(cfg, base)
    n_views = cls.n_views(cfg)
    if str(cfg.TTA.AUGMIX).lower() == "auto":
        augmix = bool(cls.augmix_auto(cfg.DATASET.NAME))
    else:
        augmix = augmix_for_dataset(cfg.TTA.AUGMIX, cfg.DATASET.NAME)
    size = cfg.INPUT.SIZE[0] if isinstance(cfg.INPUT.SIZE, (list, tuple)) else cfg.INPUT.SIZE
    maker = ViewMaker(n_views, size=size, mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD, augmix=augmix,
                      seed=cfg.TTA.VIEW_SEED)
    items = trainer.dm.dataset.test
    order, order_kind = stream_order(len(items), cfg.TTA.ORDER, cfg.TTA.ORDER_SEED, cls.EPISODIC)
    if int(cfg.TTA.MAX_IMAGES) > 0:
        order = order[: int(cfg.TTA.MAX_IMAGES)]
    mode = "episodic" if cls.EPISODIC else "online"
    print(f"Test-time adaptation: {cfg.TTA.METHOD} ({mode}) on {base.name} ({base.kind}); {n_views} view(s) per "
          f"image, AugMix {'on' if augmix else 'off'}, view seed {cfg.TTA.VIEW_SEED}; order {order_kind}"
          + (f" (seed {cfg.TTA.ORDER_SEED})" if order_kind == "shuffle" else "")
          + f"; {len(order)} of {len(items)} test images")
    proc.reset()
    labels, preds, confs, logits_all = [], [], [], []
    t0 = time.time()
    every = max(1, len(order) // 10)
    for pos, idx in enumerate(order):
        item = items[idx]
        views = maker(_read(item.impath), idx).to(base.device)
        feats = base.image_features(views)
        if cls.EPISODIC and pos > 0:
            proc.reset()
        logits = proc.step(Sample(views=views, image_features=feats, index=idx, position=pos)).detach().float()
        if logits.dim() != 1 or logits.numel() != len(base.classnames):
            raise RuntimeError(f"{cfg.TTA.METHOD}.step returned logits of shape {tuple(logits.shape)}, expected "
                               f"({len(base.classnames)},)")
        prob = logits.softmax(-1)
        conf, pred = prob.max(-1)
        labels.append(int(item.label))
        preds.append(int(pred))
        confs.append(float(conf))
        if cfg.TTA.SAVE_LOGITS:
            logits_all.append(logits.cpu())
        if progress and ((pos + 1) % every == 0 or pos + 1 == len(order)):
            acc = 100.0 * sum(p == y for p, y in zip(preds, labels)) / len(preds)
            print(f"tta [{pos + 1}/{len(order)}] running acc {acc:.2f}%")
    seconds = time.time() - t0
    n = len(labels)
    correct = [p == y for p, y in zip(preds, labels)]
    acc = 100.0 * sum(correct) / max(n, 1)
    ece = 100.0 * expected_calibration_error(confs, correct)
    metrics = {"accuracy": acc, "error": 100.0 - acc, "ece": ece}
    finish = getattr(proc, "finish", None)  # a procedure's end-of-stream metrics (DMN-ZS: the official beta2 search)
    extra = finish(labels) if callable(finish) else None
    print("=> result")
    print(f"* total: {n:,}")
    print(f"* correct: {sum(correct):,}")
    print(f"* accuracy: {acc:.1f}%")
    print(f"* error: {100.0 - acc:.1f}%")
    print(f"* ece: {ece:.2f}%")
    for key, value in (extra or {}).items():
        metrics[key] = value
        print(f"* {key}: {value:.2f}%" if key.endswith("accuracy") else f"* {key}: {value:g}")
    order_digest = hashlib.sha256(json.dumps(order).encode()).hexdigest()[:16]
    trainer.tta_info = {
        "method": cfg.TTA.METHOD,
        "base_model": base.name,
        "base_kind": base.kind,
        "model_dir": trainer.run_info.get("model_dir", "") if hasattr(trainer, "run_info") else "",
        "mode": mode,
        "n_views": n_views,
        "augmix": augmix,
        "view_seed": int(cfg.TTA.VIEW_SEED),
        "order": order_kind,
        "order_seed": int(cfg.TTA.ORDER_SEED) if order_kind == "shuffle" else None,
        "order_sha256": order_digest,
        "n_images": n,
        "seconds_per_image": seconds / max(n, 1),
        "state": proc.state_summary(),
        "outputs_file": OUTPUTS_FILE,
    }
    if cfg.OUTPUT_DIR and getattr(trainer, "is_main_process", True):
        with atomic_write(osp.join(cfg.OUTPUT_DIR, OUTPUTS_FILE), "w") as f:
            json.dump({"method": cfg.TTA.METHOD, "base_model": base.name, "index": order, "label": labels,
                       "prediction": preds, "confidence": confs}, f)
        if cfg.TTA.SAVE_LOGITS:
            with atomic_write(osp.join(cfg.OUTPUT_DIR, LOGITS_FILE), "wb") as f:
                torch.save({"index": torch.tensor(order), "logits": torch.stack(logits_all)}, f)
        trainer.write_results(metrics, eval_seconds=seconds)
    return metrics
