"""The cost table (``python -m vlprompt.results ... --cost``): what each method's runs cost.

One row per method, config, protocol/role, dataset, shots and backbone; each column is the mean (± std
over the seeds found) of a field of results.json's ``cost`` entry (docs/ENGINE.md, "results.json"):
training and evaluation wall time, training and evaluation images/s, peak CPU RSS, CUDA max allocated,
trainable and total parameters. Runs read from ``log.txt`` (no results.json) and results.json files
written before ``cost`` existed have no cost and are left out (counted in a note).
"""
import json
import math
from collections import OrderedDict

from .aggregate import Cell, Table

__all__ = ["COST_COLUMNS", "cost_table"]

#: (column title, field of results.json's ``cost``)
COST_COLUMNS = (
    ("train s", "train_time_s"),
    ("eval s", "eval_time_s"),
    ("train img/s", "train_images_per_s"),
    ("eval img/s", "eval_images_per_s"),
    ("peak RSS MiB", "peak_rss_mib"),
    ("CUDA MiB", "cuda_max_allocated_mib"),
    ("trainable params", "trainable_params"),
    ("total params", "total_params"),
)


def _cost_of(record):
    if record.origin != "json":
        return None
    try:
        with open(record.path) as f:
            cost = json.load(f).get("cost")
    except (OSError, ValueError):
        return None
    return cost if isinstance(cost, dict) else None


def _cell(values, field):
    values = [float(v) for v in values if isinstance(v, (int, float))]
    if not values:
        return Cell(None)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return Cell(mean, std, n=len(values), digits=0 if field.endswith("_params") else None)  # counts as integers


def cost_table(records):
    """A :class:`~vlprompt.results.aggregate.Table` named ``cost`` (None when no run records a cost)."""
    groups = OrderedDict()
    without = 0
    for r in sorted(records, key=lambda r: (r.trainer, r.group_config, r.protocol, r.role, r.dataset,
                                            r.shots if r.shots is not None else -1, r.backbone or "")):
        cost = _cost_of(r)
        if cost is None:
            without += 1
            continue
        key = (r.trainer, r.group_config, f"{r.protocol}/{r.role}", r.dataset,
               "" if r.shots is None else str(r.shots), r.backbone or "")
        groups.setdefault(key, []).append(cost)
    if not groups:
        return None
    columns = ["Method", "Config", "Run", "Dataset", "Shots", "Backbone", "Seeds"] + [c for c, _ in COST_COLUMNS]
    table = Table(name="cost", title="Cost per run (mean ± std over seeds)", columns=columns,
                  numeric=[False] * 7 + [True] * len(COST_COLUMNS))
    for key, costs in groups.items():
        table.add(list(key) + [str(len(costs))] + [_cell([c.get(f) for c in costs], f) for _, f in COST_COLUMNS])
    table.notes.append("Times in seconds of this process (a resumed run: from its resume point); train s "
                       "includes per-epoch validation; images/s per process; peak RSS of the whole process.")
    if without:
        table.notes.append(f"{without} run(s) without a recorded cost (log.txt only, or results.json written "
                           "before cost was recorded) are left out.")
    return table
