"""The 15 benchmark datasets of the CoOp family (and the toy world's), registered in ``DATASET_REGISTRY``.

Importing this package registers them (``train.py`` and the tests do). Facts such as folder names,
split files and sizes live in :mod:`vlprompt.data.catalog`; see docs/DATASETS.md.
"""
from vlprompt.utils import import_submodules

__all__ = import_submodules(__name__, __path__, kind="dataset module")
