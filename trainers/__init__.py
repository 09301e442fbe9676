"""Prompt-learning trainers, one module per method, registered in ``TRAINER_REGISTRY``.

Importing this package imports every module in this folder (found with ``pkgutil``, in name order),
so a new ``trainers/<method>.py`` registers its trainer and its config node without editing this
file. A module that fails to import raises with its name, instead of silently missing later.
"""
from vlprompt.utils import import_submodules

__all__ = import_submodules(__name__, __path__, kind="trainer module")
