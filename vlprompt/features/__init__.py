"""Frozen-feature store: features of a frozen, unprompted image tower computed once and reused by every
method, seed and run that can use them (docs/ENGINE.md, "Feature store").

* :class:`FeatureStore` (:mod:`.store`): verified safetensors entries, atomic writes, size report, clear.
* :func:`feature_key` (:mod:`.keys`): everything that determines an entry.
* :func:`cached_eval_batches` / :func:`view_features` (:mod:`.extract`): the engine's evaluation path and
  the training features of feature-based methods.

CLI: ``python -m vlprompt.features {info,clear} [--dir DIR]``.
"""
from .keys import feature_key, file_list_digest, key_digest, module_digest, transform_description
from .store import ENV_VAR, FeatureStore, FeatureStoreError, default_store_dir

__all__ = ["FeatureStore", "FeatureStoreError", "default_store_dir", "ENV_VAR", "feature_key", "key_digest",
           "module_digest", "file_list_digest", "transform_description", "cached_eval_batches", "view_features",
           "loader_features"]


def __getattr__(name):  # the extraction helpers import torch data utilities lazily
    if name in ("cached_eval_batches", "view_features", "loader_features", "frozen_tower"):
        from . import extract

        return getattr(extract, name)
    raise AttributeError(name)
