"""Configuration: yacs ``CfgNode`` with Dassl's default tree, checked merges, trainer extensions.

Typical use (what ``train.py`` does)::

    cfg = get_cfg_default()
    extend_cfg(cfg)                      # every imported trainer's TRAINER.<X> node
    merge_from_file(cfg, dataset_yaml)   # unknown keys -> error naming key, file, closest keys
    merge_from_file(cfg, method_yaml)
    merge_from_list(cfg, opts)
"""
import difflib
import hashlib
import os.path as osp

import yaml
from yacs.config import CfgNode as CN

from .defaults import _C
from vlprompt.errors import UserError

__all__ = [
    "CN",
    "get_cfg_default",
    "clean_cfg",
    "register_cfg_extension",
    "register_trainer_node",
    "add_cfg_node",
    "extend_cfg",
    "flatten_cfg",
    "merge_from_file",
    "merge_from_list",
    "config_digest",
    "ConfigError",
    "ConfigFileNotFoundError",
    "load_yaml",
]

_EXTENSIONS = []


class ConfigError(UserError, ValueError):
    """A config file or option that cannot be merged."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config file that does not exist (a ``ConfigError`` and a ``FileNotFoundError``)."""


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key_path, line):
        super().__init__(f"duplicate key {key_path}")
        self.key_path = key_path
        self.line = line


def _construct_mapping_no_duplicates(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # the base constructor reports unhashable keys
        if key in seen:
            parents = getattr(node, "_vlprompt_path", ())
            path = "".join(f"{k}." for k in parents)
            raise _DuplicateKeyError(f"{path}{key}", (seen[key] + 1, key_node.start_mark.line + 1))
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


def _annotate_paths(node, path=()):
    """Record each mapping node's key path (for the duplicate-key message)."""
    if isinstance(node, yaml.MappingNode):
        node._vlprompt_path = path
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            _annotate_paths(value_node, path + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _annotate_paths(child, path)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (PyYAML keeps the last one
    silently, which drops the whole earlier block)."""

    def construct_document(self, node):
        _annotate_paths(node)
        return super().construct_document(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_duplicates)


def load_yaml(path):
    """Read a YAML config file strictly: malformed YAML or a repeated key raises
    :class:`ConfigError` naming the file, the key and the lines."""
    with open(path, "r") as f:
        try:
            return yaml.load(f, Loader=_StrictLoader)
        except _DuplicateKeyError as e:
            first, second = e.line
            raise ConfigError(
                f"Duplicate key {e.key_path} in {path} (lines {first} and {second}): YAML would silently keep "
                "only the last one. Merge the two blocks into one."
            ) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"Malformed YAML in {path}{where}: {e}") from e


def get_cfg_default():
    """A clone of the default config tree."""
    return _C.clone()


def clean_cfg(cfg, trainer):
    """Remove every ``TRAINER.<X>`` node except ``NAME`` and the given trainer's node."""
    keys = list(cfg.TRAINER.keys())
    for key in keys:
        if key == "NAME" or key == trainer.upper():
            continue
        cfg.TRAINER.pop(key, None)


def register_cfg_extension(fn):
    """Register ``fn(cfg)`` to add a trainer's config node; usable as a decorator.

    Trainer modules call this at import so that ``extend_cfg`` knows their keys before any merge.
    """
    if fn not in _EXTENSIONS:
        _EXTENSIONS.append(fn)
    return fn


def add_cfg_node(parent, node, defaults):
    """Add ``parent.<node>`` (a config node) with ``defaults`` (a dict), keeping keys that already exist;
    returns the node. Safe to call any number of times."""
    from yacs.config import CfgNode as CN

    if node not in parent:
        setattr(parent, node, CN())
    for key, value in defaults.items():
        if key not in parent[node]:
            setattr(parent[node], key, value)
    return parent[node]


def add_trainer_cfg(cfg, node, defaults):
    """Add ``cfg.TRAINER.<node>`` with ``defaults`` (a dict), keeping keys that already exist.

    Safe to call any number of times; used by the config extensions that trainers register.
    """
    add_cfg_node(cfg.TRAINER, node, defaults)
    return cfg


def register_trainer_node(node, defaults, name=None):
    """Register the extension that adds ``cfg.TRAINER.<node>`` with ``defaults`` (a method's or a plug-in's
    config node, declared once in its file); ``name``: the extension function's name (for messages)."""
    defaults = dict(defaults)

    def extend(cfg, node=node, defaults=defaults):
        add_trainer_cfg(cfg, node, defaults)

    extend.__name__ = name or f"extend_cfg_{node.lower()}"
    return register_cfg_extension(extend)


def flatten_cfg(node, prefix=""):
    """A config (or its ``dict`` dump) as ``{"A.B.C": value}``; tuples become lists."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(flatten_cfg(v, f"{prefix}{k}."))
        return out
    if isinstance(node, tuple):
        node = list(node)
    return {prefix[:-1]: node}


def extend_cfg(cfg):
    """Apply every registered extension (idempotent per node: existing keys are kept)."""
    for fn in _EXTENSIONS:
        fn(cfg)
    return cfg


def _all_keys(node, prefix=""):
    out = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(v, CN):
            out.extend(_all_keys(v, full + "."))
    return out


def _unknown_key_error(cfg, full_key, source):
    valid = _all_keys(cfg)
    close = difflib.get_close_matches(full_key, valid, n=3, cutoff=0.5)
    if not close:  # fall back to keys sharing the last component
        last = full_key.split(".")[-1]
        close = difflib.get_close_matches(last, [v.split(".")[-1] for v in valid], n=3, cutoff=0.6)
        close = [v for v in valid if v.split(".")[-1] in close][:3]
    hint = f" Closest valid keys: {', '.join(close)}." if close else ""
    extra = ""
    if str(full_key).startswith("-"):  # argparse hands everything after the first KEY VALUE pair to opts
        hint = ""
        extra = (f" {full_key} is a flag: flags go before the KEY VALUE options (python train.py --root ... "
                 f"{full_key} ... KEY VALUE ...).")
    elif full_key.startswith("TRAINER."):
        nodes = [k for k in cfg.TRAINER.keys() if k != "NAME"]
        extra = f" Known trainer nodes: {nodes} (a trainer's node exists once its module is imported)."
    return ConfigError(f"Unknown config key {full_key} in {source}.{hint}{extra}")


def _check_keys(cfg, other, source, prefix=""):
    for k, v in other.items():
        full = f"{prefix}{k}"
        if k not in cfg:
            raise _unknown_key_error(_root_of(cfg), full, source)
        if isinstance(v, dict):
            if not isinstance(cfg[k], CN):
                raise ConfigError(f"Config key {full} in {source} is a value, not a section")
            _check_keys(cfg[k], v, source, full + ".")


def _root_of(cfg):
    return _ROOT_STACK[-1] if _ROOT_STACK else cfg


_ROOT_STACK = []


def merge_from_file(cfg, path):
    """Merge a YAML file with precise errors (missing file, bad YAML, unknown key, wrong type)."""
    if not path:
        return cfg
    if not osp.isfile(path):
        hint = ""
        if osp.isdir(path):
            hint = " (it is a folder)"
        raise ConfigFileNotFoundError(f'Config file not found: "{path}"{hint}. Check the path '
                                      "(configs/datasets/*.yaml, configs/trainers/<METHOD>/*.yaml).")
    loaded = load_yaml(path)
    if loaded is None:
        return cfg
    if not isinstance(loaded, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
    _ROOT_STACK.append(cfg)
    try:
        _check_keys(cfg, loaded, f'config file "{path}"')
    finally:
        _ROOT_STACK.pop()
    try:
        cfg.merge_from_other_cfg(CN(loaded))
    except (ValueError, KeyError, AssertionError) as e:
        raise ConfigError(f"Cannot merge {path}: {e}") from e
    return cfg


def merge_from_list(cfg, opts):
    """Merge ``KEY VALUE`` pairs with precise errors."""
    if not opts:
        return cfg
    if len(opts) % 2 != 0:
        raise ConfigError(
            f"Options must be KEY VALUE pairs, got an odd number ({len(opts)}): {list(opts)}. "
            "Trailing options must come after all --flags."
        )
    for full_key in opts[0::2]:
        node = cfg
        parts = full_key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, CN) or part not in node:
                raise _unknown_key_error(cfg, full_key, "the command-line options")
            node = node[part]
        if isinstance(node, CN):
            raise ConfigError(f"Command-line option {full_key} names a section, not a key")
    try:
        cfg.merge_from_list(list(opts))
    except (ValueError, KeyError, AssertionError) as e:
        raise ConfigError(f"Cannot merge command-line options: {e}") from e
    return cfg


def config_digest(cfg):
    """A short sha256 of the config that defines a run's *method and data*, not its location.

    OUTPUT_DIR, RESUME, DATASET.ROOT, SEED and VERBOSE are left out so that the seeds of one setting
    share a digest.
    """
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = ""
    c.RESUME = ""
    c.DATASET.ROOT = ""
    c.SEED = -1
    c.VERBOSE = True
    return hashlib.sha256(c.dump().encode()).hexdigest()[:16]
