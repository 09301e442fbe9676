"""The method table: what every registered trainer declares about itself, in one place.

A trainer declares, as class attributes (read here, never copied into other lists):

* ``RECIPES``: the default config per protocol, e.g.
  ``{"base2new": {"config": "vit_b16_ctxv1", "per_dataset": {"imagenet": "vit_b16_ep50_ctxv1"}}}``.
  ``config`` names a yaml under ``configs/trainers/<CONFIG_FOLDER>/`` (or ``OTHER/NAME`` for another
  trainer's folder); ``per_dataset`` and ``per_shots`` override it for one dataset or shot count
  (``per_dataset`` wins). A protocol that is absent is not run for that method.
* ``EVAL_ONLY``: nothing to train (zero-shot methods); every run of a sweep is ``--eval-only``.
* ``TABLE_ORDER``: position in result tables (smaller first; ties by name).
* ``CONFIG_FOLDER``: folder under ``configs/trainers/`` (default: the trainer's name).

The sweep, the result tables, the benchmarks and the contract tests take their lists from
:func:`method_specs`. ``vlprompt`` never imports ``trainers/`` statically; :func:`load_plugins` imports
the repository-root ``trainers`` and ``datasets`` packages at run time (what ``train.py`` does), so that
they register.
"""
import importlib
import os.path as osp
import sys
from dataclasses import dataclass, field
from typing import Dict

from .build import TRAINER_REGISTRY

__all__ = ["MethodSpec", "method_specs", "method_spec", "method_order", "load_plugins", "repo_root"]


def repo_root():
    """The repository root (the folder holding ``train.py``, ``trainers/`` and ``configs/``)."""
    return osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_plugins(packages=("trainers", "datasets")):
    """Import the repository-root plugin packages so that their trainers and datasets register."""
    root = repo_root()
    if root not in sys.path:
        sys.path.insert(0, root)
    for pkg in packages:
        importlib.import_module(pkg)


@dataclass(frozen=True)
class MethodSpec:
    """What one registered trainer declares (see the module docstring)."""

    name: str
    recipes: Dict[str, dict] = field(default_factory=dict)
    eval_only: bool = False
    order: int = 1000
    config_folder: str = ""
    model_name: str = ""
    cfg_node: str = ""

    @property
    def protocols(self):
        return tuple(self.recipes)


def _spec(name, cls):
    return MethodSpec(
        name=name,
        recipes={k: dict(v) for k, v in (getattr(cls, "RECIPES", None) or {}).items()},
        eval_only=bool(getattr(cls, "EVAL_ONLY", False)),
        order=int(getattr(cls, "TABLE_ORDER", 1000)),
        config_folder=getattr(cls, "CONFIG_FOLDER", None) or name,
        model_name=getattr(cls, "MODEL_NAME", "") or "",
        cfg_node=getattr(cls, "CFG_NODE", "") or "",
    )


def method_specs(with_recipes_only=True):
    """Specs of the registered trainers, in table order (call :func:`load_plugins` first).

    With ``with_recipes_only`` (default) only trainers that declare ``RECIPES`` are listed: the
    methods a sweep can run (test-only trainers registered by the test suite without recipes are
    left out).
    """
    specs = [_spec(n, TRAINER_REGISTRY.get(n)) for n in TRAINER_REGISTRY.registered_names()]
    if with_recipes_only:
        specs = [s for s in specs if s.recipes]
    return sorted(specs, key=lambda s: (s.order, s.name))


def method_spec(name):
    """The spec of one registered trainer (``KeyError`` naming the registered ones otherwise)."""
    return _spec(name, TRAINER_REGISTRY.get(name))


def method_order():
    """Trainer names in table order (those with recipes)."""
    return [s.name for s in method_specs()]


def recipes(base2new=None, xd=None, few_shot=None, cross_dataset=None, domain_generalization=None, **per):
    """A ``RECIPES`` dict in one line: ``xd`` is the config of both cross-dataset and domain
    generalisation (their ImageNet training run is shared), ``few_shot`` defaults to ``base2new``.

    A value is a config name or a full recipe dict (``{"config": ..., "per_dataset": ..., "per_shots": ...}``).
    ``per`` may give ``base2new_per_dataset={...}`` style overrides. Protocols left ``None`` are not run.
    """
    out = {}
    values = {
        "base2new": base2new,
        "cross_dataset": cross_dataset if cross_dataset is not None else xd,
        "domain_generalization": domain_generalization if domain_generalization is not None else xd,
        "few_shot": few_shot if few_shot is not None else base2new,
    }
    for protocol, value in values.items():
        if value is None:
            continue
        recipe = dict(value) if isinstance(value, dict) else {"config": value}
        for key in ("per_dataset", "per_shots"):
            extra = per.pop(f"{protocol}_{key}", None)
            if extra:
                recipe[key] = dict(extra)
        out[protocol] = recipe
    if per:
        raise TypeError(f"recipes(): unknown arguments {sorted(per)}")
    return out


__all__.append("recipes")
