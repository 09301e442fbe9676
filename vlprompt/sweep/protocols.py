"""Protocol presets: expand (method, protocol, datasets, seeds) into the runs of the CoOp output tree.

Every run is one ``python train.py ...`` call. A run is described by :class:`Run`; :func:`plan`
builds the list for several methods and protocols and removes duplicates (cross-dataset and
domain generalisation share their ImageNet training runs).

Output trees (relative to the output root, CoOp/MaPLe conventions)::

    base2new      train  base2new/train_base/<d>/shots_16/<T>/<cfg>/seed<S>
                  test   base2new/test_new/<d>/shots_16/<T>/<cfg>/seed<S>
    cross_dataset train  imagenet/<T>/<cfg>_16shots/seed<S>
    / domain_gen. test   evaluation/<T>/<cfg>_16shots/<d>/seed<S>
    few_shot      train  few_shot/<d>/<T>/<cfg>/shots_<K>/seed<S>

The load epoch of a test run is ``OPTIM.MAX_EPOCH`` of the training config (read from the yaml, else
the engine's default), or the value given in the options. Nothing here imports torch.
"""
import json
import os
import os.path as osp
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

__all__ = [
    "PROTOCOLS",
    "DATASETS_11",
    "DG_TARGETS",
    "DEFAULT_SEEDS",
    "FEW_SHOT_SHOTS",
    "Method",
    "Run",
    "SweepError",
    "parse_method",
    "expand",
    "plan",
    "route_datasets",
    "family_config",
    "load_recipes",
    "read_max_epoch",
    "repo_root",
]

PROTOCOLS = ("base2new", "cross_dataset", "domain_generalization", "few_shot")

# The 11 datasets in the order of the papers' tables (yaml base names).
DATASETS_11 = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
DEFAULT_SEEDS = (1, 2, 3)
FEW_SHOT_SHOTS = (1, 2, 4, 8, 16)
B2N_SHOTS = 16
XD_SHOTS = 16
XD_SOURCE = "imagenet"


class SweepError(ValueError):
    """A sweep request that cannot be planned (unknown method, config, dataset or protocol)."""


def repo_root():
    """The repository root (the folder holding ``train.py`` and ``configs/``)."""
    return osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


_RECIPES_CACHE = {}


def load_recipes(path=None):
    """The default-config table (``recipes.json`` next to this file)."""
    path = path or osp.join(osp.dirname(osp.abspath(__file__)), "recipes.json")
    if path not in _RECIPES_CACHE:
        with open(path) as f:
            _RECIPES_CACHE[path] = json.load(f)
    return _RECIPES_CACHE[path]


def is_eval_only_trainer(trainer):
    return trainer in load_recipes()["eval_only_trainers"]


@dataclass(frozen=True)
class Method:
    """A trainer and, optionally, an explicit config (``None``: the recipe's choice)."""

    trainer: str
    config: Optional[str] = None  # NAME or FOLDER/NAME (configs/trainers/FOLDER/NAME.yaml)

    def __str__(self):
        return self.trainer if self.config is None else f"{self.trainer}:{self.config}"


@dataclass
class Run:
    """One ``train.py`` invocation."""

    protocol: str
    phase: str  # "train" (trains, then tests), "test" (eval-only with --model-dir), "eval" (eval-only, no model)
    trainer: str
    config: str  # the config folder name in the output tree (config name plus any tag)
    config_file: str  # relative to the repository root
    dataset: str  # yaml base name
    seed: int
    shots: Optional[int]
    output_dir: str  # absolute
    model_dir: Optional[str] = None
    load_epoch: Optional[int] = None
    opts: List[str] = field(default_factory=list)
    depends_on: Optional[str] = None  # output_dir of the run that must succeed first
    protocols: List[str] = field(default_factory=list)  # every protocol that needs this run

    @property
    def key(self):
        return self.output_dir

    @property
    def eval_only(self):
        return self.phase in ("test", "eval")

    def train_args(self, data_root):
        """The arguments after ``train.py`` (CoOp's flag order)."""
        args = [
            "--root", data_root,
            "--seed", str(self.seed),
            "--trainer", self.trainer,
            "--dataset-config-file", f"configs/datasets/{self.dataset}.yaml",
            "--config-file", self.config_file,
            "--output-dir", self.output_dir,
        ]
        if self.model_dir is not None:
            args += ["--model-dir", self.model_dir]
        if self.load_epoch is not None:
            args += ["--load-epoch", str(self.load_epoch)]
        if self.eval_only:
            args += ["--eval-only"]
        return args + list(self.opts)

    def command(self, data_root, prefix):
        return list(prefix) + self.train_args(data_root)

    def describe(self):
        shots = f" {self.shots}-shot" if "DATASET.NUM_SHOTS" in self.opts else ""
        return f"{self.phase:5s} {self.protocol} {self.dataset}{shots} {self.trainer}/{self.config} seed{self.seed}"

    def result_file(self):
        return osp.join(self.output_dir, "results.json")

    def is_complete(self):
        return osp.isfile(self.result_file())


def parse_method(text):
    """``TRAINER`` or ``TRAINER:CONFIG`` -> :class:`Method`."""
    text = text.strip()
    if not text:
        raise SweepError("Empty method name")
    trainer, sep, config = text.partition(":")
    if sep and not config:
        raise SweepError(f"Method '{text}' has an empty config after ':'")
    if config.endswith(".yaml"):
        config = config[: -len(".yaml")]
    if config.startswith("configs/trainers/"):
        config = config[len("configs/trainers/"):]
        if config.split("/")[0] == trainer:
            config = config.split("/", 1)[1]
    return Method(trainer=trainer, config=config or None)


def _known_trainers(root):
    folder = osp.join(root, "configs", "trainers")
    found = set(load_recipes()["defaults"])
    if osp.isdir(folder):
        found |= {d for d in os.listdir(folder) if osp.isdir(osp.join(folder, d)) and not d.startswith(".")}
    return sorted(found)


def _available_configs(root, folder):
    d = osp.join(root, "configs", "trainers", folder)
    if not osp.isdir(d):
        return []
    return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".yaml"))


def _config_path(trainer, config):
    """(relative yaml path, name used in the output tree) for NAME or FOLDER/NAME."""
    if "/" in config:
        folder, name = config.rsplit("/", 1)
    else:
        folder, name = trainer, config
    return f"configs/trainers/{folder}/{name}.yaml", name, folder


def _check_config(root, trainer, config, why):
    rel, name, folder = _config_path(trainer, config)
    if not osp.isfile(osp.join(root, rel)):
        avail = _available_configs(root, folder)
        listing = ", ".join(avail) if avail else f"none (configs/trainers/{folder}/ is empty or missing)"
        raise SweepError(
            f"Config file {rel} not found under {root} ({why}). Available configs for {folder}: {listing}"
        )
    return rel, name


def _recipe_config(trainer, protocol, dataset, shots):
    rec = load_recipes()["defaults"].get(trainer, {}).get(protocol)
    if rec is None:
        return None
    if dataset in rec.get("per_dataset", {}):
        return rec["per_dataset"][dataset]
    if shots is not None and str(shots) in rec.get("per_shots", {}):
        return rec["per_shots"][str(shots)]
    return rec["config"]


def family_config(trainer, protocol, dataset, shots, config):
    """The recipe's main config if ``config`` is the recipe's override for this dataset/shot count.

    Used by the results tables to put e.g. CoOp's ImageNet run (50-epoch config) in the same row as
    the other datasets. Returns None when ``config`` is not such an override.
    """
    rec = load_recipes()["defaults"].get(trainer, {}).get(protocol)
    if rec is None or config == rec["config"]:
        return None
    if _recipe_config(trainer, protocol, dataset, shots) == config:
        return rec["config"]
    return None


def read_max_epoch(path, opts=()):
    """OPTIM.MAX_EPOCH from the options, else the yaml, else the engine's default."""
    opts = list(opts)
    for k, v in zip(opts[0::2], opts[1::2]):
        if k == "OPTIM.MAX_EPOCH":
            return int(v)
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    optim = data.get("OPTIM") or {}
    if "MAX_EPOCH" in optim:
        return int(optim["MAX_EPOCH"])
    from vlprompt.config.defaults import _C  # yacs only, no torch

    return int(_C.OPTIM.MAX_EPOCH)


def _check_dataset(root, d):
    if not osp.isfile(osp.join(root, "configs", "datasets", f"{d}.yaml")):
        folder = osp.join(root, "configs", "datasets")
        avail = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if osp.isdir(folder) else []
        raise SweepError(
            f"Unknown dataset '{d}': configs/datasets/{d}.yaml not found under {root}. "
            f"Available: {', '.join(avail) if avail else 'none'}. "
            f"The 11 standard datasets are: {' '.join(DATASETS_11)}; DG targets: {' '.join(DG_TARGETS)}"
        )


class _Ctx:
    """What every expansion needs: repository root, output root, extra options, config tag."""

    def __init__(self, root, output_root, opts=(), tag=""):
        self.root = root
        self.output_root = osp.abspath(output_root)
        self.opts = list(opts)
        self.tag = tag
        self._epochs = {}

    def resolve(self, method, protocol, dataset, shots):
        """(config yaml relative path, folder name, load epoch) for one run."""
        if method.config is not None:
            config, why = method.config, f"given as {method}"
        else:
            config = _recipe_config(method.trainer, protocol, dataset, shots)
            if config is None:
                avail = _available_configs(self.root, method.trainer)
                raise SweepError(
                    f"No default config for {method.trainer} in protocol {protocol}; name one as "
                    f"{method.trainer}:CONFIG. Available configs: {', '.join(avail) if avail else 'none'}"
                )
            why = f"default for {method.trainer}/{protocol} in vlprompt/sweep/recipes.json"
        rel, name = _check_config(self.root, method.trainer, config, why)
        if rel not in self._epochs:
            self._epochs[rel] = read_max_epoch(osp.join(self.root, rel), self.opts)
        return rel, name + self.tag, self._epochs[rel]

    def out(self, *parts):
        return osp.join(self.output_root, *parts)


def _expand_base2new(ctx, method, datasets, seeds, shots):
    t = method.trainer
    zs = is_eval_only_trainer(t)
    shots = B2N_SHOTS if shots is None else shots
    runs = []
    for d in datasets:
        rel, cfg, epoch = ctx.resolve(method, "base2new", d, shots)
        for s in seeds:
            tail = (d, f"shots_{shots}", t, cfg, f"seed{s}")
            train_dir = ctx.out("base2new", "train_base", *tail)
            common = dict(protocol="base2new", trainer=t, config=cfg, config_file=rel, dataset=d, seed=s, shots=shots)
            train = Run(
                phase="eval" if zs else "train",
                output_dir=train_dir,
                opts=["DATASET.NUM_SHOTS", str(shots), "DATASET.SUBSAMPLE_CLASSES", "base"] + ctx.opts,
                **common,
            )
            test = Run(
                phase="eval" if zs else "test",
                output_dir=ctx.out("base2new", "test_new", *tail),
                model_dir=None if zs else train_dir,
                load_epoch=None if zs else epoch,
                opts=["DATASET.NUM_SHOTS", str(shots), "DATASET.SUBSAMPLE_CLASSES", "new"] + ctx.opts,
                depends_on=None if zs else train_dir,
                **common,
            )
            runs += [train, test]
    return runs


def _expand_transfer(ctx, method, protocol, targets, seeds, shots, source):
    t = method.trainer
    zs = is_eval_only_trainer(t)
    shots = XD_SHOTS if shots is None else shots
    if source in targets:
        raise SweepError(f"The source dataset {source} cannot also be a target of {protocol}")
    rel, cfg, epoch = ctx.resolve(method, protocol, source, shots)
    runs = []
    for s in seeds:
        train_dir = ctx.out(source, t, f"{cfg}_{shots}shots", f"seed{s}")
        common = dict(protocol=protocol, trainer=t, config=cfg, config_file=rel, seed=s)
        runs.append(
            Run(
                phase="eval" if zs else "train",
                dataset=source,
                shots=shots,
                output_dir=train_dir,
                opts=(["DATASET.NUM_SHOTS", str(shots)] if not zs else []) + ctx.opts,
                **common,
            )
        )
        for d in targets:
            runs.append(
                Run(
                    phase="eval" if zs else "test",
                    dataset=d,
                    shots=None,
                    output_dir=ctx.out("evaluation", t, f"{cfg}_{shots}shots", d, f"seed{s}"),
                    model_dir=None if zs else train_dir,
                    load_epoch=None if zs else epoch,
                    opts=list(ctx.opts),
                    depends_on=None if zs else train_dir,
                    **common,
                )
            )
    return runs


def _expand_few_shot(ctx, method, datasets, seeds, shots_list):
    t = method.trainer
    runs = []
    if is_eval_only_trainer(t):
        # Zero-shot does not depend on K: one all-class test per dataset, filed under shots_0.
        for d in datasets:
            rel, cfg, _ = ctx.resolve(method, "few_shot", d, None)
            for s in seeds:
                runs.append(
                    Run(
                        protocol="few_shot", phase="eval", trainer=t, config=cfg, config_file=rel, dataset=d,
                        seed=s, shots=0, output_dir=ctx.out("few_shot", d, t, cfg, "shots_0", f"seed{s}"),
                        opts=list(ctx.opts),
                    )
                )
        return runs
    for d in datasets:
        for k in shots_list:
            rel, cfg, _ = ctx.resolve(method, "few_shot", d, k)
            for s in seeds:
                runs.append(
                    Run(
                        protocol="few_shot", phase="train", trainer=t, config=cfg, config_file=rel, dataset=d,
                        seed=s, shots=k, output_dir=ctx.out("few_shot", d, t, cfg, f"shots_{k}", f"seed{s}"),
                        opts=["DATASET.NUM_SHOTS", str(k)] + ctx.opts,
                    )
                )
    return runs


def default_datasets(protocol, source=XD_SOURCE):
    if protocol == "cross_dataset":
        return [d for d in DATASETS_11 if d != source]
    if protocol == "domain_generalization":
        return list(DG_TARGETS)
    return list(DATASETS_11)


def route_datasets(protocol, datasets, source=XD_SOURCE):
    """The datasets of one protocol out of a list given for several protocols.

    The ImageNet variants (DG targets) go to domain_generalization only, every other dataset to
    base2new, few_shot and cross_dataset; the source dataset is never a transfer target (its
    training run reports the source accuracy). None keeps each protocol's default list.
    """
    if datasets is None:
        return None
    datasets = list(datasets)
    if protocol == "domain_generalization":
        out = [d for d in datasets if d in DG_TARGETS]
    else:
        out = [d for d in datasets if d not in DG_TARGETS]
        if protocol == "cross_dataset":
            out = [d for d in out if d != source]
    if not out:
        raise SweepError(
            f"None of the datasets {' '.join(datasets)} belongs to protocol {protocol} "
            f"(domain_generalization takes {' '.join(DG_TARGETS)}; cross_dataset takes targets other than "
            f"the source {source} and the DG variants; base2new and few_shot take the others)"
        )
    return out


def expand(method, protocol, datasets=None, seeds=DEFAULT_SEEDS, *, output_root="output", root=None,
           shots=None, opts=(), tag="", source=XD_SOURCE):
    """All runs of one method under one protocol.

    ``datasets``: the datasets (base2new, few_shot) or target datasets (cross_dataset,
    domain_generalization); None means the protocol's standard list. ``shots``: an int for
    base2new/transfer (default 16) or a list for few_shot (default 1 2 4 8 16).
    """
    if isinstance(method, str):
        method = parse_method(method)
    if protocol not in PROTOCOLS:
        raise SweepError(f"Unknown protocol '{protocol}'. Valid protocols: {', '.join(PROTOCOLS)}")
    root = root or repo_root()
    known = _known_trainers(root)
    if method.trainer not in known:
        raise SweepError(f"Unknown trainer '{method.trainer}'. Known trainers: {', '.join(known)}")
    if len(opts) % 2:
        raise SweepError(f"Options must be KEY VALUE pairs, got {list(opts)}")
    datasets = default_datasets(protocol, source) if datasets is None else list(datasets)
    if protocol == "domain_generalization":
        bad = [d for d in datasets if d not in DG_TARGETS]
        if bad:
            raise SweepError(f"domain_generalization targets must be among {' '.join(DG_TARGETS)}; got {' '.join(bad)}")
    elif protocol == "cross_dataset":
        bad = [d for d in datasets if d in DG_TARGETS]
        if bad:
            raise SweepError(f"{' '.join(bad)} are domain_generalization targets, not cross_dataset targets")
    for d in datasets + ([source] if protocol in ("cross_dataset", "domain_generalization") else []):
        _check_dataset(root, d)
    seeds = [int(s) for s in seeds]
    ctx = _Ctx(root, output_root, opts, tag)
    if protocol == "base2new":
        if isinstance(shots, (list, tuple)):
            raise SweepError("base2new takes one shot count")
        runs = _expand_base2new(ctx, method, datasets, seeds, shots)
    elif protocol == "few_shot":
        if shots is None:
            shots_list = list(FEW_SHOT_SHOTS)
        else:
            shots_list = [int(k) for k in (shots if isinstance(shots, (list, tuple)) else [shots])]
        runs = _expand_few_shot(ctx, method, datasets, seeds, shots_list)
    else:
        if isinstance(shots, (list, tuple)):
            raise SweepError(f"{protocol} takes one shot count")
        runs = _expand_transfer(ctx, method, protocol, datasets, seeds, shots, source)
    for r in runs:
        r.protocols = [protocol]
    return runs


def plan(methods, protocols, datasets=None, seeds=DEFAULT_SEEDS, *, few_shot_shots=None, **kw):
    """Runs for every method x protocol, duplicates (same output dir) merged, in a stable order.

    ``datasets`` is routed to each protocol with :func:`route_datasets`; ``few_shot_shots`` are the
    few-shot shot counts (default 1 2 4 8 16); other keywords go to :func:`expand` (``shots`` there is
    the shot count of base2new and the transfer protocols). Two requests for the same output
    directory with different commands are an error.
    """
    if isinstance(protocols, str):
        protocols = [protocols]
    for p in protocols:
        if p not in PROTOCOLS:
            raise SweepError(f"Unknown protocol '{p}'. Valid protocols: {', '.join(PROTOCOLS)}")
    runs: Dict[str, Run] = {}
    for p in protocols:
        ds = route_datasets(p, datasets, kw.get("source", XD_SOURCE))
        kw_p = dict(kw)
        if p == "few_shot":
            kw_p["shots"] = few_shot_shots
        for m in methods:
            for r in expand(m, p, ds, seeds, **kw_p):
                old = runs.get(r.key)
                if old is None:
                    runs[r.key] = r
                    continue
                if old.train_args("DATA") != r.train_args("DATA"):
                    raise SweepError(
                        f"Two different runs would write to {r.key}:\n  {shlex.join(old.train_args('DATA'))}\n"
                        f"  {shlex.join(r.train_args('DATA'))}"
                    )
                if p not in old.protocols:
                    old.protocols.append(p)
    return list(runs.values())
