"""Evaluation protocols as registered objects (standard library only): one file per protocol.

A protocol (:class:`Protocol`) declares everything the toolkit knows about it:

* its **steps** (:class:`Step`): the runs one (method, dataset, shot count, seed) needs, each with its
  role (``base``/``novel``, ``source``/``target``, ``test``, or a role of its own), whether it trains or
  tests another step's finished model (``model_from``: a test-time procedure wraps a finished model this
  way), the class subset it sees and whether it passes ``DATASET.NUM_SHOTS``; the sweep expands them
  (:func:`vlprompt.sweep.protocols.expand`) and the engine records the step's protocol and role in
  results.json (``protocol``, ``role``, ``run``: read back from the run folder, or from the sweep's note
  in it, :data:`vlprompt.protocol.tree.RUN_NOTE`);
* its **datasets**: the standard list (or targets), which datasets it takes when a sweep names datasets
  for several protocols (:meth:`Protocol.takes`), the default shot count(s) and, for the transfer
  protocols, the source dataset;
* its **output-tree levels**: the :class:`~vlprompt.protocol.layout.Layout` of each step (the
  ``bb-<backbone>`` variant is derived) and the read-only layouts of other codebases' trees;
* its **tables and figures**: the table kind the result tables build for it
  (``vlprompt.results.aggregate.TABLE_KINDS``: ``base2new`` (base / novel / HM per dataset),
  ``transfer`` (source column and targets), ``few_shot`` (one table per shot count and an average
  table), ``datasets`` (one row per method, one column per dataset, one role)) with its title, and the
  figure kind of ``vlprompt.results.plots``;
* ``recipe_from``: the protocol whose recipe a method card's default is when it names none for this one.

A method card names a config only where a protocol differs from its default, so **adding a protocol
edits no trainer**: write one file here (imported below) or, outside the package, call
:func:`register_protocol` (docs/EXTENDING.md, "Adding a protocol"; tests/test_extending.py does it).
"""
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..layout import Layout, TreeError

__all__ = ["Step", "Protocol", "PROTOCOL_REGISTRY", "register_protocol", "unregister_protocol", "get_protocol",
           "protocol_names", "all_roles", "tree_protocols"]

PROTOCOL_REGISTRY = {}


@dataclass(frozen=True)
class Step:
    """One run of a protocol per (method, dataset, shot count, seed)."""

    role: str
    model_from: Optional[str] = None  # None: a training run (tested at its end); else the role whose model it tests
    on_source: bool = False  # once per seed on the protocol's source dataset (shared by every target)
    subsample: Optional[str] = None  # DATASET.SUBSAMPLE_CLASSES of the run (base / new), None: all classes
    shots_opt: bool = True  # the run passes DATASET.NUM_SHOTS K
    eval_only_shots_opt: Optional[bool] = None  # the same for an eval-only method (None: as shots_opt)
    records_shots: bool = True  # the run's shot count is K (else none: a full test set)
    tree: Optional[str] = None  # the protocol name of its folders when not the protocol's own (``transfer``)
    opts: Tuple[str, ...] = ()  # config options ``KEY VALUE ...`` its runs add (e.g. a test-time procedure's switch)

    @property
    def trains(self):
        return self.model_from is None


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol (see the module docstring)."""

    name: str
    title: str
    steps: Tuple[Step, ...]
    datasets: Tuple[str, ...]
    shots: object = 16  # an int (one shot count) or a tuple (a list of shot counts: few-shot)
    eval_only_shots: Optional[int] = None  # an eval-only method runs once per dataset, filed under this count
    source: Optional[str] = None  # the source dataset (transfer protocols)
    exclude: Tuple[str, ...] = ()  # datasets it never takes (another protocol's)
    refuse_excluded: bool = False  # planning it on an excluded dataset is an error (else they are only routed away)
    only: Tuple[str, ...] = ()  # when given: the only datasets it takes
    recipe_from: Optional[str] = None
    layouts: Tuple[Layout, ...] = ()  # writable and read-only folders of its steps
    table: str = "datasets"  # the table kind (vlprompt.results.aggregate.TABLE_KINDS)
    table_role: Optional[str] = None  # the ``datasets`` kind: the role whose accuracy is shown (default the last)
    figure: Optional[str] = None  # the figure kind (vlprompt.results.plots.FIGURE_KINDS), None: no figure
    extra: dict = field(default_factory=dict)  # anything else a table or figure kind reads

    @property
    def roles(self):
        return tuple(s.role for s in self.steps)

    @property
    def shot_list(self):
        return isinstance(self.shots, (tuple, list))

    def step(self, role):
        for s in self.steps:
            if s.role == role:
                return s
        raise TreeError(f"Protocol {self.name} has no role '{role}' (roles: {', '.join(self.roles)})")

    def tree_name(self, step):
        return step.tree or self.name

    def takes(self, dataset, source=None):
        """Whether a dataset named for several protocols goes to this one."""
        if self.only and dataset not in self.only:
            return False
        if dataset in self.exclude:
            return False
        return not (self.source is not None and dataset == (source or self.source))

    def dataset_problem(self, datasets):
        """One line naming the datasets this protocol cannot take (None when all are fine)."""
        if self.only:
            bad = [d for d in datasets if d not in self.only]
            if bad:
                return f"{self.name} targets must be among {' '.join(self.only)}; got {' '.join(bad)}"
        bad = [d for d in datasets if d in self.exclude] if self.refuse_excluded else []
        if bad:
            owner = next((p.name for p in PROTOCOL_REGISTRY.values() if p.only and set(bad) <= set(p.only)), None)
            return (f"{' '.join(bad)} are {owner} targets, not {self.name} targets" if owner else
                    f"{' '.join(bad)} cannot be {self.name} datasets")
        return None

    def default_datasets(self, source=None):
        """The standard datasets (the targets, without the source, for a protocol with a source)."""
        if self.source is None:
            return list(self.datasets)
        return [d for d in self.datasets if d != (source or self.source)]

    def writable_layouts(self):
        return [lay for lay in self.layouts if not lay.readonly]


def register_protocol(protocol, replace=False):
    """Register a :class:`Protocol` (``KeyError`` for a name taken, unless ``replace``)."""
    if protocol.name in PROTOCOL_REGISTRY and not replace:
        raise KeyError(f"Protocol {protocol.name!r} is already registered")
    PROTOCOL_REGISTRY[protocol.name] = protocol
    return protocol


def unregister_protocol(name):
    PROTOCOL_REGISTRY.pop(name, None)


def get_protocol(name):
    """The registered protocol ``name`` (``TreeError`` naming the registered ones otherwise)."""
    try:
        return PROTOCOL_REGISTRY[name]
    except KeyError:
        raise TreeError(f"Unknown protocol '{name}'. Valid protocols: {', '.join(PROTOCOL_REGISTRY)}") from None


def protocol_names():
    return tuple(PROTOCOL_REGISTRY)


def all_roles():
    """Every role of every registered protocol, in registration order."""
    out = []
    for p in PROTOCOL_REGISTRY.values():
        out += [r for r in p.roles if r not in out]
    return tuple(out)


def tree_protocols():
    """Every protocol name a run folder (and results.json) can carry: the registered ones and the names of
    shared steps' folders (``transfer``)."""
    out = list(PROTOCOL_REGISTRY)
    for p in PROTOCOL_REGISTRY.values():
        out += [s.tree for s in p.steps if s.tree and s.tree not in out]
    return tuple(out)


from . import base2new, cross_dataset, domain_generalization, few_shot, test_time  # noqa: E402,F401  (they register)
