"""The evaluation protocols without torch: the registered protocols (one file each,
:mod:`vlprompt.protocol.protocols`), dataset lists, the output tree, built and parsed by one description
(:mod:`vlprompt.protocol.tree`), the method card (:mod:`vlprompt.protocol.card`) and the backbone families
(:mod:`vlprompt.protocol.families`). Imports nothing beyond the standard library.

``describe_run_dir(output_dir)`` tells what a run folder is (protocol, role, dataset, trainer,
config, shots, seed, backbone); the engine records it in results.json, the result tables read it back, the
sweep builds the same folders with ``run_dir``.
"""
from .backbones import (
    BACKBONE_LEVEL,
    CLIP_NAMES,
    CONFIG_PREFIXES,
    DEFAULT_BACKBONE,
    Backbone,
    BackboneError,
    backbone_folder,
    backbone_from_folder,
    backbone_label,
    backbone_of_config_name,
    family_config_name,
    parse_backbone,
    same_backbone,
)
from .datasets import (
    B2N_SHOTS,
    DATASET_CLASS_TO_KEY,
    DATASETS_11,
    DEFAULT_SEEDS,
    DG_TARGETS,
    DISPLAY_NAMES,
    FEW_SHOT_SHOTS,
    KNOWN_DATASETS,
    PROTOCOLS,
    XD_SHOTS,
    XD_SOURCE,
    XD_TARGETS,
    dataset_key,
    default_datasets,
    target_protocol,
)
from .protocols import (
    PROTOCOL_REGISTRY,
    Protocol,
    Step,
    get_protocol,
    protocol_names,
    register_protocol,
    tree_protocols,
    unregister_protocol,
)
from .recipes import family_config, recipe_config
from .tree import (
    LAYOUTS,
    ROLES,
    RUN_FIELDS,
    RUN_NOTE,
    Layout,
    TreeError,
    config_folder,
    describe_run_dir,
    layout_for,
    layouts,
    option_slug,
    parse_run_dir,
    read_run_note,
    discard_lone_run_note,
    roles,
    run_dir,
    write_run_note,
)

__all__ = [
    "BACKBONE_LEVEL", "CLIP_NAMES", "CONFIG_PREFIXES", "DEFAULT_BACKBONE", "Backbone", "BackboneError",
    "backbone_folder", "backbone_from_folder", "backbone_label", "backbone_of_config_name", "family_config_name",
    "parse_backbone", "same_backbone",
    "B2N_SHOTS", "DATASET_CLASS_TO_KEY", "DATASETS_11", "DEFAULT_SEEDS", "DG_TARGETS", "DISPLAY_NAMES",
    "FEW_SHOT_SHOTS", "KNOWN_DATASETS", "PROTOCOLS", "XD_SHOTS", "XD_SOURCE", "XD_TARGETS", "dataset_key",
    "default_datasets", "target_protocol", "LAYOUTS", "ROLES", "Layout", "TreeError", "config_folder",
    "describe_run_dir", "family_config", "recipe_config", "layout_for", "option_slug", "parse_run_dir", "run_dir",
    "layouts", "roles", "PROTOCOL_REGISTRY", "Protocol", "Step", "get_protocol", "protocol_names", "register_protocol",
    "tree_protocols", "unregister_protocol", "RUN_FIELDS", "RUN_NOTE", "read_run_note", "write_run_note",
    "discard_lone_run_note",
]
