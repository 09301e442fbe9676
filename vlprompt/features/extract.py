"""Features of the frozen, unprompted image tower for a trainer, through the feature store.

The engine side of the store:

* :func:`cached_eval_batches` is what ``SimpleTrainer.test`` calls: for a trainer that declares
  ``FROZEN_IMAGE_FEATURES = True`` (its test-time image features are those of the frozen, unprompted
  image tower) and a sequential test loader, it returns the split's features batch by batch (loaded
  from the store, or computed once in exactly the batches of the uncached evaluation and stored), with
  their labels; the trainer turns them into logits with ``model_inference(None, features=...)``.
  For every other trainer (learned image features: MaPLe, IVLP, VPT, APLe, MuDPT) it returns ``None``
  and the store is never touched.
* :func:`view_features` gives feature-based methods (linear probe, CLIP-Adapter, Tip-Adapter) the
  features of their training images, test view or augmented views (view ``v`` of image ``i`` is drawn
  with a seed derived from ``(seed, v, i)``, so it is the same in every run and every process).

The tower is found as ``trainer.frozen_image_tower()`` if the trainer defines it, else
``trainer.model.image_encoder``; it must be a :class:`vlprompt.clip.prompted.PromptedVisionEncoder`
without prompts. Features are computed under the trainer's precision (``trainer.precision.autocast()``
where it has one), exactly as its own forward computes them.
"""
import contextlib
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from .keys import feature_key, file_list_digest, transform_description
from .store import FeatureStore
from .weights import tower_weights_digest

__all__ = ["frozen_tower", "trainer_store", "precision_description", "tower_digest", "store_enabled_for_test",
           "loader_features", "cached_eval_batches", "effective_batch_size", "view_features", "SeededViewDataset", "view_seed"]


def frozen_tower(trainer):
    """The trainer's frozen, unprompted image tower (see the module docstring)."""
    from vlprompt.clip.prompted import PromptedVisionEncoder

    fn = getattr(trainer, "frozen_image_tower", None)
    enc = fn() if callable(fn) else getattr(getattr(trainer, "model", None), "image_encoder", None)
    if not isinstance(enc, PromptedVisionEncoder) or enc.depth != 0:
        raise TypeError(
            f"{type(trainer).__name__} declares FROZEN_IMAGE_FEATURES but has no unprompted image tower "
            "(define frozen_image_tower() returning a PromptedVisionEncoder without prompts, or set "
            "FROZEN_IMAGE_FEATURES = False)"
        )
    return enc


def _autocast(trainer):
    prec = getattr(trainer, "precision", None)
    return prec.autocast() if prec is not None and hasattr(prec, "autocast") else contextlib.nullcontext()


def trainer_store(trainer):
    """The trainer's :class:`FeatureStore` (``FEATURES.DIR`` or the shared default folder)."""
    store = getattr(trainer, "_feature_store", None)
    if store is None:
        cfg = trainer.cfg
        root = cfg.FEATURES.DIR if "FEATURES" in cfg else ""
        store = FeatureStore(root)
        trainer._feature_store = store
    return store


def precision_description(trainer, tower, device):
    """Weights dtype, autocast state and device type under which the tower runs for this trainer."""
    with _autocast(trainer):
        dev = device.type
        on = torch.is_autocast_enabled(dev) if dev in ("cpu", "cuda") else False
        ac = str(torch.get_autocast_dtype(dev)) if on else "none"
    return f"weights={tower.dtype}|autocast={ac}|device={dev}"


def tower_digest(trainer, tower):
    """Digest of the tower's tensors: memoised on the trainer until a tensor changes, and across
    processes remembered per weights file in the store (:mod:`.weights`: only where that is exact)."""
    state = tuple((id(t), t.data_ptr(), t._version) for t in tower.visual.state_dict().values() if torch.is_tensor(t))
    memo = getattr(trainer, "_feature_tower_digest", None)
    if memo is None or memo[0] != state:
        store = trainer_store(trainer)
        digest, how = tower_weights_digest(trainer, tower, store.root, log=store.log)
        memo = (state, digest, how)
        trainer._feature_tower_digest = memo
    return memo[1]


def _arch(trainer):
    b = trainer.cfg.MODEL.BACKBONE
    tag = getattr(b, "PRETRAINED_TAG", "") or ""
    return f"{b.NAME}{'@' + tag if tag else ''}"


def store_enabled_for_test(trainer, loader):
    """True when the engine may evaluate ``trainer`` on ``loader`` from stored features (exactly)."""
    cfg = trainer.cfg
    if not getattr(trainer, "FROZEN_IMAGE_FEATURES", False):
        return False
    if "FEATURE_CACHE" in cfg.TEST and not cfg.TEST.FEATURE_CACHE:
        return False
    ds = getattr(loader, "dataset", None)
    if not isinstance(getattr(loader, "sampler", None), SequentialSampler) or not hasattr(ds, "data_source"):
        return False
    return getattr(ds, "k_tfm", 1) == 1 and not getattr(ds, "return_img0", False)


def effective_batch_size(batch_size, n):
    """The batch size that determines how ``n`` images are cut into sequential batches: ``min(batch_size,
    n)`` (every batch size >= n gives one batch of all ``n`` images, hence the same features)."""
    return max(1, min(int(batch_size), int(n)))


def _encode_loader(trainer, tower, loader, device):
    feats = []
    with torch.no_grad(), _autocast(trainer):
        for batch in loader:
            feats.append(tower(batch["img"].to(device)).detach().cpu())
    return torch.cat(feats, dim=0)


def _wrapper_kind(ds):
    """The dataset wrappers that only apply ``transform`` to the decoded image share entries."""
    from vlprompt.data.data_manager import DatasetWrapper

    if type(ds) in (DatasetWrapper, SeededViewDataset):
        return "read_image+transform"
    return f"{type(ds).__module__}.{type(ds).__qualname__}"


def loader_features(trainer, loader, split, view=None, seed=None):
    """``(features (N, d) on CPU, hit)`` of the images of ``loader`` (sequential) through the store."""
    tower = frozen_tower(trainer)
    device = trainer.device
    ds = loader.dataset
    items = ds.data_source
    key = feature_key(
        arch=_arch(trainer), weights=tower_digest(trainer, tower), precision=precision_description(trainer, tower, device),
        dataset=trainer.cfg.DATASET.NAME, split=split, files=file_list_digest([it.impath for it in items]),
        n_files=len(items), transform=transform_description(ds.transform, _wrapper_kind(ds)),
        batch_size=effective_batch_size(loader.batch_size, len(items)),
        view=view, seed=seed,
    )
    store = trainer_store(trainer)
    feats, hit = store.get_or_compute(
        key, lambda: _encode_loader(trainer, tower, loader, device),
        info={"dataset": trainer.cfg.DATASET.NAME, "split": split},
    )
    if feats.shape[0] != len(items):  # cannot happen for a verified entry; never evaluate on a wrong count
        raise RuntimeError(f"feature-store entry for {split} has {feats.shape[0]} rows for {len(items)} images")
    how = "loaded from" if hit else "computed and stored in"
    print(f"Feature store: {split} features ({feats.shape[0]} x {feats.shape[1]}) {how} {store.root}")
    return feats, hit


def cached_eval_batches(trainer, loader, split):
    """``None`` (not applicable: evaluate from images) or a list of ``(features, labels)`` batches on
    the trainer's device, in the loader's order and batch sizes."""
    if not store_enabled_for_test(trainer, loader):
        return None
    feats, _ = loader_features(trainer, loader, split)
    labels = torch.tensor([int(it.label) for it in loader.dataset.data_source], dtype=torch.long)
    bs, device = loader.batch_size, trainer.device
    return [(feats[i:i + bs].to(device), labels[i:i + bs].to(device)) for i in range(0, feats.shape[0], bs)]


# ------------------------------------------------------------------------------------------------
# training views for feature-based methods
# ------------------------------------------------------------------------------------------------


def view_seed(seed, view, index):
    """The seed of augmented view ``view`` of image ``index`` in a run seeded with ``seed``."""
    return (int(seed) * 1_000_003 + int(view) * 7_919 + int(index)) % (2 ** 31 - 1)


class SeededViewDataset(Dataset):
    """Items ``{"img", "label"}`` of ``data_source``; with ``view`` set, the (random) transform of item
    ``i`` runs under the seed :func:`view_seed` ``(seed, view, i)`` (torch, ``random`` and numpy)."""

    def __init__(self, data_source, transform, view=None, seed=0):
        self.data_source = data_source
        self.transform = transform
        self.view = view
        self.seed = seed
        self.k_tfm = 1

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        from vlprompt.utils import read_image

        item = self.data_source[idx]
        img = read_image(item.impath)
        if self.view is not None:
            s = view_seed(self.seed, self.view, idx)
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s)
        return {"img": self.transform(img), "label": item.label}


def view_features(trainer, data_source, transform, split, view=None, seed=0, batch_size=None):
    """``(features (N, d) on CPU, hit)`` of ``data_source`` under ``transform``: the deterministic view
    (``view=None``) or augmented view ``view`` of a run seeded with ``seed``. The caller's RNG state is
    left as it was."""
    batch_size = int(batch_size or trainer.cfg.DATALOADER.TEST.BATCH_SIZE)
    ds = SeededViewDataset(data_source, transform, view=view, seed=seed)
    loader = DataLoader(ds, batch_size=batch_size, sampler=SequentialSampler(ds), num_workers=0)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    try:
        return loader_features(trainer, loader, split, view=view, seed=None if view is None else seed)
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
