"""The method table: what every registered trainer declares about itself, read through one function.

A trainer declares one :class:`~vlprompt.protocol.card.MethodCard` as ``CARD`` at its registration point
(docs/EXTENDING.md): its default config and per-protocol recipes, table order, backbone support, config
node / defaults / argument map, model name, eval-only, LR unit. :func:`method_card` (a registered name or
a class) is how every consumer reads it: the sweep (:func:`vlprompt.sweep.protocols.registry_specs`), the
result tables (:mod:`vlprompt.results.methods`), the benchmarks and the contract tests (through
:func:`method_cards`); the config extension (``ClipPromptTrainer.__init_subclass__``) reads the same card
with :func:`vlprompt.protocol.card.card_of`. The card type is torch-free (``vlprompt.protocol.card``), so
the sweep's cached table reads back without torch.

``vlprompt`` never imports ``trainers/`` statically; :func:`load_plugins` imports the repository-root
``trainers`` and ``datasets`` packages at run time (what ``train.py`` does), so that they register.
"""
import importlib
import os.path as osp
import sys

from vlprompt.protocol.card import MethodCard, card_of
from vlprompt.protocol.families import ANY_TOWERS, PROMPTABLE_VISION
from vlprompt.protocol.protocols import PROTOCOL_REGISTRY

from .build import TRAINER_REGISTRY

__all__ = ["MethodCard", "method_card", "method_cards", "method_order", "load_plugins", "repo_root", "ANY_TOWERS",
           "PROMPTABLE_VISION", "MethodSpec", "method_spec", "method_specs"]


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


def method_card(trainer):
    """The card of a registered trainer (a name, e.g. ``"CoOp"``, or a trainer class), every field filled
    (:func:`vlprompt.protocol.card.card_of`). ``KeyError`` naming the registered trainers for an unknown
    name. A name is looked up in ``TRAINER_REGISTRY``, so a trainer registered at run time (a composed
    ``Host+Plugin`` one included) has its card here as soon as it is registered."""
    if isinstance(trainer, type):
        return card_of(trainer)
    return card_of(TRAINER_REGISTRY.get(trainer), trainer)


def method_cards(with_recipes_only=True):
    """The cards of the registered trainers, in table order (call :func:`load_plugins` first); composed
    ``Host+Plugin`` trainers are not listed (their cards: :func:`method_card` by name).

    With ``with_recipes_only`` (default) only trainers that run some registered protocol are listed: the
    methods a sweep can run (test-only trainers registered by the test suite without a card are left
    out)."""
    # composed Host+Plugin trainers are registered on first use (vlprompt.engine.plugins): reachable by name,
    # never listed, so that a listing does not depend on what this process composed before
    cards = [method_card(n) for n in TRAINER_REGISTRY.registered_names() if "+" not in n]
    if with_recipes_only:
        cards = [c for c in cards if c.all_recipes(PROTOCOL_REGISTRY)]
    return sorted(cards, key=lambda c: (c.order, c.name))


def method_order():
    """Trainer names in table order (those with recipes)."""
    return [c.name for c in method_cards()]


# the names before cards (a spec was the read-only view a card now is)
MethodSpec = MethodCard
method_spec = method_card
method_specs = method_cards


def recipes(base2new=None, xd=None, few_shot=None, cross_dataset=None, domain_generalization=None, **per):
    """A loose ``RECIPES`` dict (for a trainer written without a card; a card names its ``config`` and only
    the protocols that differ) in one line: ``xd`` is the config of both cross-dataset and domain
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
