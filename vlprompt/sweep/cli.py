"""``python -m vlprompt.sweep``: plan and run (or submit) a sweep of train.py runs.

Examples (from the repository root)::

    python -m vlprompt.sweep --methods CoOp CoCoOp MaPLe APLe:my_cfg --protocol base2new \\
        --root /data --gpus 0,1,2,3
    python -m vlprompt.sweep --methods MaPLe --protocol cross_dataset domain_generalization \\
        --root /data --dry-run
    python -m vlprompt.sweep --methods APLe:my_cfg --protocol base2new --root /data \\
        --grid TRAINER.APLE.N_CTX=1,2,4,8 --gpus 0,1        # prompt-length ablation
    python -m vlprompt.sweep --methods MaPLe --protocol few_shot --root /data --slurm \\
        --partition gpu --time 04:00:00 --account myproj
    python -m vlprompt.sweep --methods CoOp --protocol base2new --root /data --datasets dtd --seeds 1 \\
        --opts TRAINER.COOP.CLASS_TOKEN_POSITION middle   # folder vit_b16_ctxv1_class_token_positionmiddle
    python -m vlprompt.sweep --methods CoOp MaPLe VPT --protocol base2new --root /data --dry-run \\
        --backbones ViT-B/16 ViT-B-16-SigLIP@webli EVA02-B-16@merged2b_s8b_b131k   # the backbone axis
"""
import argparse
import itertools
import os
import os.path as osp
import shlex
import sys
import time

from vlprompt.protocol import protocol_names

from .protocols import (DEFAULT_SEEDS, FEW_SHOT_SHOTS, XD_SOURCE, SweepError, parse_method, plan,
                        registry_specs, repo_root)
from .runner import Runner, cpu_slots, default_prefix, gpu_slots, log_path

__all__ = ["main", "build_parser", "grid_variants"]


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m vlprompt.sweep",
        description="Run every method x dataset x seed of one or more evaluation protocols as separate "
                    "train.py processes (resumable: runs with a results.json are skipped).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipes", action="store_true",
                   help="print every registered trainer's default config per protocol (its method card) and exit")
    p.add_argument("--methods", nargs="+", default=None, metavar="TRAINER[:CONFIG]",
                   help="trainers, optionally with a config name (configs/trainers/TRAINER/CONFIG.yaml, or "
                        "FOLDER/CONFIG for another folder); without a config the protocol's default that the "
                        "trainer declares (its method card) is used")
    p.add_argument("--protocol", "--protocols", nargs="+", default=None, dest="protocols", metavar="PROTOCOL",
                   help=f"one or more of: {', '.join(protocol_names())}")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                   help="dataset yaml names (default: the 11 for base2new/few_shot, the 10 non-ImageNet "
                        "datasets as cross_dataset targets, the 4 ImageNet variants for domain_generalization). "
                        "With several protocols each dataset goes to the protocols it belongs to")
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--shots", nargs="+", type=int, default=None,
                   help=f"few_shot shot counts (default: {' '.join(map(str, FEW_SHOT_SHOTS))}); base2new and "
                        "the transfer protocols always use 16")
    p.add_argument("--source", default=XD_SOURCE, help="source dataset of cross_dataset/domain_generalization")
    p.add_argument("--root", "--data-root", dest="data_root", default=None, help="data root (train.py --root)")
    p.add_argument("--output-root", default="output", help="root of the CoOp output tree (default: output)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="extra config options appended to every run; they name the config folder "
                        "(<cfg>_<key><value>..., e.g. OPTIM.MAX_EPOCH 2 -> <cfg>_max_epoch2) unless --tag is given")
    p.add_argument("--tag", default="", help="suffix added to the config folder name instead of the --opts part, "
                                             "e.g. _nctx4 (you promise that it names the options)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="sweep a config key over values; each value runs as its own config folder "
                        "<cfg>_<key><value> (e.g. --grid TRAINER.APLE.N_CTX=1,2,4 -> <cfg>_n_ctx1 ...)")
    p.add_argument("--only", choices=("train", "test"), default=None,
                   help="only the runs that need no trained model (train: training and zero-shot runs) or only "
                        "the tests of a trained model (test); a test whose training run is not complete is skipped")
    p.add_argument("--load-epoch", type=int, default=None,
                   help="epoch the test runs load (default: OPTIM.MAX_EPOCH of --opts, else of the config file)")
    p.add_argument("--backbone", default=None,
                   help="use the recipes' configs with their vit_b16 prefix replaced, e.g. rn50 (CoOp's ResNet "
                        "configs); an explicit TRAINER:CONFIG is not changed")
    p.add_argument("--backbones", nargs="+", default=None, metavar="NAME[@TAG]",
                   help="run every method on each backbone (MODEL.BACKBONE.NAME, @ the PRETRAINED_TAG; 'default': "
                        "each recipe's own): the method's config for that backbone when it ships one (e.g. "
                        "siglip_b16_ctxv1 beside vit_b16_ctxv1), else the recipe's config with the backbone set on "
                        "the command line, in a bb-NAME@TAG folder after <cfg>. A method that cannot run on a "
                        "backbone stops the plan with one line per pair")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="with --backbones: leave out the (method, backbone) pairs the method cannot run and say so "
                        "on stderr, instead of stopping")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpus", default=None, help="GPU ids, one job per GPU at a time (e.g. 0,1,2,3)")
    g.add_argument("--jobs", type=int, default=None,
                   help="number of parallel jobs without GPU pinning (CPU-only machines); default 1")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    p.add_argument("--print-commands", action="store_true",
                   help="print one train.py command per run still to do (complete runs: a note on stderr), run "
                        "nothing; paths under a relative --output-root stay relative (the bash scripts' DRY_RUN=1)")
    p.add_argument("--command", default=None,
                   help="command that replaces 'python train.py' (default: the current Python interpreter "
                        "and train.py at the repository root); the run's arguments are appended")
    p.add_argument("--repo-root", default=None, help="repository root (configs/ and train.py; default: this checkout)")
    p.add_argument("--log-dir", default=None, help="per-job logs (default: <output-root>/sweep_logs)")
    p.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    s = p.add_argument_group("Slurm (--slurm writes job-array scripts and submits them when sbatch exists)")
    s.add_argument("--slurm", action="store_true")
    s.add_argument("--slurm-dir", default=None, help="where the scripts go (default: <output-root>/slurm/<time>)")
    s.add_argument("--partition", default=None)
    s.add_argument("--time", default="04:00:00", help="time limit per task (default 04:00:00)")
    s.add_argument("--gpus-per-task", type=int, default=1)
    s.add_argument("--account", default=None)
    s.add_argument("--cpus-per-task", type=int, default=8)
    s.add_argument("--mem", default=None)
    s.add_argument("--max-parallel", type=int, default=None, help="array throttle (%%N)")
    s.add_argument("--job-name", default="vlprompt")
    s.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                   help="shell line run before each task (e.g. 'source venv/bin/activate'); repeatable")
    s.add_argument("--slurm-extra", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH option, e.g. '--qos=normal'; repeatable")
    s.add_argument("--slurm-dependency", choices=("afterany", "afterok"), default="afterany",
                   help="how test arrays wait for training arrays (default afterany: each test checks its own "
                        "training run; afterok: any training failure holds back all tests)")
    s.add_argument("--array-max", type=int, default=1000, help="largest array (Slurm's MaxArraySize - 1)")
    return p


def grid_variants(grid, tag="", opts=()):
    """[(tag, opts, slug_opts)] for the cartesian product of --grid KEY=V1,V2 specs.

    ``opts`` are the options of every run; ``slug_opts`` the options that name the config folder
    (:func:`vlprompt.protocol.option_slug`): every option without a tag, the grid's options only with
    one (the tag names the fixed options).
    """
    axes = []
    for spec in grid:
        key, sep, values = spec.partition("=")
        vals = [v for v in values.split(",") if v != ""]
        if not sep or not key or not vals:
            raise SweepError(f"--grid needs KEY=V1,V2,...; got '{spec}'")
        axes.append([(key, v) for v in vals])
    out = []
    for combo in itertools.product(*axes) if axes else [()]:
        grid_opts = [x for kv in combo for x in kv]
        o = list(opts) + grid_opts
        out.append((tag, o, grid_opts if tag else o))
    return out


def check_opts(variants):
    """Merge each variant's ``--opts``/``--grid`` KEY VALUE pairs into the default config (every
    trainer's node included, as train.py builds it) so that an unknown key or a value of the wrong type
    fails at planning time with one ``Error:`` naming the key, not later in every job (ConfigError)."""
    variants = [list(v) for v in variants if v]
    if not variants:
        return
    from vlprompt.config import extend_cfg, get_cfg_default, merge_from_list

    if any(str(k).startswith(("TRAINER.", "TTA.")) for v in variants for k in v[0::2]):
        from vlprompt.engine.methods import load_plugins  # the trainers' and procedures' config nodes (torch)

        load_plugins()
    for v in variants:
        merge_from_list(extend_cfg(get_cfg_default()), v)


def _print_plan(runs, data_root, prefix, log_dir, output_root, out):
    n_done = sum(r.is_complete() for r in runs)
    print(f"# plan: {len(runs)} runs, {n_done} already complete, {len(runs) - n_done} to run", file=out)
    for i, r in enumerate(runs, 1):
        state = "complete" if r.is_complete() else "todo"
        dep = f"  (after {osp.relpath(r.depends_on, output_root)})" if r.depends_on else ""
        print(f"[{i}] {state:8s} {r.describe()}{dep}", file=out)
        print(f"    {shlex.join(r.command(data_root, prefix))}", file=out)
        if log_dir:
            print(f"    log: {log_path(r, log_dir, output_root)}", file=out)


def _print_commands(runs, data_root, prefix, output_root, shown_root, out, err):
    """The bash scripts' dry run: one command per run to do, in plan order."""

    def show(a):
        if shown_root is not None and (a == output_root or a.startswith(output_root + os.sep)):
            return osp.join(shown_root, osp.relpath(a, output_root))
        return a

    for r in runs:
        if r.is_complete():
            print(f"Results exist at {show(r.output_dir)} (skip this job)", file=err)
            continue
        print(shlex.join(show(a) for a in r.command(data_root, prefix)), file=out)


def print_recipes(specs, out):
    """The method table as the sweep uses it: one line per trainer and protocol."""
    for name, spec in sorted(specs.items(), key=lambda kv: (kv[1].order, kv[0])):
        recipes = spec.all_recipes()
        if not recipes:
            continue
        flag = "  (eval only)" if spec.eval_only else ""
        print(f"{name}{flag}", file=out)
        for protocol, rec in recipes.items():
            extra = "".join(f"; {k} " + ", ".join(f"{a}: {b}" for a, b in rec[k].items())
                            for k in ("per_dataset", "per_shots") if rec.get(k))
            print(f"  {protocol:22s} {rec['config']}{extra}", file=out)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.recipes:
        try:
            print_recipes(registry_specs(), sys.stdout)
        except SweepError as e:
            print(f"Error: {e}", file=sys.stderr)
            return 2
        return 0
    missing = [f for f, v in (("--methods", args.methods), ("--protocol", args.protocols), ("--root", args.data_root))
               if not v]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    repo = osp.abspath(args.repo_root or repo_root())
    prefix = shlex.split(args.command) if args.command else default_prefix()
    output_root = osp.abspath(args.output_root)
    data_root = osp.abspath(args.data_root)
    try:
        methods = [parse_method(m) for m in args.methods]
        runs, seen, notes = [], set(), []
        variants = grid_variants(args.grid, args.tag, args.opts)
        check_opts([opts for _, opts, _ in variants])
        for tag, opts, slug_opts in variants:
            for r in plan(methods, args.protocols, args.datasets, args.seeds, output_root=output_root,
                          root=repo, few_shot_shots=args.shots or None, opts=opts, tag=tag, slug_opts=slug_opts,
                          source=args.source, backbone=args.backbone, load_epoch=args.load_epoch,
                          backbones=args.backbones, skip_unsupported=args.skip_unsupported, notes=notes):
                if r.key not in seen:
                    seen.add(r.key)
                    runs.append(r)
        if args.only == "train":
            runs = [r for r in runs if r.depends_on is None]
        elif args.only == "test":
            runs = [r for r in runs if r.depends_on is not None]
        slots = gpu_slots(args.gpus) if args.gpus else cpu_slots(args.jobs or 1)
    except (SweepError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if args.print_commands:
        shown = None if osp.isabs(args.output_root) else osp.normpath(args.output_root)
        _print_commands(runs, data_root, prefix, output_root, shown, sys.stdout, sys.stderr)
        return 0
    if not args.command and not osp.isfile(osp.join(repo, "train.py")) and not args.dry_run:
        print(f"Error: {repo}/train.py not found (use --repo-root or --command)", file=sys.stderr)
        return 2
    log_dir = osp.abspath(args.log_dir) if args.log_dir else osp.join(output_root, "sweep_logs")

    if args.slurm:
        from .slurm import SlurmOptions, submit, write_slurm

        sdir = args.slurm_dir or osp.join(output_root, "slurm", time.strftime("%Y%m%d-%H%M%S"))
        try:
            sopts = SlurmOptions(partition=args.partition, time=args.time, gpus_per_task=args.gpus_per_task,
                                 account=args.account, cpus_per_task=args.cpus_per_task, mem=args.mem,
                                 max_parallel=args.max_parallel, job_name=args.job_name, setup=args.slurm_setup,
                                 extra=args.slurm_extra, dependency=args.slurm_dependency,
                                 array_max=args.array_max)
        except ValueError as e:
            print(f"Error: {e}", file=sys.stderr)
            return 2
        todo = [r for r in runs if not r.is_complete()]
        if not todo:
            print(f"all {len(runs)} runs are complete; nothing to submit")
            return 0
        paths = write_slurm(runs, data_root, prefix, repo, sdir, sopts)
        try:
            for r in todo:
                r.write_note()
        except OSError as e:
            print(f"Error: cannot write the run note into {r.output_dir}: {e}", file=sys.stderr)
            return 2
        print(f"# {len(todo)} runs to do ({len(runs) - len(todo)} complete); scripts in {sdir}")
        if args.dry_run:
            submitted, why = False, "--dry-run"
        else:
            submitted, why = submit(paths[0])
        if submitted:
            print(why, end="")
            return 0
        for pth in paths:
            print(f"\n##### {pth}")
            with open(pth) as f:
                print(f.read(), end="")
        print(f"\n# not submitted ({why}); submit with: bash {paths[0]}")
        return 0

    if args.dry_run:
        _print_plan(runs, data_root, prefix, log_dir, output_root, sys.stdout)
        return 0
    try:
        for r in runs:
            if not r.is_complete():
                r.write_note()  # the engine records the run's protocol and role from it
    except OSError as e:
        print(f"Error: cannot write the run note into {r.output_dir}: {e}", file=sys.stderr)
        return 2
    runner = Runner(runs, data_root, slots, output_root=output_root, log_dir=log_dir, prefix=prefix, cwd=repo,
                    poll=args.poll)
    return runner.run()
