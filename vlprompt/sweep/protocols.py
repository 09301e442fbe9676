"""Protocol presets: expand (method, protocol, datasets, seeds) into the runs of the CoOp output tree.

Every run is one ``python train.py ...`` call, described by :class:`Run`. :func:`plan` builds the
list for several methods and protocols and removes duplicates (cross-dataset and domain
generalisation share their ImageNet training runs). Every protocol is expanded by the same code
(:func:`_expand_steps`) from what the registered protocol declares (:class:`vlprompt.protocol.Protocol`:
its steps, datasets, shot counts, source), so a protocol registered later is planned like the shipped
ones. The folders come from :func:`vlprompt.protocol.run_dir`, the same description the result tables
parse; each run carries that description (:attr:`Run.note`), which the sweep writes into the folder
before the run starts (:meth:`Run.write_note`) so that the engine records the right protocol and role.

The default config of a method per protocol, and whether it trains at all, are what the trainer's
method card declares (``config``/``recipes``, ``eval_only``; :class:`vlprompt.protocol.card.MethodCard`,
read through :func:`vlprompt.engine.methods.method_card`). A caller may pass ``specs`` (name -> card)
instead; without them the registry is loaded once (:func:`registry_specs`, which imports the repository's
``trainers`` package and so torch, or reads the cards back from a cache without torch).

The backbone axis (``backbones``, ``--backbones NAME[@TAG] ...``): per (method, recipe, backbone) the
sweep uses the method's config for that backbone when it ships one (the recipe config's sibling named by
:func:`vlprompt.protocol.family_config_name`, e.g. ``siglip_b16_ctxv1`` beside ``vit_b16_ctxv1``), else
the recipe config with ``MODEL.BACKBONE.NAME``/``PRETRAINED_TAG`` set on the command line, filed under
a ``bb-<NAME>[@<TAG>]`` level of the tree. A method whose towers requirements the backbone does not meet
is refused at planning time (:mod:`vlprompt.sweep.backbones`).

Config options (``opts``) are part of the run's folder name (:func:`vlprompt.protocol.config_folder`)
unless a ``tag`` names the variant, so a variant never lands in the default run's folder. The load
epoch of a test run is ``OPTIM.MAX_EPOCH`` of the options, else of the yaml, else the engine's
default.
"""
import hashlib
import itertools
import json
import os
import os.path as osp
import shlex
import sys
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import yaml

from vlprompt.protocol import (
    CLIP_NAMES,
    Backbone,
    BackboneError,
    backbone_label,
    family_config_name,
    parse_backbone,
    same_backbone,
    DATASETS_11,
    DEFAULT_SEEDS,
    DG_TARGETS,
    FEW_SHOT_SHOTS,
    PROTOCOLS,
    XD_SOURCE,
    TreeError,
    config_folder,
    family_config as _family_config,
    get_protocol,
    parse_run_dir,
    protocol_names,
    write_run_note,
    recipe_config,
    run_dir,
)
from vlprompt.protocol.card import MethodCard

__all__ = [
    "PROTOCOLS",
    "DATASETS_11",
    "DG_TARGETS",
    "DEFAULT_SEEDS",
    "FEW_SHOT_SHOTS",
    "Method",
    "Run",
    "SweepError",
    "UnsupportedBackbone",
    "parse_method",
    "expand",
    "plan",
    "route_datasets",
    "family_config",
    "registry_specs",
    "read_max_epoch",
    "repo_root",
]

#: the config-folder suffix of a transductive method's runs (docs/RESULTS.md, "Transductive methods")
TRANSDUCTIVE_SUFFIX = "_transductive"


class SweepError(ValueError):
    """A sweep request that cannot be planned (unknown method, config, dataset or protocol)."""


def repo_root():
    """The repository root (the folder holding ``train.py`` and ``configs/``)."""
    return osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


_REGISTRY = {}


#: the method table's entries are method cards (vlprompt.protocol.card.MethodCard, torch-free); the old name
SpecView = MethodCard

#: bump when MethodCard gains a field, so that a cache written by older code is not read
_CACHE_VERSION = 3


def _cache_key(root):
    """Digest of every .py file that can change a trainer's declarations (trainers/, vlprompt/engine/, the
    card itself in vlprompt/protocol/)."""
    h = hashlib.sha1(root.encode())
    for sub in ("trainers", osp.join("vlprompt", "engine"), osp.join("vlprompt", "protocol")):
        for dirpath, dirnames, filenames in os.walk(osp.join(root, sub)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for f in sorted(filenames):
                if f.endswith(".py"):
                    st = os.stat(osp.join(dirpath, f))
                    h.update(f"{osp.join(dirpath, f)}:{st.st_mtime_ns}:{st.st_size};".encode())
    return h.hexdigest()


def _cache_path(root):
    base = os.environ.get("VLPROMPT_CACHE_DIR") or osp.join(
        os.environ.get("XDG_CACHE_HOME") or osp.join(osp.expanduser("~"), ".cache"), "vlprompt")
    return osp.join(base, f"methods-v{_CACHE_VERSION}-{hashlib.sha1(root.encode()).hexdigest()[:12]}.json")


def _engine_loaded():
    return "vlprompt.engine.methods" in sys.modules


def registry_specs():
    """``{trainer name: MethodCard}`` of every registered trainer.

    Read from ``vlprompt.engine.methods.method_cards`` (plugins loaded, which imports torch) and kept
    in ``~/.cache/vlprompt/methods-<repo>.json`` (or ``$VLPROMPT_CACHE_DIR``) until a .py file under
    ``trainers/`` or ``vlprompt/engine/`` changes, so that planning a sweep or a script's dry run does
    not import torch every time. ``VLPROMPT_CACHE_DIR=off`` disables the file. In a process that has
    imported the engine already, the live registry is read instead (trainers registered at run time
    included).
    """
    if _engine_loaded():
        # the engine is loaded already (train.py, the toy demo, tests): read the live registry, which
        # also holds trainers registered outside trainers/ (never written to the cache)
        from vlprompt.engine.methods import load_plugins, method_cards

        load_plugins()
        return {c.name: c for c in method_cards(with_recipes_only=False)}
    if "specs" in _REGISTRY:
        return _REGISTRY["specs"]
    root = repo_root()
    use_file = os.environ.get("VLPROMPT_CACHE_DIR") != "off"
    key = _cache_key(root) if use_file else None
    path = _cache_path(root) if use_file else None
    rows = None
    if use_file and osp.isfile(path):
        try:
            with open(path) as f:
                data = json.load(f)
            if data.get("key") == key:
                rows = data["specs"]
        except (OSError, ValueError, KeyError):
            rows = None
    if rows is None:
        try:
            from vlprompt.engine.methods import load_plugins, method_cards

            load_plugins()
            cards = method_cards(with_recipes_only=False)
        except ImportError as e:
            raise SweepError(f"Cannot load the method table (vlprompt.engine.methods, trainers/): {e}") from e
        rows = [c.to_row() for c in cards]
        if use_file:
            try:
                os.makedirs(osp.dirname(path), exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump({"key": key, "specs": rows}, f)
                os.replace(tmp, path)
            except OSError:
                pass  # an unwritable cache only costs time: the table was read from the registry
    _REGISTRY["specs"] = {r["name"]: MethodCard.from_row(r) for r in rows}
    return _REGISTRY["specs"]


def _specs(specs):
    if specs is None:
        return registry_specs()
    if isinstance(specs, dict):
        return specs
    return {s.name: s for s in specs}


def _card(specs, trainer):
    """The card of ``trainer`` from a method table; a name the table lacks (a composed ``Host+Plugin``
    trainer made at run time) is asked of the live registry (:func:`vlprompt.engine.methods.method_card`),
    None when that does not know it either."""
    card = specs.get(trainer)
    if card is not None or "+" not in str(trainer):
        return card
    try:
        from vlprompt.engine.methods import load_plugins, method_card

        load_plugins()
        card = method_card(trainer)
    except (ImportError, KeyError, ValueError):
        return None
    specs[trainer] = card
    return card


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
    config: str  # the config folder name in the output tree (config name plus any tag and option slug)
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
    role: str = ""  # base | novel | source | target | test (vlprompt.protocol.ROLES)
    backbone: str = ""  # the backbone the run uses (its label: NAME[@TAG]), shown in the plan
    note: Optional[dict] = None  # what the run is (protocol, role, ...), written into its folder before it starts

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
        on = f" on {self.backbone}" if self.backbone else ""
        return f"{self.phase:5s} {self.protocol} {self.dataset}{shots} {self.trainer}/{self.config}{on} seed{self.seed}"

    def result_file(self):
        return osp.join(self.output_dir, "results.json")

    def write_note(self):
        """Leave :attr:`note` in the run folder (:func:`vlprompt.protocol.write_run_note`), so that the
        engine records this run's protocol and role in results.json whatever its folder alone says."""
        if self.note:
            write_run_note(self.output_dir, self.note)

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


def _known_trainers(root, specs):
    folder = osp.join(root, "configs", "trainers")
    found = set(specs)
    if osp.isdir(folder):
        found |= {d for d in os.listdir(folder) if osp.isdir(osp.join(folder, d)) and not d.startswith(".")}
    return sorted(found)


def _available_configs(root, folder):
    d = osp.join(root, "configs", "trainers", folder)
    if not osp.isdir(d):
        return []
    return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".yaml"))


def _config_path(folder, config):
    """(relative yaml path, base name, folder) for NAME (in ``folder``) or FOLDER/NAME."""
    if "/" in config:
        folder, name = config.rsplit("/", 1)
    else:
        name = config
    return f"configs/trainers/{folder}/{name}.yaml", name, folder


def _check_config(root, folder, config, why):
    rel, name, folder = _config_path(folder, config)
    if not osp.isfile(osp.join(root, rel)):
        avail = _available_configs(root, folder)
        listing = ", ".join(avail) if avail else f"none (configs/trainers/{folder}/ is empty or missing)"
        raise SweepError(
            f"Config file {rel} not found under {root} ({why}). Available configs for {folder}: {listing}"
        )
    return rel, name


def family_config(trainer, protocol, dataset, shots, config, specs=None):
    """The recipe's main config if ``config`` is the recipe's override for this dataset/shot count."""
    spec = _card(_specs(specs), trainer)
    return _family_config(spec.recipe(protocol) if spec else None, dataset, shots, config)


def read_max_epoch(path, opts=()):
    """OPTIM.MAX_EPOCH from the options (the last one wins, as in yacs), else the yaml, else the default."""
    opts = list(opts)
    found = None
    for k, v in zip(opts[0::2], opts[1::2]):
        if k == "OPTIM.MAX_EPOCH":
            try:
                found = int(v)
            except ValueError:
                raise SweepError(f"OPTIM.MAX_EPOCH must be an integer, got '{v}'") from None
    if found is not None:
        return found
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise SweepError(f"{path} is not valid YAML: {e}") from None
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
            f"unknown dataset '{d}': configs/datasets/{d}.yaml not found under {root}. "
            f"Available: {', '.join(avail) if avail else 'none'}. "
            f"The 11 standard datasets are: {' '.join(DATASETS_11)}; DG targets: {' '.join(DG_TARGETS)}"
        )


def _swap_backbone(name, backbone):
    if backbone is None:
        return name
    if not name.startswith("vit_b16"):
        raise SweepError(f"--backbone {backbone}: the recipe config {name} does not start with vit_b16")
    return backbone + name[len("vit_b16"):]


def _yaml_backbone(path):
    """(MODEL.BACKBONE.NAME, PRETRAINED_TAG) of a config file ("" where it sets none)."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise SweepError(f"{path} is not valid YAML: {e}") from None
    bb = (data.get("MODEL") or {}).get("BACKBONE") or {}
    return str(bb.get("NAME") or ""), str(bb.get("PRETRAINED_TAG") or "")


def _yaml_prec(path, node):
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise SweepError(f"{path} is not valid YAML: {e}") from None
    return str(((data.get("TRAINER") or {}).get(node) or {}).get("PREC") or "")


def _last_opt(opts, key):
    found = None
    for k, v in zip(opts[0::2], opts[1::2]):
        if k == key:
            found = str(v)
    return found


@dataclass
class _OnBackbone:
    """How one (method, config) runs on a requested backbone."""

    config: str  # the config name to use (the recipe's, its sibling for the backbone, or the explicit one)
    why: str
    opts: List[str]  # MODEL.BACKBONE.* (and PREC) options the command line must add; [] when the file fits
    level: Optional[Backbone]  # the bb- level of the tree (None: the config file names this backbone)
    label: str  # the backbone's label for the plan
    notes: List[str]


class _Ctx:
    """What every expansion needs: roots, method table, options, tag, backbone, load epoch."""

    def __init__(self, root, output_root, specs, opts=(), tag="", slug_opts=None, backbone=None, load_epoch=None,
                 on=None, towers=None):
        self.root = root
        self.output_root = osp.abspath(output_root)
        self.specs = specs
        self.opts = list(opts)
        self.tag = tag
        # without a tag every option names the folder; a tag names the options itself
        self.slug_opts = list(slug_opts) if slug_opts is not None else ([] if tag else list(self.opts))
        self.backbone = backbone
        self.on = on  # the requested Backbone (None: each recipe's own)
        self.towers = towers
        self.load_epoch = load_epoch
        self._epochs = {}
        self._yaml = {}
        self.notes = []

    def yaml_backbone(self, rel):
        if rel not in self._yaml:
            self._yaml[rel] = _yaml_backbone(osp.join(self.root, rel))
        return self._yaml[rel]

    def on_backbone(self, method, folder, config, why, explicit):
        """Where ``config`` of ``method`` stands for the requested backbone (see :class:`_OnBackbone`)."""
        want = self.on
        rel, _ = _check_config(self.root, folder, config, why)
        own = self.yaml_backbone(rel)
        if same_backbone((want.name, want.tag), own):
            return _OnBackbone(config, why, [], None, backbone_label(*own) or str(want), [])
        base = config
        sibling = None if explicit else family_config_name(config, want.name)
        if sibling is not None:
            srel, _, _ = _config_path(folder, sibling)
            if osp.isfile(osp.join(self.root, srel)):
                sown = self.yaml_backbone(srel)
                if not same_backbone((want.name, ""), (sown[0], "")):
                    raise SweepError(f"{srel} is named for {want.name} but its MODEL.BACKBONE.NAME is "
                                     f"'{sown[0]}'; fix the file or its prefix (vlprompt.protocol.CONFIG_PREFIXES)")
                swhy = f"{why}; its {want.name} version"
                if same_backbone((want.name, want.tag), sown):
                    return _OnBackbone(sibling, swhy, [], None, backbone_label(*sown), [])
                # the backbone's own config with another pretrained tag
                return _OnBackbone(sibling, swhy, ["MODEL.BACKBONE.PRETRAINED_TAG", want.tag], want, want.label, [])
        spec = _card(self.specs, method.trainer)
        info = self.towers(want.name) if self.towers else None
        builtin = bool(info and info.builtin)
        if not want.tag and not builtin and want.name not in CLIP_NAMES:
            raise SweepError(
                f"{method.trainer} on {want.name}: {config} is written for "
                f"{backbone_label(*own) or 'another backbone'} "
                f"and the method ships no {want.name} config, so the pretrained tag must be given: "
                f"--backbones {want.name}@TAG (tags: open_clip.list_pretrained_tags_by_model('{want.name}'))")
        opts = ["MODEL.BACKBONE.NAME", want.name]
        if want.tag or own[1]:
            if not want.tag:
                raise SweepError(f"{method.trainer} on {want.name}: {config} sets PRETRAINED_TAG '{own[1]}' for "
                                 f"{own[0]}; give the tag of {want.name}: --backbones {want.name}@TAG")
            opts += ["MODEL.BACKBONE.PRETRAINED_TAG", want.tag]
        notes = []
        node = spec.cfg_node if spec else ""
        if info is not None and not info.fp16_weights and node:
            key = f"TRAINER.{node}.PREC"
            prec = (_last_opt(self.opts, key) or _yaml_prec(osp.join(self.root, rel), node)
                    or getattr(spec, "prec_default", ""))
            if prec == "fp16":
                opts += [key, "amp"]
                notes.append(f"{method.trainer} {config} on {want}: {key} fp16 -> amp (fp16 weights need open_clip "
                             f"CLIP towers; {want.name} has {info.family} towers)")
        return _OnBackbone(base, f"{why}, run on {want}", opts, want, want.label, notes)

    def eval_only(self, trainer):
        spec = _card(self.specs, trainer)
        return bool(spec and spec.eval_only)

    def zero_shot(self, trainer):
        """Eval-only and independent of the shots (ZeroshotCLIP): one run per dataset in the few-shot protocol.
        An eval-only method that fits on the few-shot images (the card's ``uses_shots``: Tip-Adapter, the
        linear probe, GDA) runs every shot count."""
        spec = _card(self.specs, trainer)
        return bool(spec and spec.eval_only and not getattr(spec, "uses_shots", False))

    def resolve(self, method, protocol, dataset, shots):
        """(config yaml relative path, folder name, load epoch) for one run."""
        spec = _card(self.specs, method.trainer)
        folder = (spec.config_folder if spec and spec.config_folder else method.trainer)
        if method.config is not None:
            config, why = method.config, f"given as {method}"
        else:
            config = recipe_config(spec.recipe(protocol) if spec else None, dataset, shots)
            if config is None:
                avail = _available_configs(self.root, folder)
                raise SweepError(
                    f"No default config for {method.trainer} in protocol {protocol} (its method card names no "
                    f"config for {protocol}); name one as {method.trainer}:CONFIG. Available configs: "
                    f"{', '.join(avail) if avail else 'none'}"
                )
            config = _swap_backbone(config, self.backbone)
            why = f"default for {method.trainer}/{protocol} (the method card of trainer {method.trainer})"
        extra, level, label = [], None, ""
        if self.on is not None:
            ob = self.on_backbone(method, folder, config, why, explicit=method.config is not None)
            config, why, extra, level, label = ob.config, ob.why, ob.opts, ob.level, ob.label
            for n in ob.notes:
                if n not in self.notes:
                    self.notes.append(n)
        rel, name = _check_config(self.root, folder, config, why)
        if not label:
            label = backbone_label(*self.yaml_backbone(rel)) or ""
        if rel not in self._epochs:
            self._epochs[rel] = (self.load_epoch if self.load_epoch is not None
                                 else read_max_epoch(osp.join(self.root, rel), self.opts))
        try:
            # a transductive method (its card's ``transductive``: PromptKD) says so in its run folders
            mark = TRANSDUCTIVE_SUFFIX if spec is not None and getattr(spec, "transductive", False) else ""
            cfg_dir = config_folder(name, mark + self.tag, self.slug_opts)
        except TreeError as e:
            raise SweepError(str(e)) from None
        return _Resolved(rel, cfg_dir, self._epochs[rel], extra, level, label, name)

    def out(self, protocol, role, level=None, **fields):
        try:
            return run_dir(protocol, role, root=self.output_root, backbone=level, **fields)
        except TreeError as e:
            raise SweepError(str(e)) from None


@dataclass
class _Resolved:
    """One run's config: yaml path, folder name, load epoch, and what its backbone adds."""

    rel: str
    cfg: str
    epoch: int
    opts: List[str]  # backbone options, placed before the user's options
    level: Optional[Backbone]
    label: str
    name: str = ""  # the config's base name (before tag and options)


def _without_test_time(opts):
    """``opts`` without its ``TTA.*`` pairs (test-time options, docs/METHODS.md "Test-time adaptation")."""
    out = []
    for k, v in zip(opts[::2], opts[1::2]):
        if not str(k).startswith("TTA."):
            out += [k, v]
    return out


def _step_run(ctx, proto, step, method, zs, res, dataset, shots, seed, dirs, source):
    """The :class:`Run` of one step of a protocol (``dirs``: role -> output dir of this seed's runs so far).

    A training step never takes test-time options (``--opts TTA.METHOD TPT``): they and their part of the config
    folder name are left out of it, so the source run of the test_time protocol is shared by every procedure."""
    t = method.trainer
    user_opts = ctx.opts
    if step.trains and not zs and any(str(k).startswith("TTA.") for k in ctx.opts[::2]):
        user_opts = _without_test_time(ctx.opts)
        try:
            res = replace(res, cfg=config_folder(res.name, ctx.tag, _without_test_time(ctx.slug_opts)))
        except TreeError as e:
            raise SweepError(str(e)) from None
    no_shots = ctx.zero_shot(t)
    shots_opt = step.shots_opt if not no_shots or step.eval_only_shots_opt is None else step.eval_only_shots_opt
    if no_shots and proto.eval_only_shots is not None:
        shots_opt = False  # one zero-shot run per dataset, whatever the shot counts
    where = dict(dataset=dataset, trainer=t, config=res.cfg, shots=shots, seed=seed, level=res.level)
    if step.on_source:
        where["source"] = source
    out = ctx.out(proto.tree_name(step), step.role, **where)
    dirs[step.role] = out
    note = parse_run_dir(out, source) or {}  # what the folder is, read with this run's source
    model_dir = dirs[step.model_from] if step.model_from and not zs else None
    opts = (["DATASET.NUM_SHOTS", str(shots)] if shots_opt else [])
    opts += ["DATASET.SUBSAMPLE_CLASSES", step.subsample] if step.subsample else []
    opts += list(step.opts)
    return Run(
        protocol=proto.name, phase="eval" if zs else ("train" if step.trains else "test"), role=step.role, trainer=t,
        config=res.cfg, config_file=res.rel, dataset=dataset, seed=seed, shots=shots if step.records_shots else None,
        backbone=res.label, output_dir=out, model_dir=model_dir, load_epoch=res.epoch if model_dir else None,
        opts=opts + res.opts + user_opts, depends_on=model_dir, note=note,
    )


def _expand_steps(ctx, method, proto, datasets, seeds, shots_list, source):
    """Every run of ``proto`` for one method: its steps per dataset, shot count and seed (datasets, then
    shot counts, then seeds); a protocol with a source step runs it once per seed on the source, then its
    other steps per dataset (targets)."""
    zs = ctx.eval_only(method.trainer)
    runs = []
    if any(step.on_source for step in proto.steps):
        if source in datasets:
            raise SweepError(f"The source dataset {source} cannot also be a target of {proto.name} (its test is "
                             f"part of the training run)")
        K = shots_list[0]
        res = ctx.resolve(method, proto.name, source, K)
        for s in seeds:
            dirs = {}
            for step in proto.steps:
                for d in ([source] if step.on_source else datasets):
                    runs.append(_step_run(ctx, proto, step, method, zs, res, d, K, s, dirs, source))
        return runs
    collapse = ctx.zero_shot(method.trainer) and proto.eval_only_shots is not None
    for d in datasets:
        for K in ([proto.eval_only_shots] if collapse else shots_list):
            if proto.shot_list and not collapse and K < 1:
                raise SweepError(f"{proto.name} shot counts must be positive, got {K}")
            res = ctx.resolve(method, proto.name, d, None if collapse else K)
            for s in seeds:
                dirs = {}
                for step in proto.steps:
                    runs.append(_step_run(ctx, proto, step, method, zs, res, d, K, s, dirs, source))
    return runs


def route_datasets(protocol, datasets, source=XD_SOURCE, strict=True):
    """The datasets of one protocol out of a list given for several protocols.

    Each protocol says which datasets it takes (:meth:`vlprompt.protocol.Protocol.takes`): the ImageNet
    variants (DG targets) go to domain_generalization only, every other dataset to base2new, few_shot and
    cross_dataset; the source dataset is never a transfer target (its training run reports the source
    accuracy). None keeps each protocol's default list. With ``strict`` a protocol that gets no dataset is
    an error; otherwise it gets an empty list.
    """
    if datasets is None:
        return None
    datasets = list(datasets)
    out = [d for d in datasets if _protocol(protocol).takes(d, source)]
    if not out and strict:
        raise SweepError(
            f"None of the datasets {' '.join(datasets)} belongs to protocol {protocol} "
            f"(domain_generalization takes {' '.join(DG_TARGETS)}; cross_dataset takes targets other than "
            f"the source {source} and the DG variants; base2new and few_shot take the others)"
        )
    return out


def _protocol(name):
    try:
        return get_protocol(name)
    except TreeError:
        raise SweepError(f"Unknown protocol '{name}'. Valid protocols: {', '.join(protocol_names())}") from None


def expand(method, protocol, datasets=None, seeds=DEFAULT_SEEDS, *, output_root="output", root=None,
           shots=None, opts=(), tag="", slug_opts=None, source=XD_SOURCE, specs=None, backbone=None,
           load_epoch=None, on_backbone=None, towers=None, notes=None):
    """All runs of one method under one protocol.

    ``datasets``: the datasets (base2new, few_shot) or target datasets (cross_dataset,
    domain_generalization); None means the protocol's standard list. ``shots``: an int for
    base2new/transfer (default 16) or a list for few_shot (default 1 2 4 8 16). ``opts``: config
    options appended to every run; they name the config folder after ``tag`` (``slug_opts``; default:
    ``opts`` without a tag, none with one). ``backbone``: replace the ``vit_b16`` prefix of the recipe's config names (e.g.
    ``rn50``: CoOp's ResNet-50 configs). ``load_epoch``: override the test runs' load epoch.
    ``on_backbone``: run on this backbone (``NAME[@TAG]`` or a :class:`~vlprompt.protocol.Backbone`;
    None or ``default``: each recipe's own), see the module docstring; ``towers``: name ->
    :class:`~vlprompt.sweep.backbones.TowerInfo` (default :func:`vlprompt.sweep.backbones.tower_info`);
    a method the backbone cannot run raises :class:`SweepError` (one line naming method, backbone and
    the families the method supports). ``notes``: a list that receives planning notes (option changes).
    ``specs``: the method table (default: the registry).
    """
    if isinstance(method, str):
        method = parse_method(method)
    proto = _protocol(protocol)
    root = root or repo_root()
    specs = _specs(specs)
    known = _known_trainers(root, specs)
    if method.trainer not in known and _card(specs, method.trainer) is None:
        raise SweepError(f"Unknown trainer '{method.trainer}'. Known trainers: {', '.join(known)}")
    if len(opts) % 2:
        raise SweepError(f"Options must be KEY VALUE pairs, got {list(opts)}")
    datasets = proto.default_datasets(source) if datasets is None else list(datasets)
    problem = proto.dataset_problem(datasets)
    if problem:
        raise SweepError(problem)
    uses_source = any(step.on_source for step in proto.steps)
    for d in datasets + ([source] if uses_source else []):
        _check_dataset(root, d)
    seeds = [int(s) for s in seeds]
    if any(s < 0 for s in seeds):
        raise SweepError(f"Seeds must be non-negative integers, got {' '.join(map(str, seeds))}")
    on = _backbone_arg(on_backbone)
    if on is not None and backbone is not None:
        raise SweepError("--backbone (a config-name prefix) and --backbones cannot be combined; use --backbones")
    towers = towers or _default_towers
    if on is not None:
        _check_support(method.trainer, on, _card(specs, method.trainer), towers, notes)
    ctx = _Ctx(root, output_root, specs, opts, tag, slug_opts, backbone, load_epoch, on=on, towers=towers)
    if proto.shot_list:
        shots_list = (list(proto.shots) if shots is None else
                      [int(k) for k in (shots if isinstance(shots, (list, tuple)) else [shots])])
    else:
        if isinstance(shots, (list, tuple)):
            raise SweepError(f"{protocol} takes one shot count")
        shots_list = [proto.shots if shots is None else shots]
    runs = _expand_steps(ctx, method, proto, datasets, seeds, shots_list, source)
    for r in runs:
        r.protocols = [protocol]
    if notes is not None:
        notes += [n for n in ctx.notes if n not in notes]
    return runs


class UnsupportedBackbone(SweepError):
    """A method that cannot run on a requested backbone (refused at planning time)."""


def _backbone_arg(value):
    if value is None or isinstance(value, Backbone):
        return value
    try:
        return parse_backbone(value)
    except BackboneError as e:
        raise SweepError(str(e)) from None


def _default_towers(name):
    from .backbones import tower_info

    try:
        return tower_info(name)
    except ValueError as e:
        raise SweepError(str(e)) from None


def _check_support(trainer, on, spec, towers, notes):
    from .backbones import method_support, support_problem

    info = towers(on.name)
    support, _ = method_support(spec) if spec is not None else (None, None)
    note = None
    if info is None:
        note = f"{trainer} on {on}: the towers of {on.name} cannot be read before the run; not checked at planning"
    elif support is None:
        note = f"{trainer}'s method card declares no backbones; {on} ({info.family}) is not checked at planning"
    if note:
        if notes is not None and note not in notes:
            notes.append(note)
        return
    problem = support_problem(trainer, str(on), info, support)
    if problem:
        raise UnsupportedBackbone(problem)


def plan(methods, protocols, datasets=None, seeds=DEFAULT_SEEDS, *, few_shot_shots=None, backbones=None,
         skip_unsupported=False, notes=None, **kw):
    """Runs for every method x protocol, duplicates (same output dir) merged, in a stable order.

    ``datasets`` is routed to each protocol with :func:`route_datasets` (with several protocols, one
    that gets none of the datasets is left out; with none for any, it is an error);
    ``few_shot_shots`` are the few-shot shot counts (default 1 2 4 8 16); other keywords go to
    :func:`expand` (``shots`` there is the shot count of base2new and the transfer protocols). Two
    requests for the same output directory with different commands are an error.

    ``backbones``: ``NAME[@TAG]`` strings (``default``: each recipe's own backbone), every method runs on
    each; None: the recipes' own (today's plan). A (method, backbone) pair the method cannot run is an
    error listing every such pair (one line each), or, with ``skip_unsupported``, left out with those
    lines added to ``notes``.
    """
    if isinstance(protocols, str):
        protocols = [protocols]
    for p in protocols:
        _protocol(p)
    source = kw.get("source", XD_SOURCE)
    routed = {p: route_datasets(p, datasets, source, strict=len(protocols) == 1) for p in protocols}
    if datasets is not None and not any(routed.values()):
        route_datasets(protocols[0], datasets, source)  # raises, naming the rule
    axis = [_backbone_arg(b) for b in backbones] if backbones else [None]
    runs: Dict[str, Run] = {}
    refused = []
    for p in protocols:
        ds = routed[p]
        if ds is not None and not ds:
            continue
        kw_p = dict(kw)
        if _protocol(p).shot_list:
            kw_p["shots"] = few_shot_shots
        for on, m in itertools.product(axis, methods):
            try:
                got = expand(m, p, ds, seeds, on_backbone=on, notes=notes, **kw_p)
            except UnsupportedBackbone as e:
                if str(e) not in refused:
                    refused.append(str(e))
                continue
            for r in got:
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
    if refused and not skip_unsupported:
        raise SweepError("\n".join(refused + ["(--skip-unsupported plans the other runs and lists these as notes)"]))
    if notes is not None:
        notes += [f"refused: {r}" for r in refused]
    return list(runs.values())
