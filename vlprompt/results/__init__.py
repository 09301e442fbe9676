"""Result tables from an output tree: ``python -m vlprompt.results --help``.

:func:`collect` reads ``results.json`` files (and ``log.txt`` of runs that have none),
:func:`build_tables` aggregates them over seeds into the protocol tables, and
``vlprompt.results.render`` writes markdown, CSV and LaTeX. Published numbers live in
``published.json`` (data, with sources). Importing this package does not import torch; the row order
and the recipes come from the trainers' declarations, loaded when a table is built
(:mod:`vlprompt.results.methods`). Run folders are placed with :mod:`vlprompt.protocol`.
"""
from .aggregate import (Cell, Table, apply_families, build_tables, hm, load_published, mean_std, published_for,
                        seed_stat)
from .legacy import parse_lines, parse_log, read_run_log
from .methods import MethodTable, default_methods, load_methods
from .records import Record, collect, infer_from_path
from .render import runs_csv, to_csv, to_latex, to_markdown

__all__ = [
    "Cell",
    "MethodTable",
    "Record",
    "Table",
    "apply_families",
    "build_tables",
    "collect",
    "hm",
    "infer_from_path",
    "load_methods",
    "load_published",
    "default_methods",
    "mean_std",
    "published_for",
    "parse_lines",
    "parse_log",
    "read_run_log",
    "runs_csv",
    "seed_stat",
    "to_csv",
    "to_latex",
    "to_markdown",
]
