"""Training from stored features, for feature-based methods (CLIP-Adapter, Tip-Adapter-F).

:class:`FeatureEpochs` is a mixin for a :class:`vlprompt.engine.clip_trainer.ClipPromptTrainer` whose
learnable part sits after the frozen, unprompted image tower. Its batch source
(:class:`FeatureViewSource`, read by the engine's one loop) replaces the image loader by the stored
features of one augmented view of the training images per epoch:

* epoch ``e`` uses view ``e % V`` (``V`` = ``FEATURES.TRAIN_VIEWS``; 0 = one view per epoch, i.e. a
  fresh augmentation every epoch as with the image loader); view ``v`` of image ``i`` is drawn with the
  training transform under a seed derived from ``(SEED, v, i)``, so every run with this seed shares
  the views, and a rerun (another LR, another ratio) computes no image feature at all;
* the batches follow the image loader's rules: a random permutation from the global torch RNG per
  epoch (checkpointed and resumed by the engine), ``DATALOADER.TRAIN_X.BATCH_SIZE``, ``drop_last``
  when there is at least one full batch (a method may keep the last partial batch: ``drop_last()``);
* every batch goes through the trainer's ``forward_backward({"feat": F, "label": y})`` and the engine
  step, with the usual log line and hooks (LR stepping per iteration or epoch, checkpoints).

``FEATURES.TRAIN_CACHE False`` trains from images through the engine's own loop instead (the
trainer's ``forward_backward`` then receives image batches and encodes them with the frozen tower).
"""
import torch

from vlprompt.data.batch_sources import BatchSource

from .extract import frozen_tower, view_features

__all__ = ["FeatureEpochs", "FeatureViewSource", "FrozenFeatureInference", "run_seed"]


class FrozenFeatureInference:
    """``model_inference`` / ``logits_from_image_features`` of a training-free trainer whose ``self.model`` has an
    ``image_encoder`` (the frozen, unprompted tower) and ``logits_from_image_features`` (Tip-Adapter, GDA):
    test batches are evaluated from stored features when the engine has them, else from images."""

    def model_inference(self, image, features=None):
        with torch.no_grad(), self.precision.autocast():
            if features is None:
                features = self.model.image_encoder(image)
            return self.model.logits_from_image_features(features)

    def logits_from_image_features(self, features):
        return self.model.logits_from_image_features(features)


def run_seed(cfg):
    """The seed that keys a run's augmented views (``SEED``, or 0 when unset)."""
    return int(cfg.SEED) if int(cfg.SEED) >= 0 else 0


class FeatureViewSource(BatchSource):
    """Batches ``({"feat": F, "label": y},)`` of stored features ``feats`` (N, d) with ``labels`` (N,):
    a random permutation drawn from the global torch RNG when the source is made (one per epoch),
    ``batch_size`` rows a batch; the last partial batch is dropped when ``drop_last`` and there is at
    least one full batch (the image loader's rule). ``shuffle=False``: the rows in their stored order and no
    RNG draw (LP++'s full-batch steps)."""

    def __init__(self, feats, labels, batch_size, drop_last, device, shuffle=True):
        self.feats, self.labels, self.bs, self.device = feats, labels, int(batch_size), device
        n = feats.shape[0]
        self.order = torch.randperm(n) if shuffle else torch.arange(n)
        full = n // self.bs
        self.n = full if (full >= 1 and drop_last) else -(-n // self.bs)

    def __len__(self):
        return self.n

    def __iter__(self):
        for b in range(self.n):
            idx = self.order[b * self.bs:(b + 1) * self.bs]
            yield ({"feat": self.feats[idx].to(self.device), "label": self.labels[idx].to(self.device)},)


class FeatureEpochs:
    """Mixin: a batch source of stored features of augmented training views (module docstring)."""

    def train_from_store(self):
        return bool(self.cfg.FEATURES.TRAIN_CACHE) if "FEATURES" in self.cfg else True

    def n_train_views(self):
        v = int(self.cfg.FEATURES.TRAIN_VIEWS) if "FEATURES" in self.cfg else 0
        return v if v > 0 else max(int(self.max_epoch), 1)

    def train_view_offset(self):
        """First view index of the training epochs (a method whose other views serve another purpose,
        e.g. Tip-Adapter-F's cache keys, starts after them)."""
        return 0

    def drop_last(self):
        """Drop the last partial batch when there is at least one full batch (the engine's loader rule)."""
        return True

    def train_transform(self):
        return self.train_loader_x.dataset.transform

    def train_view_features(self, view):
        """(N, d) raw tower features of augmented view ``view`` of ``train_x`` (CPU)."""
        feats, _ = view_features(self, self.dm.dataset.train_x, self.train_transform(), "train", view=view,
                                 seed=run_seed(self.cfg))
        return feats

    def image_features_of(self, batch):
        """Raw frozen-tower features of a batch: stored (``feat``) or encoded from ``img``."""
        if "feat" in batch:
            return batch["feat"].to(self.device)
        tower = frozen_tower(self)
        with torch.no_grad(), self.precision.autocast():
            return tower(batch["img"].to(self.device))

    def batch_source(self):
        if not self.train_from_store():
            return super().batch_source()
        feats = self.train_view_features(self.train_view_offset() + self.epoch % self.n_train_views())
        labels = torch.tensor([int(it.label) for it in self.dm.dataset.train_x], dtype=torch.long)
        return FeatureViewSource(feats, labels, self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE, self.drop_last(), self.device)
