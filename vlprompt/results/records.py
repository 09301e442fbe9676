"""Collect run results from an output tree: ``results.json`` files, and ``log.txt`` for old runs.

Each run becomes a :class:`Record`. Its protocol and role are, in this order:

1. the ``protocol`` and ``role`` fields of results.json (written by the engine from
   :func:`vlprompt.protocol.describe_run_dir`; the other run fields under ``run``);
2. the run folder's place in the output tree, parsed by :func:`vlprompt.protocol.parse_run_dir`, the
   same description the sweep builds folders with (old runs, and ``log.txt`` of runs without
   results.json);
3. for a results.json outside the tree, its fields ``subsample``/``phase``/``model_dir``/``dataset``.

The backbone of a run (its table label, :func:`vlprompt.protocol.backbone_label`) is, in this order:
results.json's ``backbone_label``, else its ``backbone`` and ``pretrained_tag`` (older records: the tag
of ``config.MODEL.BACKBONE``), else the ``bb-<NAME>[@<TAG>]`` level of the folder, else the backbone
the config name's prefix stands for (``vit_b16...`` -> ViT-B/16,
:func:`vlprompt.protocol.backbone_of_config_name`; ``log.txt`` runs), else None (not recorded).

Protocol ``transfer`` with role ``source`` is the ImageNet training run shared by cross_dataset and
domain_generalization; see vlprompt/protocol/tree.py for the layouts.
"""
import json
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..protocol import (
    DATASET_CLASS_TO_KEY,
    DISPLAY_NAMES,
    KNOWN_DATASETS,
    XD_SOURCE,
    BackboneError,
    backbone_label,
    backbone_of_config_name,
    dataset_key,
    parse_backbone,
    parse_run_dir,
    roles,
    target_protocol,
    tree_protocols,
)
from .legacy import read_run_log

__all__ = ["Record", "collect", "TEST_SELECTION_MARK", "infer_from_path", "DATASET_CLASS_TO_KEY", "dataset_key", "DISPLAY_NAMES",
           "KNOWN_DATASETS"]

#: appended to the group config of runs whose hyper-parameters were selected on the test split (the table row
#: label then says "selected on test"; vlprompt.features.selection)
TEST_SELECTION_MARK = "@test-selected"

RUN_FIELDS = ("protocol", "role", "dataset", "trainer", "config", "shots", "seed", "backbone")


@dataclass
class Record:
    trainer: str
    config: str  # config folder name (with any tag), as in the output tree
    protocol: str  # base2new | few_shot | transfer | cross_dataset | domain_generalization
    role: str  # base | novel | test | source | target
    dataset: str  # yaml base name
    shots: Optional[int]
    seed: Optional[int]
    metrics: Dict[str, float]
    path: str  # results.json or log file
    origin: str  # "json" | "log"
    config_dict: dict = field(default_factory=dict)
    inferred: bool = False  # protocol taken from results.json fields (subsample/phase), not from the tree
    placed_by: str = "path"  # "json" (protocol/role recorded in results.json) | "path" | "fields"
    family: Optional[str] = None  # set by the tables when a recipe override is merged into its family
    backbone: Optional[str] = None  # the backbone's label (ViT-B/16, ViT-B-16-SigLIP@webli); None: not recorded
    # hyper-parameters selected on the test split (results.json ``selection.split == "test"``,
    # TEST.SELECTION_SPLIT test): such runs form rows of their own, marked in the tables
    selected_on_test: bool = False
    # trained on unlabelled images of the classes it is tested on (results.json ``transductive``, or a config
    # folder with the sweep's ``_transductive`` mark): the tables mark its rows
    transductive: bool = False

    @property
    def group_config(self):
        return (self.family or self.config) + (TEST_SELECTION_MARK if self.selected_on_test else "")


def infer_from_path(run_dir, source=XD_SOURCE):
    """dict(protocol, role, dataset, trainer, config, shots, seed) from a run directory, or None."""
    return parse_run_dir(run_dir, source)


def _infer_from_fields(data):
    """Protocol/role from results.json fields for a run outside the CoOp tree, or a string saying why they
    cannot be told. A training run on all classes is not guessed: it may be a few-shot run or the source
    run of the transfer protocols (see :func:`collect` for how a source run is recognised)."""
    sub = data.get("subsample", "all")
    d = dataset_key(data.get("dataset_config_file") or data.get("dataset"))
    if sub in ("base", "new"):
        return dict(protocol="base2new", role="base" if sub == "base" else "novel", dataset=d)
    if data.get("phase") == "eval" and data.get("model_dir"):
        return dict(protocol=target_protocol(d), role="target", dataset=d)
    if data.get("phase") == "train":
        return ("results.json records no protocol and the folder is not in the output tree: a training run on "
                "all classes may be a few-shot run or a transfer source run, so it is not filed (run it through "
                "the sweep, which records the protocol, or move it into the output tree)")
    return ("path is not in the CoOp output tree and the fields do not "
            "name a protocol (subsample all, no model_dir)")


def _place(data, from_path, path, problems):
    """(run description, how it was found) for one results.json, or None (reported in ``problems``)."""
    if data.get("protocol") and data.get("role"):
        if data["protocol"] not in tree_protocols() or data["role"] not in roles():
            problems.append((path, f"unknown protocol/role {data['protocol']}/{data['role']} in results.json"))
            return None
        run = data.get("run") if isinstance(data.get("run"), dict) else {}
        info = {k: run[k] for k in RUN_FIELDS if run.get(k) is not None}
        info.update(protocol=data["protocol"], role=data["role"])
        if from_path is not None and (from_path["protocol"], from_path["role"]) != (info["protocol"], info["role"]):
            problems.append((path, f"results.json records {info['protocol']}/{info['role']} but the folder is a "
                                   f"{from_path['protocol']}/{from_path['role']} folder; using results.json"))
        fallback = from_path or dict(trainer=data.get("trainer"), config=data.get("config_name"),
                                     dataset=dataset_key(data.get("dataset_config_file") or data.get("dataset")),
                                     shots=_shots_of(data), seed=data.get("seed"))
        for k in RUN_FIELDS:
            info.setdefault(k, fallback.get(k))
        return info, "json"
    if from_path is not None:
        return from_path, "path"
    fi = _infer_from_fields(data)
    if isinstance(fi, str):
        problems.append((path, fi))
        return None
    return dict(fi, trainer=data.get("trainer"), config=data.get("config_name"), shots=_shots_of(data),
                seed=data.get("seed")), "fields"


def _label_of(spec):
    """The label of a ``NAME[@TAG]`` string (a ``bb-`` level), or None."""
    if not spec:
        return None
    try:
        b = parse_backbone(spec)
    except BackboneError:
        return None
    return b.label if b is not None else None


def _json_backbone(data, info):
    if data.get("backbone_label"):
        return str(data["backbone_label"])
    if data.get("backbone"):
        tag = data.get("pretrained_tag")
        if tag is None:
            tag = (((data.get("config") or {}).get("MODEL") or {}).get("BACKBONE") or {}).get("PRETRAINED_TAG", "")
        return backbone_label(data["backbone"], tag or "")
    return _path_backbone(info)


def _path_backbone(info):
    if not info:
        return None
    return _label_of(info.get("backbone")) or backbone_of_config_name(info.get("config") or "")


def _load_json(path):
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "metrics" not in data:
        raise ValueError(f"{path} is not a vlprompt results.json (no 'metrics')")
    return data


def _shots_of(data):
    s = data.get("shots")
    if s is None or s == -1:
        return None
    return int(s)


def _marked_transductive(config):
    return TRANSDUCTIVE_MARK in str(config or "")


#: the mark the sweep puts in a transductive method's config folder (vlprompt.sweep.protocols.TRANSDUCTIVE_SUFFIX)
TRANSDUCTIVE_MARK = "_transductive"


def _norm(path):
    return osp.normpath(osp.abspath(str(path)))


def _is_target(data, info):
    """Whether a results.json is an eval-only test of another run's model on all classes (a transfer target)."""
    if data.get("role"):
        return data["role"] == "target"
    if info is not None:
        return info["role"] == "target"
    return data.get("phase") == "eval" and data.get("subsample", "all") == "all" and bool(data.get("model_dir"))


def _as_source(dirpath, info):
    """The description of a folder known to hold a transfer source run (target runs were evaluated on its
    model): its place in the tree read with its own dataset as the source, or None."""
    if info is not None and info["role"] == "source":
        return info
    parts = [p for p in _norm(dirpath).split(os.sep) if p]
    for cand in parts[-6:-3]:
        got = parse_run_dir(dirpath, source=cand)
        if got is not None and got["role"] == "source":
            return got
    return None


def collect(roots, source=XD_SOURCE):
    """All records under the given roots. Returns (records, problems) where problems lists
    (path, reason) for runs that could not be read or placed.

    A run is filed under the protocol its results.json records (the engine writes what the sweep noted in
    the folder); a run that records none is placed by its folder. A folder whose model target runs were
    evaluated on (their ``model_dir``) is a transfer source run, whatever its folder alone would say (a
    source run on another source than ImageNet has the shape of a few-shot run in CoOp's own tree), so it
    is never filed as a few-shot result."""
    if isinstance(roots, str):
        roots = [roots]
    items = []
    problems = []
    for root in roots:
        if not osp.isdir(root):
            raise FileNotFoundError(f"Results root not found: {root}")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "sweep_logs")
            has_json = "results.json" in filenames
            has_log = any(f == "log.txt" or f.startswith("log.txt-") for f in filenames)
            if not has_json and not has_log:
                continue
            info = infer_from_path(dirpath, source)
            if has_json:
                path = osp.join(dirpath, "results.json")
                try:
                    data = _load_json(path)
                except (ValueError, OSError) as e:
                    problems.append((path, f"unreadable: {e}"))
                    continue
                items.append((dirpath, info, path, data))
            elif info is not None:  # a log outside the tree (e.g. a sweep log folder) is not a run we can place
                items.append((dirpath, info, None, None))
    sources = {_norm(data["model_dir"]) for _, info, _, data in items
               if data is not None and data.get("model_dir") and _is_target(data, info)}
    records: List[Record] = []
    for dirpath, info, path, data in items:
        linked = sources and (_norm(dirpath) in sources or (data is not None and data.get("output_dir")
                                                            and _norm(data["output_dir"]) in sources))
        if linked:
            as_source = _as_source(dirpath, info)
            if as_source is not None:
                recorded = (data or {}).get("protocol"), (data or {}).get("role")
                if recorded[1] and recorded[1] != "source":
                    problems.append((path, f"results.json records {recorded[0]}/{recorded[1]}, but target runs "
                                           f"were evaluated on this run's model: filed as the transfer source run"))
                info = as_source
                if data is not None:
                    data = dict(data, protocol=None, role=None)
        if data is not None:
            got = _place(data, info, path, problems)
            if got is None:
                continue
            info, placed_by = got
            trainer = data.get("trainer") or info["trainer"]
            if info.get("trainer") and trainer != info["trainer"] and placed_by == "path":
                problems.append((path, f"trainer {trainer} in results.json but {info['trainer']} in the path; "
                                       "using results.json"))
            metrics = {k: float(v) for k, v in data["metrics"].items() if isinstance(v, (int, float))}
            records.append(Record(
                trainer=trainer, config=info["config"], protocol=info["protocol"], role=info["role"],
                dataset=info["dataset"], shots=info["shots"],
                seed=int(data["seed"]) if data.get("seed") is not None else info["seed"],
                metrics=metrics, path=path, origin="json", config_dict=data.get("config") or {},
                inferred=placed_by == "fields", placed_by=placed_by, backbone=_json_backbone(data, info),
                selected_on_test=isinstance(data.get("selection"), dict) and data["selection"].get("split") == "test",
                transductive=bool(data.get("transductive")) or _marked_transductive(info["config"]),
            ))
        else:
            got = read_run_log(dirpath)
            if got is None:
                problems.append((dirpath, "log.txt has no result (unfinished run?)"))
                continue
            metrics, path, _kind = got
            records.append(Record(
                trainer=info["trainer"], config=info["config"], protocol=info["protocol"], role=info["role"],
                dataset=info["dataset"], shots=info["shots"], seed=info["seed"], metrics=metrics, path=path,
                origin="log", backbone=_path_backbone(info), transductive=_marked_transductive(info["config"]),
            ))
    return records, problems
