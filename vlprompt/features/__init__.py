"""Frozen-feature store: features of a frozen, unprompted image tower computed once and reused by every
method, seed and run that can use them (docs/ENGINE.md, "Feature store").

* :class:`FeatureStore` (:mod:`.store`): verified safetensors entries, atomic writes, size report, clear.
* :func:`feature_key` (:mod:`.keys`): everything that determines an entry.
* :func:`cached_eval_batches` / :func:`view_features` (:mod:`.extract`): the engine's evaluation path and
  the training features of feature-based methods.
* :func:`tower_weights_digest` (:mod:`.weights`): the weights digest of a tower loaded from a weights file,
  computed once per file and remembered in the store folder (only where that is exact).

CLI: ``python -m vlprompt.features {info,clear} [--dir DIR]``.
"""
from .keys import feature_key, file_list_digest, key_digest, module_digest, transform_description
from .store import ENV_VAR, FeatureStore, FeatureStoreError, default_store_dir
from .weights import tower_weights_digest

__all__ = ["FeatureStore", "FeatureStoreError", "default_store_dir", "ENV_VAR", "feature_key", "key_digest",
           "module_digest", "file_list_digest", "transform_description", "cached_eval_batches", "view_features",
           "loader_features", "tower_weights_digest"]


def __getattr__(name):  # the extraction helpers import torch data utilities lazily
    if name in ("cached_eval_batches", "view_features", "loader_features", "frozen_tower"):
        from . import extract

        return getattr(extract, name)
    raise AttributeError(name)
