"""The method card: everything a trainer declares about itself, in one typed value (standard library only).

A trainer declares one card at its registration point::

    @TRAINER_REGISTRY.register()
    class CoOp(ClipPromptTrainer):
        CARD = MethodCard(
            config="vit_b16_ctxv1",                       # its default config, every protocol
            recipes={"cross_dataset": "vit_b16_ep50_ctxv1"},  # only where a protocol differs
            order=30, backbones=ANY_TOWERS,
            cfg_node="COOP", cfg_defaults=dict(N_CTX=16, PREC="fp16"), cfg_args={"n_ctx": "N_CTX"},
            model_name="prompt_learner",
        )

Every consumer reads it through :func:`card_of` (a class) or :func:`vlprompt.engine.methods.method_card`
(a registered name): the sweep's planning, the result tables, the config extension, the contract tests.
The fields (all optional):

* ``config``: the default config of every protocol (a yaml under ``configs/trainers/<config_folder>/``, or
  ``OTHER/NAME`` for another trainer's folder). ``recipes``: per protocol, only where it differs: a config
  name, or ``{"config": NAME, "per_dataset": {dataset: NAME}, "per_shots": {"K": NAME}}`` (``config`` may be
  left out to keep the default and only add overrides). A protocol may name another one whose recipe it
  takes when the card names none for it (domain generalisation takes cross-dataset's: they share the
  ImageNet training run; :attr:`vlprompt.protocol.protocols.Protocol.recipe_from`). ``protocols``: the
  protocols the method is evaluated under (None: every registered protocol), so that adding a protocol
  edits no trainer.
* ``order``: position in result tables (smaller first; ties by name). ``eval_only``: nothing to train
  (every run is ``--eval-only``). ``backbones``: the towers the method supports
  (:data:`~vlprompt.protocol.families.ANY_TOWERS`, :data:`~vlprompt.protocol.families.PROMPTABLE_VISION` or a
  dict; None: not declared, planned unchecked).
* ``cfg_node`` / ``cfg_defaults``: the method's node under ``cfg.TRAINER`` and its keys with defaults
  (registered as a config extension when the class is defined); ``cfg_args``: building-block argument ->
  key of that node (so that block errors name the key); ``model_name``: the registered model name (=
  checkpoint sub-folder); ``lr_unit``: ``epoch`` or ``iteration`` (when the engine steps the LR schedulers);
  ``config_folder``: the folder under ``configs/trainers/`` (default: the trainer's name); ``views``: how many
  independently augmented views of each training image the method reads (default 1; with K > 1 the training
  loaders make at least K, ``DATALOADER.K_TRANSFORMS`` raised to it, and ``batch["img"]`` is a list of K
  tensors; :meth:`vlprompt.engine.ClipPromptTrainer.parse_batch_train` hands the list to ``loss_terms``).
* ``uses_shots``: an eval-only method that still fits on the few-shot training images (Tip-Adapter's cache,
  the linear probe, GDA's class means): the sweep gives it every shot count of the few-shot protocol, as a
  trained method (an eval-only method without it is zero-shot: one run per dataset, ``shots_0``).
* ``notes``: what a user should know before planning runs of the method (e.g. a budget that does not follow
  ``OPTIM.MAX_EPOCH``); the sweep's ``--dry-run`` prints it once per method in the plan.
* ``transductive``: the method trains on unlabelled images of the classes it is tested on (PromptKD: the
  training split of every class, base and novel). The engine records it in results.json
  (``"transductive": true``), the sweep adds ``_transductive`` to the run's config folder, and the result
  tables mark its rows ``[transductive]``, so that it is never compared like-for-like by accident.
* ``fixture``: what a generic build of the method needs beside a config, for the test suites that build
  every registered trainer (contract, backbone families, golden numbers): the name of a classmethod of the
  trainer, ``fixture(folder, backbone) -> [KEY, VALUE, ...]`` config options, that prepares it under
  ``folder`` (PromptKD: a fabricated teacher run). None: a config is enough.

The card is a frozen dataclass: a derived card is ``dataclasses.replace(card, order=..., ...)``.
Assigning it as ``CARD`` in a class body also sets the class attributes the engine and the methods' own
code read on instances (``CFG_NODE``, ``CFG_DEFAULTS``, ``CFG_ARGS``, ``MODEL_NAME``, ``LR_SCHEDULE_UNIT``),
from the card, so they can never disagree with it; declaring one of them beside a card is an error.

Trainers without a card (a ported Dassl trainer, a test trainer, code written before cards) get one built
from the loose attributes they declare (``RECIPES``, ``TABLE_ORDER``, ``BACKBONE_SUPPORT``, ``EVAL_ONLY``,
``CONFIG_FOLDER`` and the five above), so they keep working; ``RECIPES`` then lists exactly the protocols
they run (the old rule). A subclass of a carded trainer that sets such an attribute overrides that field.
"""
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Mapping, Optional, Tuple

from .families import support_dict

__all__ = ["MethodCard", "card_of", "LOOSE_ATTRIBUTES", "MIRRORED", "LR_UNITS", "CardError", "normalize_recipe"]

LR_UNITS = ("epoch", "iteration")

#: card field -> the loose class attribute that declared it before cards (still read for trainers without one)
LOOSE_ATTRIBUTES = {
    "recipes": "RECIPES",
    "order": "TABLE_ORDER",
    "backbones": "BACKBONE_SUPPORT",
    "eval_only": "EVAL_ONLY",
    "cfg_node": "CFG_NODE",
    "cfg_defaults": "CFG_DEFAULTS",
    "cfg_args": "CFG_ARGS",
    "model_name": "MODEL_NAME",
    "lr_unit": "LR_SCHEDULE_UNIT",
    "config_folder": "CONFIG_FOLDER",
}
#: the fields a card also sets as class attributes (read on instances by the engine and the methods' code)
MIRRORED = ("cfg_node", "cfg_defaults", "cfg_args", "model_name", "lr_unit")


class CardError(TypeError):
    """A method card that cannot mean anything (a bad field value, a loose attribute beside the card)."""


def normalize_recipe(value, where="recipe"):
    """A recipe as a dict: a config name becomes ``{"config": NAME}``; a dict is copied (``per_dataset`` /
    ``per_shots`` copied too, shot counts as strings)."""
    if isinstance(value, str):
        return {"config": value}
    if not isinstance(value, Mapping):
        raise CardError(f"{where}: a recipe is a config name or a dict, got {value!r}")
    unknown = set(value) - {"config", "per_dataset", "per_shots"}
    if unknown:
        raise CardError(f"{where}: unknown recipe keys {sorted(unknown)} (keys: config, per_dataset, per_shots)")
    out = {}
    if value.get("config") is not None:
        out["config"] = str(value["config"])
    for key in ("per_dataset", "per_shots"):
        if value.get(key):
            out[key] = {str(k): str(v) for k, v in dict(value[key]).items()}
    return out


@dataclass(frozen=True)
class MethodCard:
    """What one trainer declares (see the module docstring). Fields left None are "not declared": the
    engine's class defaults apply (e.g. ``MODEL_NAME`` of ``ClipPromptTrainer``); :func:`card_of` returns
    a card with every field filled."""

    config: Optional[str] = None
    recipes: Mapping[str, Any] = field(default_factory=dict)
    protocols: Optional[Tuple[str, ...]] = None
    order: int = 1000
    eval_only: bool = False
    backbones: Optional[Mapping[str, Any]] = None
    cfg_node: Optional[str] = None
    cfg_defaults: Optional[Mapping[str, Any]] = None
    cfg_args: Optional[Mapping[str, str]] = None
    model_name: Optional[str] = None
    lr_unit: Optional[str] = None
    config_folder: Optional[str] = None
    uses_shots: bool = False
    notes: str = ""
    views: int = 1  # augmented views of each training image the method reads (batch["img"] a list when > 1)
    transductive: bool = False
    fixture: Optional[str] = None
    name: str = ""  # the registered name (filled by card_of / method_card; empty in a declaration)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "recipes", {str(p): normalize_recipe(r, f"recipes[{p!r}]") for p, r in dict(self.recipes).items()})
        if self.protocols is not None:
            set_(self, "protocols", tuple(str(p) for p in self.protocols))
        set_(self, "order", int(self.order))
        set_(self, "views", int(self.views))
        if self.views < 1:
            raise CardError(f"views must be >= 1, got {self.views}")
        set_(self, "eval_only", bool(self.eval_only))
        set_(self, "uses_shots", bool(self.uses_shots))
        set_(self, "transductive", bool(self.transductive))
        set_(self, "backbones", support_dict(self.backbones))
        if self.cfg_defaults is not None:
            set_(self, "cfg_defaults", dict(self.cfg_defaults))
        if self.cfg_args is not None:
            set_(self, "cfg_args", dict(self.cfg_args))
        if self.cfg_defaults and not self.cfg_node:
            raise CardError("a method card with cfg_defaults needs cfg_node (its cfg.TRAINER node name)")
        if self.lr_unit is not None and self.lr_unit not in LR_UNITS:
            raise CardError(f"lr_unit must be one of {LR_UNITS}, got {self.lr_unit!r}")
        if self.config is None:
            missing = [p for p, r in self.recipes.items() if "config" not in r]
            if missing:
                raise CardError(f"recipes {missing} name no config and the card has no default config")

    # ------------------------------------------------------------------------------- what consumers ask
    @property
    def prec_default(self):
        """The default ``TRAINER.<cfg_node>.PREC`` ("" when the card declares none)."""
        return str((self.cfg_defaults or {}).get("PREC", "") or "")

    def runs(self, protocol):
        """Whether the method is evaluated under ``protocol``."""
        if self.protocols is not None:
            return protocol in self.protocols
        return self.config is not None or protocol in self.recipes

    def recipe(self, protocol, recipe_from=None):
        """The recipe of one protocol (a dict with ``config``), or None when the method does not run it.

        ``recipe_from``: the protocol whose recipe this one takes when the card names none for it (by
        default the registered protocol's own :attr:`~vlprompt.protocol.protocols.Protocol.recipe_from`)."""
        if not self.runs(protocol):
            return None
        own = self.recipes.get(protocol)
        if own is None:
            if recipe_from is None:
                recipe_from = _recipe_from(protocol)
            own = self.recipes.get(recipe_from) if recipe_from else None
        out = {"config": self.config} if self.config is not None else {}
        out.update(own or {})
        return out if out.get("config") else None

    def all_recipes(self, protocols=None):
        """``{protocol: recipe}`` for the protocols (names; default: every registered protocol, in
        registration order) the method runs."""
        if protocols is None:
            from .protocols import PROTOCOL_REGISTRY

            protocols = list(PROTOCOL_REGISTRY)
        out = {}
        for p in protocols:
            r = self.recipe(p)
            if r is not None:
                out[p] = r
        return out

    # ---------------------------------------------------------------- declaring it in a class body
    def __set_name__(self, owner, attr):
        if attr != "CARD":
            return
        for f in fields(self):
            loose = LOOSE_ATTRIBUTES.get(f.name)
            if loose and loose in owner.__dict__:
                raise CardError(f"{owner.__name__} declares {loose} beside its CARD: set {f.name}= in the card")
        for name in MIRRORED:
            value = getattr(self, name)
            if value is not None:
                setattr(owner, LOOSE_ATTRIBUTES[name], value)

    def to_row(self):
        """The card as plain data (JSON-ready)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_row(cls, row):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})


def _plain(v):
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _recipe_from(protocol):
    from .protocols import PROTOCOL_REGISTRY

    p = PROTOCOL_REGISTRY.get(protocol)
    return p.recipe_from if p is not None else None


_DEFAULTS: Dict[str, Any] = {"order": 1000, "eval_only": False, "cfg_node": None, "cfg_defaults": None,
                             "cfg_args": {}, "model_name": "", "lr_unit": "epoch", "backbones": None}


def card_of(cls, name=None):
    """The card of a trainer class, every field filled (``name``: the registered name; default the class
    name). The class's own ``CARD`` or its nearest ancestor's; loose attributes declared on classes below the
    card's owner override its fields (and are the whole declaration of a class without any card); fields
    the card leaves None take the class attribute the engine would use, else the default."""
    mro = cls.__mro__
    owner = next((k for k in mro if "CARD" in k.__dict__), None)
    card = owner.__dict__["CARD"] if owner is not None else MethodCard()
    if not isinstance(card, MethodCard):
        raise CardError(f"{cls.__name__}.CARD must be a MethodCard, got {type(card).__name__}")
    below = mro[:mro.index(owner)] if owner is not None else mro
    updates = {}
    for fname, attr in LOOSE_ATTRIBUTES.items():
        declared = next((k.__dict__[attr] for k in below if attr in k.__dict__), _MISSING)
        if declared is not _MISSING:
            updates[fname] = declared
        elif getattr(card, fname) is None and fname in _DEFAULTS:
            updates[fname] = getattr(cls, attr, _DEFAULTS[fname])
    if "recipes" in updates:  # the loose RECIPES: exactly the protocols it lists, each with its own config
        updates["recipes"] = dict(updates["recipes"] or {})
        updates.setdefault("protocols", tuple(updates["recipes"]))
        if owner is None:
            updates["config"] = None
    for fname in ("cfg_args",):
        if updates.get(fname, getattr(card, fname)) is None:
            updates[fname] = {}
    if updates.get("model_name", card.model_name) is None:
        updates["model_name"] = ""
    name = name or cls.__name__
    updates["config_folder"] = updates.get("config_folder", card.config_folder) or name
    try:
        return replace(card, name=name, **updates)
    except CardError as e:
        raise CardError(f"{name}: {e}") from None


_MISSING = object()
