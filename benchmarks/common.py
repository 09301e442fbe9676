"""Shared set-up for the benchmarks: a fabricated ImageFolder dataset and trainers built from the
real config files with random-weight backbones (no downloads)."""
import json
import os
import os.path as osp
import random
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def make_folder_dataset(root, n_classes, n_per_class=10, size=64, seed=0):
    rng = np.random.RandomState(seed)
    for c in range(n_classes):
        d = osp.join(root, f"class_{c:04d}")
        os.makedirs(d, exist_ok=True)
        for j in range(n_per_class):
            arr = rng.randint(0, 255, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(osp.join(d, f"{j}.jpg"))
    return root


def _fixture_opts(trainer, data_root):
    """What the trainer's method card says a build needs beside a config (its ``fixture``; PromptKD: a teacher
    run, fabricated here on the tiny test backbone, so the benchmark times the student with a small teacher)."""
    from vlprompt.engine import TRAINER_REGISTRY
    from vlprompt.engine.methods import method_card

    card = method_card(trainer)
    if not card.fixture:
        return []
    return list(getattr(TRAINER_REGISTRY.get(trainer), card.fixture)(data_root, "test-vit-tiny"))


def build(trainer, config_file, n_classes, device="cpu", opts=(), data_root=None):
    """A trainer built by the engine from ``config_file`` on ``n_classes`` fabricated classes."""
    import trainers  # noqa: F401  (register)
    from vlprompt.config import extend_cfg, get_cfg_default, merge_from_file, merge_from_list
    from vlprompt.engine import build_trainer
    from vlprompt.utils import set_random_seed

    data_root = data_root or tempfile.mkdtemp(prefix="vlprompt_bench_")
    folder = osp.join(data_root, f"k{n_classes}")
    if not osp.isdir(folder):
        make_folder_dataset(folder, n_classes)
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, osp.join(ROOT, "configs", "trainers", config_file))
    cfg.DATASET.NAME = "ImageFolder"
    cfg.DATASET.ROOT = data_root
    cfg.DATASET.FOLDER = f"k{n_classes}"
    cfg.TRAINER.NAME = trainer
    cfg.OUTPUT_DIR = tempfile.mkdtemp(prefix="vlprompt_bench_out_")
    cfg.SEED = 1
    cfg.VERBOSE = False
    cfg.USE_CUDA = device == "cuda"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.MODEL.BACKBONE.RANDOM_INIT = True
    merge_from_list(cfg, _fixture_opts(trainer, data_root) + list(opts))
    cfg.freeze()
    set_random_seed(1)
    random.seed(1)
    return build_trainer(cfg)


def sync(device):
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn, device, iters, warmup=1):
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t) / iters


def peak_memory_mb(device):
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


def write_json(obj, path, indent=2):
    """``obj`` as JSON at ``path``, written to ``path.tmp`` first and moved into place (never half-written)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(tmp, path)


def ab(fn_a, fn_b, reps, device):
    """Interleaved A/B timing after one warm-up each: (results_a, results_b, times_a, times_b)."""
    ra, rb = fn_a(), fn_b()
    ta, tb = [], []
    for _ in range(reps):
        for fn, ts in ((fn_a, ta), (fn_b, tb)):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t)
    return ra, rb, ta, tb
