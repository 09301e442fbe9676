"""The output tree: one description per (protocol, role) from which paths are both built and parsed.

Each :class:`Layout` is a tuple of path segments with ``{field}`` placeholders. :func:`run_dir`
fills them (the sweep, the toy demo), :func:`parse_run_dir` matches them against the end of a path
(the result tables, the engine through :func:`describe_run_dir`), so the two can never disagree.
The tree is the CoOp/MaPLe one (relative to the output root)::

    base2new  base    base2new/train_base/<d>/shots_<K>/<T>/<cfg>/seed<S>
              novel   base2new/test_new/<d>/shots_<K>/<T>/<cfg>/seed<S>
    transfer  source  <source>/<T>/<cfg>_<K>shots/seed<S>          (shared by cross_dataset and
                                                                    domain_generalization)
    cross_dataset /   evaluation/<T>/<cfg>_<K>shots/<d>/seed<S>    (the protocol follows <d>: an
    domain_generalization  target                                   ImageNet variant is DG)
    few_shot  test    few_shot/<d>/<T>/<cfg>/shots_<K>/seed<S>

A run on a backbone other than its config file's own (the sweep's ``--backbones``, which then sets
``MODEL.BACKBONE.NAME``/``PRETRAINED_TAG`` on the command line) gets one more level right after
``<cfg>``: ``bb-<NAME>[@<TAG>]`` (:func:`vlprompt.protocol.backbones.backbone_folder`), e.g.
``base2new/train_base/dtd/shots_16/VPT/vit_b16_c2_ep5_batch4_4/bb-ViT-B-16-SigLIP@webli/seed1``. The
default tree has no such level, so the two never collide; the parsed description has ``backbone``
(``NAME[@TAG]``) or None.

Read-only layouts accept CoOp's own trees: ``<d>/<T>/<cfg>_<K>shots[/nctx.._csc.._ctp..]/seed<S>``
(few-shot runs of CoOp's scripts) and the ``nctx.._csc.._ctp..`` sub-folder under ``evaluation/``
and under the source run; the config is then reported as ``<cfg>/<variant>``.

``<cfg>`` is the config folder name of :func:`config_folder`: the config file's base name, plus a
``--tag`` and one readable ``_<key><value>`` part per trailing config option (see docs/RESULTS.md,
"Config options and the output tree"), so that a run with other options never shares the folder of
the default run. Standard library only.
"""
import hashlib
import json
import os
import os.path as osp
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from .backbones import BACKBONE_LEVEL, BackboneError, backbone_folder, backbone_from_folder
from .datasets import KNOWN_DATASETS, PROTOCOLS, XD_SOURCE, target_protocol

__all__ = [
    "ROLES",
    "Layout",
    "LAYOUTS",
    "TreeError",
    "layout_for",
    "run_dir",
    "parse_run_dir",
    "describe_run_dir",
    "option_slug",
    "config_folder",
]

# role -> what the run is: base (training run of base2new, tested on the base classes), novel (its
# eval-only test on the new classes), source (the ImageNet training run of the transfer protocols),
# target (an eval-only test of that model on another dataset), test (a few-shot run)
ROLES = ("base", "novel", "source", "target", "test")

_FIELD = {
    "dataset": r"[^/]+",
    "trainer": r"[^/]+",
    "config": r".+",
    "shots": r"\d+",
    "seed": r"\d+",
    "variant": r"nctx\d+_csc\w+_ctp\w+",
    "backbone": re.escape(BACKBONE_LEVEL) + r"[A-Za-z0-9%._+-]+(?:@[A-Za-z0-9%._+-]+)?",
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class TreeError(ValueError):
    """A run that has no place in the output tree (unknown protocol/role, a field with a '/')."""


@dataclass(frozen=True)
class Layout:
    """One kind of run folder.

    ``protocol`` None: the protocol follows the dataset (:func:`target_protocol`). ``dataset_rule``:
    ``"source"`` (the dataset must be the transfer source), ``"not_source"`` (a known dataset other
    than the source; CoOp's own few-shot tree) or None. ``readonly`` layouts are only parsed.
    """

    name: str
    protocol: Optional[str]
    role: str
    segments: Tuple[str, ...]
    dataset_rule: Optional[str] = None
    readonly: bool = False

    @property
    def fields(self):
        return [f for s in self.segments for f in _PLACEHOLDER.findall(s)]

    def _regexes(self):
        out = []
        for s in self.segments:
            pos, rx = 0, ""
            for m in _PLACEHOLDER.finditer(s):
                rx += re.escape(s[pos:m.start()]) + f"(?P<{m.group(1)}>{_FIELD[m.group(1)]})"
                pos = m.end()
            out.append(re.compile(rx + re.escape(s[pos:]) + r"\Z"))
        return out

    def match(self, parts, source=XD_SOURCE):
        """The run description if the last path segments ``parts`` fit this layout, else None."""
        n = len(self.segments)
        if len(parts) < n:
            return None
        got = {}
        for rx, part in zip(self._regexes(), parts[-n:]):
            m = rx.match(part)
            if m is None:
                return None
            got.update(m.groupdict())
        d = got["dataset"] if "dataset" in got else source
        if self.dataset_rule == "source" and d != source:
            return None
        if self.dataset_rule == "not_source" and (d == source or d not in KNOWN_DATASETS):
            return None
        config = got["config"] + (f"/{got['variant']}" if got.get("variant") else "")
        backbone = backbone_from_folder(got["backbone"]) if got.get("backbone") else None
        return dict(protocol=self.protocol or target_protocol(d), role=self.role, dataset=d,
                    trainer=got["trainer"], config=config, shots=int(got["shots"]), seed=int(got["seed"]),
                    backbone=backbone)

    def build(self, **fields):
        if "{backbone}" in self.segments:
            fields = dict(fields, backbone=backbone_folder(fields["backbone"]))
        return osp.join(*(s.format(**fields) for s in self.segments))


_B2N_TAIL = ("{dataset}", "shots_{shots}", "{trainer}", "{config}", "seed{seed}")
_B2N_TAIL_BB = ("{dataset}", "shots_{shots}", "{trainer}", "{config}", "{backbone}", "seed{seed}")
LAYOUTS = (
    Layout("base2new_base", "base2new", "base", ("base2new", "train_base") + _B2N_TAIL),
    Layout("base2new_novel", "base2new", "novel", ("base2new", "test_new") + _B2N_TAIL),
    Layout("few_shot", "few_shot", "test", ("few_shot", "{dataset}", "{trainer}", "{config}", "shots_{shots}",
                                            "seed{seed}")),
    Layout("target", None, "target", ("evaluation", "{trainer}", "{config}_{shots}shots", "{dataset}", "seed{seed}")),
    # the same runs on a backbone that the command line sets (one more level after <cfg>)
    Layout("base2new_base_bb", "base2new", "base", ("base2new", "train_base") + _B2N_TAIL_BB),
    Layout("base2new_novel_bb", "base2new", "novel", ("base2new", "test_new") + _B2N_TAIL_BB),
    Layout("few_shot_bb", "few_shot", "test", ("few_shot", "{dataset}", "{trainer}", "{config}", "{backbone}",
                                               "shots_{shots}", "seed{seed}")),
    Layout("target_bb", None, "target", ("evaluation", "{trainer}", "{config}_{shots}shots", "{backbone}", "{dataset}",
                                         "seed{seed}")),
    Layout("source_bb", "transfer", "source", ("{dataset}", "{trainer}", "{config}_{shots}shots", "{backbone}",
                                               "seed{seed}"), dataset_rule="source"),
    Layout("coop_target", None, "target",
           ("evaluation", "{trainer}", "{config}_{shots}shots", "{variant}", "{dataset}", "seed{seed}"), readonly=True),
    Layout("source", "transfer", "source", ("{dataset}", "{trainer}", "{config}_{shots}shots", "seed{seed}"),
           dataset_rule="source"),
    Layout("coop_source", "transfer", "source",
           ("{dataset}", "{trainer}", "{config}_{shots}shots", "{variant}", "seed{seed}"),
           dataset_rule="source", readonly=True),
    Layout("coop_few_shot", "few_shot", "test", ("{dataset}", "{trainer}", "{config}_{shots}shots", "seed{seed}"),
           dataset_rule="not_source", readonly=True),
    Layout("coop_few_shot_variant", "few_shot", "test",
           ("{dataset}", "{trainer}", "{config}_{shots}shots", "{variant}", "seed{seed}"),
           dataset_rule="not_source", readonly=True),
)


def layout_for(protocol, role, dataset=None, backbone=False):
    """The writable layout of a run (``protocol`` may be ``transfer`` or either transfer protocol for the
    source run); ``backbone``: the layout with the ``bb-<NAME>[@<TAG>]`` level."""
    if protocol not in PROTOCOLS + ("transfer",):
        raise TreeError(f"Unknown protocol '{protocol}'. Valid protocols: {', '.join(PROTOCOLS)}")
    if role == "source" and protocol in ("cross_dataset", "domain_generalization"):
        protocol = "transfer"
    for lay in LAYOUTS:
        if lay.readonly or lay.role != role or ("backbone" in lay.fields) != bool(backbone):
            continue
        if lay.protocol == protocol or (lay.protocol is None and protocol in ("cross_dataset", "domain_generalization")):
            if lay.protocol is None and dataset is not None and target_protocol(dataset) != protocol:
                raise TreeError(f"{dataset} is a {target_protocol(dataset)} target, not a {protocol} target")
            return lay
    roles = {"base2new": "base, novel", "few_shot": "test", "transfer": "source"}.get(protocol, "source, target")
    raise TreeError(f"Protocol {protocol} has no role '{role}' (roles: {roles})")


def run_dir(protocol, role, *, dataset, trainer, config, shots, seed, root=None, source=XD_SOURCE, backbone=None):
    """The folder of one run (under ``root`` when given). The inverse of :func:`parse_run_dir`.

    ``backbone``: None for a run on its config file's own backbone (the default tree), else
    ``NAME[@TAG]`` (or a :class:`~vlprompt.protocol.backbones.Backbone`) set on the command line: the
    folder gets the ``bb-<NAME>[@<TAG>]`` level after ``<cfg>``."""
    lay = layout_for(protocol, role, dataset, backbone=backbone is not None)
    if lay.dataset_rule == "source" and dataset != source:
        raise TreeError(f"The source run of the transfer protocols trains on {source}, not {dataset}")
    fields = dict(dataset=dataset, trainer=trainer, config=config, shots=shots, seed=seed)
    for k, v in fields.items():
        if v is None or str(v) == "" or "/" in str(v) or str(v) in (".", ".."):
            raise TreeError(f"Run field {k}={v!r} cannot be a folder name (empty, '.', '..' or with a '/')")
    for k in ("shots", "seed"):
        if not isinstance(fields[k], int) or fields[k] < 0:
            raise TreeError(f"Run field {k} must be a non-negative int, got {fields[k]!r}")
    if backbone is not None:
        try:
            backbone_folder(backbone)  # a spec that cannot be a folder level is a TreeError
        except BackboneError as e:
            raise TreeError(str(e)) from None
        fields["backbone"] = backbone
    rel = lay.build(**fields)
    return rel if root is None else osp.join(root, rel)


def parse_run_dir(path, source=XD_SOURCE):
    """``dict(protocol, role, dataset, trainer, config, shots, seed, backbone)`` of a run folder, or None
    when the path is not a run folder of the tree (writable layouts are tried first, then CoOp's own
    trees). ``backbone`` is ``NAME[@TAG]`` of a ``bb-`` level, None in the default tree."""
    parts = [p for p in osp.normpath(osp.abspath(str(path))).split(os.sep) if p]
    for lay in LAYOUTS:
        got = lay.match(parts, source)
        if got is not None:
            return got
    return None


def describe_run_dir(output_dir, source=XD_SOURCE):
    """What a run folder is: ``dict(protocol, role, dataset, trainer, config, shots, seed, backbone)`` or
    None outside the tree. The engine records ``protocol`` and ``role`` (and the whole dict as ``run``) in
    results.json; ``protocol`` is ``transfer`` for the source run shared by cross_dataset and
    domain_generalization."""
    return parse_run_dir(output_dir, source)


_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
MAX_SLUG = 64


def option_slug(opts):
    """The folder-name part for trailing config options ``KEY VALUE ...``: ``_<key><value>`` per pair,
    ``<key>`` the last component of KEY in lower case (``OPTIM.MAX_EPOCH 2`` -> ``_max_epoch2``). When a
    value holds characters unsafe in a folder name, or the result exceeds 64 characters, the part is
    ``_opts-<10 hex digits of a SHA-1 of the options>`` instead (still distinct per option list)."""
    opts = [str(o) for o in opts]
    if len(opts) % 2:
        raise TreeError(f"Config options must be KEY VALUE pairs, got {opts}")
    slug = "".join(f"_{k.split('.')[-1].lower()}{v}" for k, v in zip(opts[0::2], opts[1::2]))
    if _SAFE.search(slug) or len(slug) > MAX_SLUG:
        digest = hashlib.sha1(json.dumps(opts).encode()).hexdigest()[:10]
        return f"_opts-{digest}"
    return slug


def config_folder(config, tag="", opts=()):
    """The ``<cfg>`` folder name: config base name + tag + :func:`option_slug` of ``opts``."""
    if "/" in config:
        raise TreeError(f"Config folder name {config!r} must not contain '/' (use the file's base name)")
    return config + tag + option_slug(opts)
