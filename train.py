#!/usr/bin/env python
"""Train or evaluate a prompt-learning method: CoOp's command line, on the vlprompt engine.

    python train.py --root DATA --seed 1 --trainer APLe \
        --dataset-config-file configs/datasets/oxford_pets.yaml \
        --config-file configs/trainers/APLe/vit_b16_c2_ep5_batch4_2ctx.yaml \
        --output-dir output/... DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base

With no arguments (or ``--demo``) it runs the embedded demo: APLe base-to-novel on the procedural
toy world with the shipped toy CLIP, offline, in a few minutes on a CPU.

A mistake in the inputs (config file, option, trainer or dataset name, --root, a missing dataset
folder or image, an unreadable image or checkpoint, an output folder in use or holding a finished
run) ends in one ``Error: ...`` line on stderr and exit status 2, without a traceback; a run refused
before it starts leaves nothing in the output folder. A mistake is whatever the library raises as
:class:`vlprompt.errors.UserError`; any other exception is a bug and keeps its traceback. A non-finite loss stops training with one
``Error:`` line and exit status 1 (the log and the last checkpoint are kept). ``--debug`` (or
``VLPROMPT_DEBUG=1``) shows the traceback instead.
"""
import argparse
import json
import os
import os.path as osp
import signal
import sys
import threading
import time

if __name__ == "__main__" and (len(sys.argv) == 1 or "--demo" in sys.argv[1:]):
    # the demo's toy dataset renders in a torch-free child process while this one imports torch and the
    # engine (about 5 s of rendering beside 7 s of imports on 2 cores), instead of after them
    from vlprompt.toy.demo import start_background_build

    start_background_build([a for a in sys.argv[1:] if a != "--demo"])

import torch  # noqa: E402

HERE = osp.dirname(osp.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from vlprompt.config import (  # noqa: E402
    config_digest,
    extend_cfg,
    flatten_cfg,
    get_cfg_default,
    merge_from_file,
    merge_from_list,
)
from vlprompt.engine import RESULTS_FILE, build_trainer  # noqa: E402
from vlprompt.errors import error_line  # noqa: E402
from vlprompt.utils import (  # noqa: E402
    OutputDirLock,
    UserError,
    atomic_write,
    clean_stale_tmp,
    collect_env_info,
    set_random_seed,
    setup_logger,
)
from vlprompt.utils.logger import Logger  # noqa: E402


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
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: VLPROMPT_DEBUG=1)")
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
    # the pretrained tag's preprocessing (mean, std, interpolation, resize mode) unless the user set it
    from vlprompt.clip.backbone import apply_backbone_preprocess, input_keys_set_in

    flags = ["MODEL.BACKBONE.NAME", args.backbone] if args.backbone else []
    if args.transforms:
        flags += ["INPUT.TRANSFORMS", args.transforms]
    import contextlib
    import io

    buf = io.StringIO()  # printed into the run's log with the config dump (not before the inputs are checked)
    with contextlib.redirect_stdout(buf):
        apply_backbone_preprocess(cfg, input_keys_set_in([args.dataset_config_file, args.config_file, flags,
                                                          list(args.opts or [])]))
    PREPROCESS_LOG[:] = buf.getvalue().splitlines()
    cfg.freeze()
    return cfg


#: what apply_backbone_preprocess said about the preprocessing in use (printed after the config dump)
PREPROCESS_LOG = []


class RunError(UserError, RuntimeError):
    """A problem with the requested run that the user must resolve (printed without a traceback)."""


# How long train.py holds its output back while it validates the inputs (see main()).
LOG_PATIENCE_S = 10.0

# Keys that do not change what a run computes (config_digest leaves them out too).
_DIGEST_FREE_KEYS = {"OUTPUT_DIR", "RESUME", "DATASET.ROOT", "SEED", "VERBOSE"}


def _config_differences(old, new, limit=8):
    """``KEY: old -> new`` for the keys that differ between two config dicts."""
    a = flatten_cfg(old)
    b = flatten_cfg(json.loads(json.dumps(new, default=str)))
    keys = sorted(k for k in set(a) | set(b) if k not in _DIGEST_FREE_KEYS and a.get(k, "<absent>") != b.get(k, "<absent>"))
    shown = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        shown.append(f"... ({len(keys) - limit} more)")
    return shown


def _cfg_dict(cfg):
    from yacs.config import CfgNode

    if isinstance(cfg, CfgNode):
        return {k: _cfg_dict(v) for k, v in cfg.items()}
    return cfg


def check_output_dir(cfg, args=None):
    """Refuse to write into a folder holding a finished run unless TRAIN.OVERWRITE is set.

    A finished run with another effective config (``config_digest`` in its results.json) is named
    with both digests and the differing keys; one with the same config gets "already finished".
    """
    results = osp.join(cfg.OUTPUT_DIR, RESULTS_FILE)
    if not osp.exists(results) or cfg.TRAIN.OVERWRITE:
        return
    try:
        with open(results) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise RunError(
            f"{cfg.OUTPUT_DIR} holds an unreadable {RESULTS_FILE} ({e}). Nothing was changed. Use another "
            "--output-dir, or add TRAIN.OVERWRITE True to run again into it."
        ) from None
    old_digest = record.get("config_digest") if isinstance(record, dict) else None
    new_digest = config_digest(cfg)
    if old_digest and old_digest != new_digest:
        diffs = _config_differences(record.get("config") or {}, _cfg_dict(cfg))
        detail = ("; differing keys: " + "; ".join(diffs)) if diffs else ""
        raise RunError(
            f"{cfg.OUTPUT_DIR} holds a finished run with another config (its {RESULTS_FILE} has config digest "
            f"{old_digest}, this run's is {new_digest}{detail}). Nothing was changed. Use another --output-dir, "
            "or add TRAIN.OVERWRITE True to replace that run."
        )
    raise RunError(
        f"{cfg.OUTPUT_DIR} already holds a finished run ({results}). Nothing was changed. "
        "Use another --output-dir, or add TRAIN.OVERWRITE True to run again into it."
    )


def validate_inputs(cfg, args):
    """Cheap checks of the inputs before anything is written or printed at length."""
    from vlprompt.data.datasets import DATASET_REGISTRY
    from vlprompt.engine import TRAINER_REGISTRY
    from vlprompt.utils import check_availability

    trainers = TRAINER_REGISTRY.registered_names()
    if not cfg.TRAINER.NAME:
        raise RunError(f"No trainer given: pass --trainer NAME (registered trainers: {sorted(trainers)})")
    TRAINER_REGISTRY.resolve(cfg.TRAINER.NAME)  # Host+Plugin spellings are composed here (or refused)
    check_availability(cfg.TRAINER.NAME, TRAINER_REGISTRY.registered_names())
    datasets = DATASET_REGISTRY.registered_names()
    if not cfg.DATASET.NAME:
        raise RunError("No dataset given (DATASET.NAME is empty): pass --dataset-config-file "
                       f"configs/datasets/<name>.yaml (registered datasets: {sorted(datasets)})")
    check_availability(cfg.DATASET.NAME, datasets)
    if not cfg.DATASET.ROOT:
        raise RunError("No data root given (--root / DATASET.ROOT is empty): pass --root DATA, the folder "
                       "that holds the dataset folders (see docs/DATASETS.md)")
    if not cfg.OUTPUT_DIR:
        raise RunError("No output folder given: pass --output-dir DIR")
    if args.resume and not osp.isdir(args.resume):
        raise RunError(f'--resume "{args.resume}" does not exist or is not a folder (it names the output folder '
                       "of the run to resume; a run also resumes from its own --output-dir)")
    if args.eval_only and args.model_dir and not osp.isdir(args.model_dir):
        raise RunError(f'--model-dir "{args.model_dir}" does not exist or is not a folder')
    from vlprompt.tta import tta_enabled

    if tta_enabled(cfg):
        from vlprompt.tta.runner import check_tta_cfg

        check_tta_cfg(cfg)
        if not args.eval_only:
            raise RunError(f"TTA.METHOD {cfg.TTA.METHOD} adapts a finished model at test time: add --eval-only "
                           "(and --model-dir RUN for a trained prompt learner)")


def check_run_sanity(cfg, args):
    """Refuse a run that cannot mean what its result would claim (vlprompt/config/run_checks.py)."""
    from vlprompt.config.run_checks import check_run
    from vlprompt.engine import TRAINER_REGISTRY

    cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    check_run(cfg, training=not (args.eval_only or args.no_train),
              trainer_trains=not getattr(cls, "EVAL_ONLY", False),
              lr_schedule_unit=getattr(cls, "LR_SCHEDULE_UNIT", "epoch"))


def _first_missing_ancestor(path):
    """The topmost folder of ``path`` that does not exist yet (None when ``path`` exists)."""
    path = osp.abspath(path)
    top = None
    while not osp.exists(path):
        top = path
        parent = osp.dirname(path)
        if parent == path:
            break
        path = parent
    return top


def _remove_created_dirs(path, top):
    """Remove ``path`` and its parents up to ``top`` where they are empty (a refused run's traces)."""
    if top is None:
        return
    path = osp.abspath(path)
    while True:
        try:
            os.rmdir(path)
        except OSError:
            return
        if path == top:
            return
        path = osp.dirname(path)


def main(args):
    from vlprompt.engine.distributed import init_distributed_from_env, silence_non_main_stdout

    cfg = setup_cfg(args)
    rank, world = init_distributed_from_env()
    validate_inputs(cfg, args)
    check_run_sanity(cfg, args)
    created_top = _first_missing_ancestor(cfg.OUTPUT_DIR)
    lock = OutputDirLock(cfg.OUTPUT_DIR, command=" ".join(["train.py"] + sys.argv[1:])[:300]) if rank == 0 else None
    started_ok = False
    refused_log = None
    try:
        if lock is not None:
            lock.acquire(quiet=True)
        check_output_dir(cfg, args)  # with the lock held, so no run can finish in between
        resume = None
        if not args.eval_only and not args.no_train:
            from vlprompt.engine.resume_guard import check_resume

            resume = check_resume(cfg)  # a resume with another config is refused before anything changes
        if lock is not None:
            clean_stale_tmp(cfg.OUTPUT_DIR)
            # hold the argument/config dump (console and log.txt) until the inputs are validated, or for
            # at most LOG_PATIENCE_S seconds (a large dataset's split takes a while to check)
            setup_logger(cfg.OUTPUT_DIR, defer=True, patience=LOG_PATIENCE_S)
            if lock.took_over:
                print(lock.takeover_message)
        else:
            silence_non_main_stdout()
        if cfg.SEED >= 0:
            print(f"Setting fixed seed: {cfg.SEED}")
            set_random_seed(cfg.SEED)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            torch.backends.cudnn.benchmark = True
        print_args(args, cfg)
        for line in PREPROCESS_LOG:
            print(line)
        if resume is not None:
            from vlprompt.engine.resume_guard import describe

            for line in describe(resume):
                print(line)

        started = time.time()
        trainer = build_trainer(cfg)  # reads the dataset and builds the model: the inputs are now validated
        if args.eval_only:  # the checkpoint is an input too: a wrong --model-dir leaves nothing behind
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
        started_ok = True
        if isinstance(sys.stdout, Logger):
            sys.stdout.commit()
        if rank == 0:
            with atomic_write(osp.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
                f.write(cfg.dump())
        print("Collecting env info ...")
        print(f"** System info **\n{collect_env_info()}\n")
        trainer.run_info.update(
            config_file=args.config_file, dataset_config_file=args.dataset_config_file,
            model_dir=args.model_dir, load_epoch=args.load_epoch, started_at=started,
            phase="eval" if args.eval_only else "train",
        )
        if resume is not None:
            trainer.run_info["resume"] = resume.record()
        if args.eval_only:
            from vlprompt.tta import tta_enabled

            if tta_enabled(cfg):  # a test-time procedure wraps the finished model (vlprompt/tta/runner.py)
                from vlprompt.tta.runner import run_test_time

                run_test_time(trainer)
            else:
                trainer.test()
            return trainer
        if not args.no_train:
            trainer.train()
        return trainer
    except BaseException as e:
        logger = sys.stdout if isinstance(sys.stdout, Logger) else None
        if not started_ok and logger is not None and logger.deferred:
            if _user_error_code(e) is not None:
                logger.discard()  # refused: nothing shown, nothing written
            else:
                logger.commit()  # a bug: keep what was printed, for the report
        elif not started_ok and logger is not None and _user_error_code(e) is not None:
            refused_log = logger.fpath  # committed by LOG_PATIENCE_S: this run's own (new) file goes too
        raise
    finally:
        if lock is not None:
            lock.release()
            if not started_ok:
                if refused_log:
                    try:
                        os.remove(refused_log)
                    except OSError:
                        pass
                _remove_created_dirs(cfg.OUTPUT_DIR, created_top)


def _user_error_code(e):
    """Exit status for an exception that is the user's mistake (2) or a stopped run (1); None for a bug.

    By construction: the library raises :class:`vlprompt.errors.UserError` (or a subclass) for every
    mistake in the inputs; any other exception is a bug and keeps its traceback.
    """
    if isinstance(e, UserError):
        return 2
    if isinstance(e, FloatingPointError):
        return 1
    return None


def _error_message(e):
    """The ``Error:`` line of ``e``; for an error re-raised from a DataLoader worker, the original one's."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
        head, sep, tail = last.partition(": ")
        return "Error: " + (tail if sep and "Error" in head.split(".")[-1] else last).strip()
    return error_line(e)


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that the run unwinds (lock released, log closed)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _debug_requested(argv):
    return "--debug" in argv or os.environ.get("VLPROMPT_DEBUG", "") not in ("", "0")


def cli(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or "--demo" in argv:  # the demo's own options (--trainer, --shots, --quiet, ...) follow
        try:
            from vlprompt.toy.demo import main as demo_main
        except ImportError as e:
            parser.error(f"the embedded demo is unavailable ({e}); pass --trainer/--config-file etc.")
        return demo_main([a for a in argv if a != "--demo"], cli=cli)
    args = parser.parse_args(argv)
    debug = args.debug or _debug_requested([])
    try:
        import_plugins()
        main(args)
    except Exception as e:
        code = _user_error_code(e)
        if code is None or debug:
            raise
        line = _error_message(e)
        if code == 1:
            line += " (exit status 1: the run stopped; its log.txt and last checkpoint are kept)"
        logger = sys.stdout if isinstance(sys.stdout, Logger) else None
        if logger is not None and logger.file is not None and not logger.file.closed:
            logger.file.write(line + "\n")  # the log says why the run stopped
        print(line, file=sys.stderr)
        return code
    return 0


def entry_point(argv=None):
    """``python train.py``: :func:`cli`, plus one line (no traceback) when interrupted.

    Ctrl-C (SIGINT) exits 130 and SIGTERM exits 143, after the run unwinds (the output-folder lock is
    released, the log is closed; the last checkpoint stays for the resume). In-process callers of
    :func:`cli` get the ``KeyboardInterrupt`` itself.
    """
    argv = sys.argv[1:] if argv is None else argv
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return cli(argv)
    except (KeyboardInterrupt, Terminated) as e:
        if _debug_requested(argv):
            raise
        name, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("Ctrl-C / SIGINT", 130)
        out = "the output folder"
        if "--output-dir" in argv[:-1]:
            out = argv[argv.index("--output-dir") + 1]
        line = (f"Interrupted ({name}). The checkpoints and log in {out} are kept: run the same command "
                "again to resume.")
        logger = sys.stdout if isinstance(sys.stdout, Logger) else None
        if logger is not None and logger.file is not None and not logger.file.closed:
            logger.file.write(line + "\n")
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(entry_point())
