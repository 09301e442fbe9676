#!/usr/bin/env python
"""Train or evaluate a prompt-learning method: CoOp's command line, on the vlprompt engine.

    python train.py --root DATA --seed 1 --trainer APLe \
        --dataset-config-file configs/datasets/oxford_pets.yaml \
        --config-file configs/trainers/APLe/vit_b16_c2_ep5_batch4_2ctx.yaml \
        --output-dir output/... DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base

With no arguments (or ``--demo``) it runs the embedded demo: APLe base-to-novel on the procedural
toy world with the shipped toy CLIP, offline, in a few minutes on a CPU.
"""
import argparse
import os.path as osp
import sys
import time

import torch

HERE = osp.dirname(osp.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from vlprompt.config import (  # noqa: E402
    extend_cfg,
    get_cfg_default,
    merge_from_file,
    merge_from_list,
)
from vlprompt.engine import RESULTS_FILE, build_trainer  # noqa: E402
from vlprompt.utils import collect_env_info, set_random_seed, setup_logger  # noqa: E402


def import_plugins():
    """Import the repo-root ``trainers`` and ``datasets`` packages so that they register."""
    import importlib

    for pkg in ("trainers", "datasets"):
        importlib.import_module(pkg)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=-1, help="only positive value enables a fixed seed")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("--demo", action="store_true",
                        help="run the embedded toy-world demo (APLe base-to-novel with the toy CLIP)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options using the command-line")
    return parser


def print_args(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    optkeys = list(args.__dict__.keys())
    optkeys.sort()
    for key in optkeys:
        print(f"{key}: {args.__dict__[key]}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def reset_cfg(cfg, args):
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed:  # CoOp: --seed 0 is ignored (SEED stays -1)
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def setup_cfg(args):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    # 1. dataset yaml, 2. method yaml, 3. CLI flags, 4. trailing opts
    if args.dataset_config_file:
        merge_from_file(cfg, args.dataset_config_file)
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    reset_cfg(cfg, args)
    merge_from_list(cfg, args.opts)
    cfg.freeze()
    return cfg


class RunError(RuntimeError):
    """A problem with the requested run that the user must resolve (printed without a traceback)."""


def check_output_dir(cfg, args):
    """Refuse to overwrite a finished run unless TRAIN.OVERWRITE is set."""
    results = osp.join(cfg.OUTPUT_DIR, RESULTS_FILE)
    if osp.exists(results) and not cfg.TRAIN.OVERWRITE:
        raise RunError(
            f"{cfg.OUTPUT_DIR} already holds a finished run ({results}). Nothing was changed. "
            "Use another --output-dir, or add TRAIN.OVERWRITE True to run again into it."
        )


def main(args):
    from vlprompt.engine.distributed import init_distributed_from_env, silence_non_main_stdout

    cfg = setup_cfg(args)
    rank, world = init_distributed_from_env()
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    check_output_dir(cfg, args)
    if rank == 0:
        setup_logger(cfg.OUTPUT_DIR)
    else:
        silence_non_main_stdout()
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    print_args(args, cfg)
    if rank == 0:
        with open(osp.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
    print("Collecting env info ...")
    print(f"** System info **\n{collect_env_info()}\n")

    started = time.time()
    trainer = build_trainer(cfg)
    trainer.run_info.update(
        config_file=args.config_file, dataset_config_file=args.dataset_config_file,
        model_dir=args.model_dir, load_epoch=args.load_epoch, started_at=started,
        phase="eval" if args.eval_only else "train",
    )
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return trainer
    if not args.no_train:
        trainer.train()
    return trainer


def cli(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not argv or args.demo:
        try:
            from vlprompt.toy.demo import main as demo_main
        except ImportError as e:
            parser.error(f"the embedded demo is unavailable ({e}); pass --trainer/--config-file etc.")
        return demo_main([a for a in argv if a != "--demo"])
    import_plugins()
    from vlprompt.clip import MissingWeightsError
    from vlprompt.config import ConfigError

    try:
        main(args)
    except (RunError, ConfigError, MissingWeightsError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
