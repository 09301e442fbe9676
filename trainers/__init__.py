"""Prompt-learning trainers, one module per method, registered in ``TRAINER_REGISTRY``.

Importing this package imports every module in this folder (found with ``pkgutil``, in name order),
so a new ``trainers/<method>.py`` registers its trainer and its config node without editing this
file. A module that fails to import raises with its name, instead of silently missing later.
"""
import importlib
import pkgutil

__all__ = []

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    try:
        importlib.import_module(f"{__name__}.{_info.name}")
    except ImportError as _e:
        raise ImportError(f"Cannot import trainer module trainers/{_info.name}.py: {_e}") from _e
    __all__.append(_info.name)
