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

from .backbones import BackboneError, backbone_folder
from .datasets import XD_SOURCE, target_protocol
from .layout import Layout, TreeError
from .protocols import PROTOCOL_REGISTRY, all_roles, protocol_names, tree_protocols

__all__ = [
    "ROLES",
    "roles",
    "layouts",
    "Layout",
    "LAYOUTS",
    "TreeError",
    "layout_for",
    "run_dir",
    "parse_run_dir",
    "describe_run_dir",
    "option_slug",
    "config_folder",
    "RUN_NOTE",
    "RUN_FIELDS",
    "write_run_note",
    "read_run_note",
    "discard_lone_run_note",
]

# role -> what the run is, for the standard protocols: base (training run of base2new, tested on the base
# classes), novel (its eval-only test on the new classes), source (the ImageNet training run of the transfer
# protocols), target (an eval-only test of that model on another dataset), test (a few-shot run). A
# registered protocol may add roles of its own (:func:`roles`).
ROLES = ("base", "novel", "source", "target", "test")


def roles():
    """Every role of the registered protocols."""
    return all_roles()


def layouts():
    """Every layout of the registered protocols, in the order paths are matched: the writable ones, then
    their ``bb-`` variants, then the read-only ones (other codebases' trees)."""
    seen, writable, readonly = set(), [], []
    for p in PROTOCOL_REGISTRY.values():
        for lay in p.layouts:
            if lay.name in seen:
                continue
            seen.add(lay.name)
            (readonly if lay.readonly else writable).append(lay)
    return tuple(writable + [lay.with_backbone() for lay in writable] + readonly)


class _Layouts:
    """``LAYOUTS``: the current :func:`layouts` (a protocol registered later is included)."""

    def __iter__(self):
        return iter(layouts())

    def __len__(self):
        return len(layouts())

    def __getitem__(self, i):
        return layouts()[i]


LAYOUTS = _Layouts()


def layout_for(protocol, role, dataset=None, backbone=False):
    """The writable layout of a run (``protocol`` may be ``transfer`` or either transfer protocol for the
    source run); ``backbone``: the layout with the ``bb-<NAME>[@<TAG>]`` level."""
    if protocol not in tree_protocols():
        raise TreeError(f"Unknown protocol '{protocol}'. Valid protocols: {', '.join(protocol_names())}")
    own = PROTOCOL_REGISTRY.get(protocol)
    if own is not None:
        step = next((s for s in own.steps if s.role == role), None)
        if step is not None and step.tree:
            protocol, own = step.tree, None
    if own is not None:
        candidates, owners = list(own.layouts), [own]
    else:  # a shared step's folders (``transfer``): the layouts that carry that name
        candidates = [lay for p in PROTOCOL_REGISTRY.values() for lay in p.layouts if lay.protocol == protocol]
        owners = [p for p in PROTOCOL_REGISTRY.values() if protocol in {s.tree for s in p.steps}]
    for lay in candidates + [c.with_backbone() for c in candidates if not c.readonly]:
        if lay.readonly or lay.role != role or ("backbone" in lay.fields) != bool(backbone):
            continue
        if lay.protocol is None and dataset is not None and target_protocol(dataset) != protocol:
            raise TreeError(f"{dataset} is a {target_protocol(dataset)} target, not a {protocol} target")
        return lay
    roles_of = sorted({s.role for p in owners for s in p.steps if (s.tree or p.name) == protocol})
    raise TreeError(f"Protocol {protocol} has no role '{role}' (roles: {', '.join(roles_of)})")


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
    for lay in layouts():
        got = lay.match(parts, source)
        if got is not None:
            return got
    return None


RUN_NOTE = "vlprompt_run.json"
RUN_FIELDS = ("protocol", "role", "dataset", "trainer", "config", "shots", "seed", "backbone")


def write_run_note(output_dir, run):
    """Write the run's description (``dict(protocol, role, ...)`` as :func:`parse_run_dir` gives it) into
    its folder as :data:`RUN_NOTE` (atomically), so that the engine records it whatever the folder alone
    would say (the sweep does this before it starts a run: a transfer source run on another source than
    ImageNet is otherwise indistinguishable from a few-shot run in CoOp's own tree)."""
    note = {k: run.get(k) for k in RUN_FIELDS}
    if note["protocol"] not in tree_protocols() or note["role"] not in all_roles():
        raise TreeError(f"A run note needs a registered protocol and role, got {note['protocol']}/{note['role']}")
    os.makedirs(output_dir, exist_ok=True)
    path = osp.join(output_dir, RUN_NOTE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(note, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def discard_lone_run_note(output_dir):
    """Remove the sweep's :data:`RUN_NOTE` from ``output_dir`` when it is the only thing there (a job that
    failed or was stopped before it wrote anything), and the folder with it if it is then empty, so that a
    failed job leaves its folder as it found it. Returns True when something was removed; the sweep writes
    the note again before it reruns the job."""
    try:
        names = os.listdir(output_dir)
    except OSError:
        return False
    if names != [RUN_NOTE]:
        return False
    try:
        os.remove(osp.join(output_dir, RUN_NOTE))
        os.rmdir(output_dir)
    except OSError:
        pass
    return True


def read_run_note(output_dir):
    """The description the sweep left in a run folder (:func:`write_run_note`), or None (no note, or one
    that does not name a registered protocol and role)."""
    path = osp.join(output_dir, RUN_NOTE)
    try:
        with open(path) as f:
            note = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or note.get("protocol") not in tree_protocols() or note.get("role") not in all_roles():
        return None
    return {k: note.get(k) for k in RUN_FIELDS}


def describe_run_dir(output_dir, source=XD_SOURCE):
    """What a run folder is: ``dict(protocol, role, dataset, trainer, config, shots, seed, backbone)`` or
    None outside the tree: the sweep's note in the folder (:func:`read_run_note`) when there is one, else
    the folder's place in the tree. The engine records ``protocol`` and ``role`` (and the whole dict as
    ``run``) in results.json; ``protocol`` is ``transfer`` for the source run shared by cross_dataset and
    domain_generalization."""
    return read_run_note(output_dir) or parse_run_dir(output_dir, source)


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
