"""Collect run results from an output tree: ``results.json`` files, and ``log.txt`` for old runs.

Each run becomes a :class:`Record`. Its protocol and role come from the output path (the CoOp tree
written by ``vlprompt.sweep``; see vlprompt/sweep/protocols.py), or, for a path outside that tree,
from the results.json fields ``subsample``/``phase``/``model_dir``/``dataset``:

=========================================================  ==============  ========
path (relative, ending in seed<S>)                          protocol        role
=========================================================  ==============  ========
base2new/train_base/<d>/shots_<K>/<T>/<cfg>/seed<S>         base2new        base
base2new/test_new/<d>/shots_<K>/<T>/<cfg>/seed<S>           base2new        novel
few_shot/<d>/<T>/<cfg>/shots_<K>/seed<S>                    few_shot        test
<source>/<T>/<cfg>_<K>shots[/nctx.._csc.._ctp..]/seed<S>    transfer        source  (source = imagenet)
<d>/<T>/<cfg>_<K>shots[/nctx.._csc.._ctp..]/seed<S>         few_shot        test    (CoOp's own tree)
evaluation/<T>/<cfg>_<K>shots[/nctx..]/<d>/seed<S>          cross_dataset   target  (domain_generalization
                                                                                     for the ImageNet variants)
=========================================================  ==============  ========
"""
import json
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..sweep.protocols import DATASETS_11, DG_TARGETS, XD_SOURCE
from .legacy import read_run_log

__all__ = ["Record", "collect", "infer_from_path", "DATASET_CLASS_TO_KEY", "dataset_key", "DISPLAY_NAMES"]

# DATASET.NAME (class name in results.json) -> yaml base name
DATASET_CLASS_TO_KEY = {
    "ImageNet": "imagenet",
    "Caltech101": "caltech101",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers",
    "Food101": "food101",
    "FGVCAircraft": "fgvc_aircraft",
    "SUN397": "sun397",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "UCF101": "ucf101",
    "ImageNetV2": "imagenetv2",
    "ImageNetSketch": "imagenet_sketch",
    "ImageNetA": "imagenet_a",
    "ImageNetR": "imagenet_r",
}

# yaml base name -> column name used in the papers' tables
DISPLAY_NAMES = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "ImageNet-V2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
}

KNOWN_DATASETS = set(DATASETS_11) | set(DG_TARGETS)


def dataset_key(name):
    """yaml base name for a yaml name, a class name or a config path."""
    if name is None:
        return None
    base = osp.basename(str(name))
    if base.endswith(".yaml"):
        base = base[:-5]
    return DATASET_CLASS_TO_KEY.get(base, base)


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
    inferred: bool = False  # protocol taken from results.json fields, not from the path
    family: Optional[str] = None  # set by the tables when a recipe override is merged into its family

    @property
    def group_config(self):
        return self.family or self.config


_SEED = re.compile(r"seed(\d+)$")
_SHOTS_DIR = re.compile(r"shots_(\d+)$")
_CFG_SHOTS = re.compile(r"(.+)_(\d+)shots$")
_COOP_VARIANT = re.compile(r"nctx\d+_csc\w+_ctp\w+$")


def _target_protocol(d):
    return "domain_generalization" if d in DG_TARGETS else "cross_dataset"


def infer_from_path(run_dir, source=XD_SOURCE):
    """dict(protocol, role, dataset, trainer, config, shots, seed) from a run directory, or None."""
    parts = osp.normpath(osp.abspath(run_dir)).split(os.sep)
    if len(parts) < 5:
        return None
    m = _SEED.match(parts[-1])
    if not m:
        return None
    seed = int(m.group(1))
    p = parts[:-1]  # without seedS

    def at(i):
        return p[i] if len(p) >= -i else None

    # base2new/<train_base|test_new>/<d>/shots_K/T/cfg
    if len(p) >= 6 and p[-6] == "base2new" and p[-5] in ("train_base", "test_new"):
        ms = _SHOTS_DIR.match(p[-3])
        if ms:
            return dict(protocol="base2new", role="base" if p[-5] == "train_base" else "novel", dataset=p[-4],
                        shots=int(ms.group(1)), trainer=p[-2], config=p[-1], seed=seed)
    # few_shot/<d>/T/cfg/shots_K
    if len(p) >= 5 and p[-5] == "few_shot":
        ms = _SHOTS_DIR.match(p[-1])
        if ms:
            return dict(protocol="few_shot", role="test", dataset=p[-4], trainer=p[-3], config=p[-2],
                        shots=int(ms.group(1)), seed=seed)
    # evaluation/T/cfg_Kshots[/nctx..]/<d>
    for off, variant in ((0, None), (1, at(-2))):
        if len(p) >= 4 + off and p[-4 - off] == "evaluation":
            mc = _CFG_SHOTS.match(p[-2 - off])
            if mc and (variant is None or _COOP_VARIANT.match(variant)):
                cfg = mc.group(1) + (f"/{variant}" if variant else "")
                d = p[-1]
                return dict(protocol=_target_protocol(d), role="target", dataset=d, trainer=p[-3 - off],
                            config=cfg, shots=int(mc.group(2)), seed=seed)
    # <d>/T/cfg_Kshots[/nctx..]
    for off, variant in ((0, None), (1, at(-1))):
        if len(p) >= 3 + off:
            mc = _CFG_SHOTS.match(p[-1 - off])
            if mc and (variant is None or _COOP_VARIANT.match(variant)):
                cfg = mc.group(1) + (f"/{variant}" if variant else "")
                d = p[-3 - off]
                if d == source:
                    return dict(protocol="transfer", role="source", dataset=d, trainer=p[-2 - off], config=cfg,
                                shots=int(mc.group(2)), seed=seed)
                if d in KNOWN_DATASETS:
                    return dict(protocol="few_shot", role="test", dataset=d, trainer=p[-2 - off], config=cfg,
                                shots=int(mc.group(2)), seed=seed)
    return None


def _infer_from_fields(data):
    """Protocol/role from results.json fields for a run outside the CoOp tree (None if ambiguous)."""
    sub = data.get("subsample", "all")
    d = dataset_key(data.get("dataset_config_file") or data.get("dataset"))
    if sub in ("base", "new"):
        return dict(protocol="base2new", role="base" if sub == "base" else "novel", dataset=d)
    if data.get("phase") == "eval" and data.get("model_dir"):
        return dict(protocol=_target_protocol(d), role="target", dataset=d)
    if data.get("phase") == "train":
        return dict(protocol="few_shot", role="test", dataset=d)
    return None


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


def collect(roots, source=XD_SOURCE):
    """All records under the given roots. Returns (records, problems) where problems lists
    (path, reason) for runs that could not be read or placed."""
    if isinstance(roots, str):
        roots = [roots]
    records: List[Record] = []
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
                inferred = False
                if info is None:
                    fi = _infer_from_fields(data)
                    if fi is None:
                        problems.append((path, "path is not in the CoOp output tree and the fields do not "
                                               "name a protocol (subsample all, no model_dir)"))
                        continue
                    info = dict(fi, trainer=data.get("trainer"), config=data.get("config_name"),
                                shots=_shots_of(data), seed=data.get("seed"))
                    inferred = True
                trainer = data.get("trainer") or info["trainer"]
                if info.get("trainer") and trainer != info["trainer"] and not inferred:
                    problems.append((path, f"trainer {trainer} in results.json but {info['trainer']} in the path; "
                                           "using results.json"))
                metrics = {k: float(v) for k, v in data["metrics"].items() if isinstance(v, (int, float))}
                records.append(Record(
                    trainer=trainer, config=info["config"], protocol=info["protocol"], role=info["role"],
                    dataset=info["dataset"], shots=info["shots"],
                    seed=int(data["seed"]) if data.get("seed") is not None else info["seed"],
                    metrics=metrics, path=path, origin="json", config_dict=data.get("config") or {},
                    inferred=inferred,
                ))
            else:
                if info is None:
                    continue  # a log outside the tree (e.g. a sweep log folder): not a run we can place
                got = read_run_log(dirpath)
                if got is None:
                    problems.append((dirpath, "log.txt has no result (unfinished run?)"))
                    continue
                metrics, path, _kind = got
                records.append(Record(
                    trainer=info["trainer"], config=info["config"], protocol=info["protocol"], role=info["role"],
                    dataset=info["dataset"], shots=info["shots"], seed=info["seed"], metrics=metrics, path=path,
                    origin="log",
                ))
    return records, problems
