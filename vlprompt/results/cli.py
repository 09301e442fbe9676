"""``python -m vlprompt.results``: tables (markdown, CSV, LaTeX) and plots from an output tree.

Examples::

    python -m vlprompt.results output                          # markdown of every protocol found
    python -m vlprompt.results output --protocol base2new --with-published
    python -m vlprompt.results output --out report/ --plots report/figures
"""
import argparse
import os
import os.path as osp
import sys

from ..protocol import DEFAULT_SEEDS, XD_SOURCE, protocol_names
from .aggregate import build_tables
from .methods import default_methods
from .records import collect
from .render import FORMATS, runs_csv, to_csv, to_latex, to_markdown

__all__ = ["main", "build_parser"]


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m vlprompt.results",
        description="Aggregate results.json files (and log.txt of old runs) over seeds into the papers' tables.",
    )
    p.add_argument("roots", nargs="*", default=["output"], help="output trees to read (default: output)")
    names = protocol_names()  # the registered protocols
    p.add_argument("--protocol", nargs="+", default=None, choices=names, metavar="PROTOCOL",
                   help=f"only these protocols ({', '.join(names)}); default: every protocol found")
    p.add_argument("--format", nargs="+", default=None, metavar="FMT",
                   help="md, csv and/or latex (default: md on stdout; md csv latex with --out)")
    p.add_argument("--out", default=None, help="write <table>.md/.csv/.tex and runs.csv into this folder")
    p.add_argument("--with-published", nargs="?", const="matched", default=None, choices=("matched", "all"),
                   help="show published numbers beside ours: of the methods we ran (default) or all stored ones")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help=f"expected seeds (default {' '.join(map(str, DEFAULT_SEEDS))}); when given, other seeds "
                        "are left out")
    p.add_argument("--metric", default="accuracy", help="metric of results.json to tabulate (accuracy, "
                                                        "error_rate, macro_f1)")
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--no-std", action="store_true", help="means only")
    p.add_argument("--source", default=XD_SOURCE, help="source dataset of the transfer protocols")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write the figures (PNG and PDF) here")
    p.add_argument("--ablation-trainer", default="APLe", help="trainer of the prompt-length plot (default APLe)")
    p.add_argument("--cost", action="store_true",
                   help="also the cost table: train/eval time, images/s, peak memory, parameters per run "
                        "(the cost entry of results.json)")
    p.add_argument("--ablation-key", default=None,
                   help="config key holding N (default TRAINER.<TRAINER>.N_CTX)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    formats = []
    for f in args.format or (["md", "csv", "latex"] if args.out else ["md"]):
        if f not in FORMATS:
            print(f"Error: unknown format '{f}'; valid: md, csv, latex", file=sys.stderr)
            return 2
        formats.append(FORMATS[f])
    try:
        records, problems = collect(args.roots, source=args.source)
    except FileNotFoundError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    for path, why in problems:
        print(f"warning: {path}: {why}", file=sys.stderr)
    if args.seeds:
        records = [r for r in records if r.seed in set(args.seeds)]
    inferred = [r for r in records if r.inferred]
    if inferred:
        print(f"note: {len(inferred)} run(s) outside the CoOp output tree were placed from their results.json "
              f"fields (subsample/phase/model_dir)", file=sys.stderr)
    if not records:
        print(f"Error: no results found under {' '.join(args.roots)} (looked for results.json and log.txt in "
              f"the CoOp output tree)", file=sys.stderr)
        return 1
    seeds = args.seeds or list(DEFAULT_SEEDS)
    methods = default_methods()  # trainer order and recipes, from the trainers' declarations
    if methods.note:
        print(f"note: {methods.note}", file=sys.stderr)
    tables = build_tables(records, args.protocol, seeds, args.metric, args.with_published, args.source, methods)
    if not tables:
        print(f"{'note' if args.cost else 'Error'}: no runs of protocol(s) "
              f"{' '.join(args.protocol or protocol_names())} found", file=sys.stderr)
    if args.cost:  # per run, whatever its protocol (a run outside the tree too)
        from .cost import cost_table

        table = cost_table(records)
        if table is None:
            print("note: --cost: no run records a cost (results.json files written before it was recorded)",
                  file=sys.stderr)
        else:
            tables.append(table)
    if not tables:
        return 1
    std = not args.no_std
    render = {
        "md": lambda t: to_markdown(t, args.digits, std),
        "csv": lambda t: to_csv(t),
        "tex": lambda t: to_latex(t, args.digits, std),
    }
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        written = []
        for t in tables:
            for ext in formats:
                path = osp.join(args.out, f"{t.name}.{ext}")
                with open(path, "w") as f:
                    f.write(render[ext](t))
                written.append(path)
        path = osp.join(args.out, "runs.csv")
        with open(path, "w") as f:
            f.write(runs_csv(records))
        written.append(path)
        print("\n".join(written))
    else:
        for t in tables:
            for ext in formats:
                print(render[ext](t))
    if args.plots:
        from .plots import make_plots

        for p in make_plots(records, args.plots, args.metric, args.ablation_trainer, args.ablation_key,
                            protocols=args.protocol, seeds=seeds, published=args.with_published):
            print(p)
    return 0
