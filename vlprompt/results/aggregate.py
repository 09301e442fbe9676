"""Aggregate records over seeds and build the protocol tables.

Each registered protocol (:mod:`vlprompt.protocol.protocols`) names the kind of table it gets
(:data:`TABLE_KINDS`: ``base2new``, ``transfer``, ``few_shot``, ``datasets``); :func:`build_tables` builds
them in registration order, so a protocol registered later is tabulated without code here.

Conventions (the papers'):

* a cell is the mean over seeds, with the population standard deviation (numpy's default, ddof=0,
  as CoOp's parse_test_res.py); a cell with fewer seeds than expected is marked ``†`` and the missing
  seeds are listed in the notes;
* base-to-novel: the per-dataset HM is the HM of the seed-averaged base and novel accuracies; the
  11-dataset average HM is the HM of the averaged base and novel accuracies, **not** the mean of the
  per-dataset HMs (the mean of HMs is given in the notes for reference);
* cross-dataset and DG averages are over the targets only (the source column is not averaged);
* an average over fewer datasets than the protocol's standard list is marked ``‡``.

Backbones: the tables of one backbone never mix with another's. When the records hold one backbone,
the tables keep their names (``base2new``, ``few_shot_4shots``, ...) and say the backbone in the title;
with several, there is one set of tables per backbone, named ``<table>_<backbone slug>``
(``base2new_vit_b_16``, ``base2new_vit_b_16_siglip_webli``). Published numbers are shown only beside
the backbone they were measured on: a block of published.json (or a base2new average entry) is on its
own ``backbone`` if it names one, else on the file's top-level ``backbone`` (ViT-B/16); the
``few_shot_rn50`` block (Tip-Adapter's RN50 few-shot numbers) appears beside RN50 few-shot results.
"""
import json
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..protocol import (DATASETS_11, DG_TARGETS, DISPLAY_NAMES, PROTOCOL_REGISTRY, XD_SOURCE, XD_TARGETS,
                        BackboneError, family_config, family_config_name, get_protocol, parse_backbone)
from .methods import MethodTable, default_methods
from .records import TEST_SELECTION_MARK, Record

__all__ = [
    "Cell",
    "Table",
    "hm",
    "mean_std",
    "seed_stat",
    "apply_families",
    "load_published",
    "build_tables",
    "published_for",
    "base2new_table",
    "transfer_table",
    "few_shot_tables",
    "datasets_table",
    "TABLE_KINDS",
]

XD_TARGETS = list(XD_TARGETS)
MISSING_SEEDS = "†"
PARTIAL_AVERAGE = "‡"


def hm(base, novel):
    """Harmonic mean 2BN/(B+N) (0 when both are 0)."""
    if base is None or novel is None:
        return None
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def mean_std(values):
    """(mean, population std) of a non-empty sequence."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std of nothing")
    m = sum(vals) / len(vals)
    var = sum((v - m) ** 2 for v in vals) / len(vals)
    return m, var ** 0.5


@dataclass
class Cell:
    mean: Optional[float]
    std: Optional[float] = None
    n: Optional[int] = None
    expected: Optional[int] = None
    missing: Tuple[int, ...] = ()
    marks: str = ""
    published: bool = False
    digits: Optional[int] = None  # decimals when shown (None: the table's; 0 for counts)

    @property
    def empty(self):
        return self.mean is None


EMPTY = Cell(None)


def seed_stat(values_by_seed: Dict[int, float], expected: Sequence[int]):
    """Cell of mean ± std over seeds; ``†`` when an expected seed is missing."""
    if not values_by_seed:
        return EMPTY
    m, s = mean_std(values_by_seed.values())
    missing = tuple(sorted(set(expected) - set(values_by_seed)))
    return Cell(mean=m, std=s, n=len(values_by_seed), expected=len(set(expected) | set(values_by_seed)),
                missing=missing, marks=MISSING_SEEDS if missing else "")


@dataclass
class Table:
    name: str
    title: str
    columns: List[str]
    rows: List[dict] = field(default_factory=list)  # {"cells": [...], "kind": ..., "sep": bool}
    notes: List[str] = field(default_factory=list)
    numeric: List[bool] = field(default_factory=list)
    trainers: set = field(default_factory=set)
    protocol: str = ""  # the registered protocol the table belongs to

    def add(self, cells, kind="ours", sep=False):
        self.rows.append({"cells": list(cells), "kind": kind, "sep": sep})


# ----------------------------------------------------------------------------- helpers
def _recipe_protocol(r):
    """The protocol whose recipe a record's run followed: the shared source run (``transfer``) and the
    protocols that take another's recipe (``recipe_from``: domain generalisation) map to that one."""
    p = PROTOCOL_REGISTRY.get(r.protocol)
    if p is None:  # a shared step's folder name: the protocol that owns the step
        p = next((q for q in PROTOCOL_REGISTRY.values() if r.protocol in {s.tree for s in q.steps}), None)
    while p is not None and p.recipe_from:
        p = PROTOCOL_REGISTRY.get(p.recipe_from)
    return p.name if p is not None else r.protocol


def apply_families(records: List[Record], methods: Optional[MethodTable] = None):
    """Put runs made with a recipe's per-dataset/per-shot config into the recipe's main row.

    Example: the CoOp base2new recipe trains ImageNet with vit_b16_ep50_ctxv1 and the other datasets
    with vit_b16_ctxv1; the ImageNet runs are shown in the vit_b16_ctxv1 row. A config's runs are
    merged only when every one of them sits where the recipe uses that config (so a config run on its
    own, e.g. vit_b16_ep50 on every dataset, keeps its own row), and never into a dataset/shot slot
    that the main config fills itself. The recipes are the trainers' method cards (``methods``, default:
    the registry). Returns the notes that say so.
    """
    methods = methods or default_methods()
    groups = {}
    for r in records:
        groups.setdefault((r.trainer, _recipe_protocol(r), r.config, r.backbone), []).append(r)
    main_slots = {}
    for (t, p, cfg, bb), rs in groups.items():
        main_slots[(t, p, cfg, bb)] = {(r.dataset, r.shots, r.role) for r in rs}
    merged = {}
    for (t, p, cfg, bb), rs in groups.items():
        fams = {family_config(methods.recipe(t, p), r.dataset, r.shots, cfg) for r in rs}
        if len(fams) != 1 or None in fams:
            continue
        fam = fams.pop()
        # on a backbone with configs of its own the main row is the recipe config's sibling (the sweep
        # runs an override without a sibling on the recipe's config, e.g. CoOp's ImageNet on SigLIP)
        sib = family_config_name(fam, _backbone_name(bb)) if bb else None
        if sib is not None and (t, p, sib, bb) in groups:
            fam = sib
        taken = main_slots.get((t, p, fam, bb), set())
        for r in rs:
            if (r.dataset, r.shots, r.role) in taken:
                continue
            r.family = fam
            merged.setdefault((t, r.protocol, fam, cfg), set()).add(
                DISPLAY_NAMES.get(r.dataset, r.dataset) + ("" if r.shots is None else f" {r.shots}-shot"))
    notes = []
    for (t, p, fam, cfg), where in sorted(merged.items()):
        notes.append(f"{t} {p}: runs with {cfg} ({', '.join(sorted(where))}) are shown in the {fam} row, "
                     f"as in the official recipe (the method card of trainer {t}).")
    return notes


def _backbone_name(label):
    try:
        b = parse_backbone(label)
    except BackboneError:
        return None
    return b.name if b is not None else None


def _trainer_rank(t, methods=None):
    return (methods or default_methods()).rank(t)


def _dataset_order(ds, standard):
    known = [d for d in standard if d in ds]
    return known + sorted(d for d in ds if d not in standard)


#: the mark of a row whose runs trained on unlabelled images of the classes they are tested on (PromptKD)
TRANSDUCTIVE_LABEL = " [transductive]"


def _labels(keys, std_shots=None, recs=()):
    """Row labels: the trainer, plus the config when the trainer has several configs in the table, plus
    the shot count when it is not the protocol's standard one, plus `` [transductive]`` when the row's runs
    are transductive (``recs``: the table's records)."""
    cfgs = {}
    for k in keys:
        cfgs.setdefault(k[0], set()).add(k[1].replace(TEST_SELECTION_MARK, ""))
    out = {}
    for k in keys:
        extra = []
        if len(cfgs[k[0]]) > 1:
            extra.append(k[1].replace(TEST_SELECTION_MARK, ""))
        if k[1].endswith(TEST_SELECTION_MARK):
            extra.append("selected on test")
        if len(k) > 2 and k[2] is not None and std_shots is not None and k[2] != std_shots:
            extra.append(f"{k[2]} shots")
        out[k] = k[0] + (f" ({', '.join(extra)})" if extra else "")
    marked = {(r.trainer, r.group_config) for r in recs if r.transductive}
    for k in keys:
        if tuple(k[:2]) in marked:
            out[k] += TRANSDUCTIVE_LABEL
    return out


def _values(records, metric):
    """{seed: value}; a seed seen twice keeps the last record (reported by build_tables)."""
    out = {}
    for r in records:
        if metric in r.metrics:
            out[r.seed] = r.metrics[metric]
    return out


def load_published(path=None):
    path = path or osp.join(osp.dirname(osp.abspath(__file__)), "published.json")
    with open(path) as f:
        return json.load(f)


def _published_for(pub, trainer, config):
    names = []
    for name, spec in pub["methods"].items():
        for m in spec.get("match", []):
            if m.get("trainer") == trainer and m.get("config") in (None, config):
                names.append(name)
                break
    return names


def _published_names(pub, keys, mode):
    if not mode:
        return []
    if mode == "all":
        return list(pub["methods"])
    names = []
    for k in keys:
        for n in _published_for(pub, k[0], k[1]):
            if n not in names:
                names.append(n)
    return names


def _not_reported_notes(pub, keys, mode):
    if not mode:
        return []
    return [pub["not_reported"][t] + f" ({t})" for t in sorted({k[0] for k in keys}) if t in pub["not_reported"]]


class _Missing:
    """Collects cells with missing seeds and summarises them per row label."""

    def __init__(self):
        self.items = {}

    def add(self, label, where, cell):
        if cell.missing:
            self.items.setdefault((label, cell.missing), []).append(where)

    def notes(self):
        return [f"{label}: seed(s) {' '.join(map(str, miss))} missing for {', '.join(where)}"
                for (label, miss), where in self.items.items()]


def _configs_note(keys, labels):
    note = "Rows (TRAINER:CONFIG folder): " + "; ".join(f"{labels[k]} = {k[0]}:{k[1]}" for k in keys)
    if any(labels[k].endswith(TRANSDUCTIVE_LABEL) for k in keys):
        note += (f". {TRANSDUCTIVE_LABEL.strip()}: trained on unlabelled training images of every class of the "
                 "dataset, the classes it is tested on included (transductive, e.g. PromptKD); not comparable "
                 "like-for-like with the inductive rows")
    return note


def _fmt_ds(d):
    return DISPLAY_NAMES.get(d, d)


# ----------------------------------------------------------------------------- base-to-novel
def base2new_table(records, seeds, metric="accuracy", pub=None, pub_mode=None, methods=None):
    recs = [r for r in records if r.protocol == "base2new"]
    if not recs:
        return None
    keys = sorted({(r.trainer, r.group_config, r.shots) for r in recs}, key=lambda k: (_trainer_rank(k[0], methods), k[1:]))
    labels = _labels(keys, std_shots=16, recs=recs)
    datasets = _dataset_order({r.dataset for r in recs}, DATASETS_11)
    t = Table(
        name="base2new",
        title=f"Base-to-novel generalization ({metric}, %, mean ± std over seeds)",
        columns=["Dataset", "Method", "Base", "Novel", "HM", "Seeds"],
        numeric=[False, False, True, True, True, False],
    )
    pub_names = _published_names(pub, keys, pub_mode) if pub else []
    per = {}  # key -> dataset -> (base cell, novel cell)
    missing = _Missing()
    for d in datasets:
        first = True
        for k in keys:
            sel = [r for r in recs if (r.trainer, r.group_config, r.shots) == k and r.dataset == d]
            if not sel:
                continue
            b = seed_stat(_values([r for r in sel if r.role == "base"], metric), seeds)
            n = seed_stat(_values([r for r in sel if r.role == "novel"], metric), seeds)
            h = Cell(hm(b.mean, n.mean)) if not (b.empty or n.empty) else EMPTY
            per.setdefault(k, {})[d] = (b, n)
            seeds_txt = _seeds_text(b, n)
            t.add([_fmt_ds(d) if first else "", labels[k], b, n, h, seeds_txt], sep=first)
            first = False
            missing.add(labels[k], f"{_fmt_ds(d)} base", b)
            missing.add(labels[k], f"{_fmt_ds(d)} novel", n)
        for name in pub_names:
            vals = pub["base2new"]["per_dataset"].get(name, {}).get(d) if "base2new" in pub else None
            if vals:
                t.add(["" if not first else _fmt_ds(d), f"{name} [published]", Cell(vals[0], published=True),
                       Cell(vals[1], published=True), Cell(vals[2], published=True), ""], kind="published", sep=first)
                first = False
    # averages
    first = True
    mean_hm_notes = []
    for k in keys:
        both = [d for d in datasets if d in per.get(k, {}) and not per[k][d][0].empty and not per[k][d][1].empty]
        if not both:
            continue
        ab = sum(per[k][d][0].mean for d in both) / len(both)
        an = sum(per[k][d][1].mean for d in both) / len(both)
        mark = PARTIAL_AVERAGE if len(both) < len(DATASETS_11) else ""
        t.add(["Average" if first else "", labels[k], Cell(ab, marks=mark), Cell(an, marks=mark),
               Cell(hm(ab, an), marks=mark), f"{len(both)}/{len(DATASETS_11)} datasets"], kind="average", sep=first)
        first = False
        mhm = sum(hm(per[k][d][0].mean, per[k][d][1].mean) for d in both) / len(both)
        mean_hm_notes.append(f"{labels[k]}: HM of averages {hm(ab, an):.2f}, mean of per-dataset HMs {mhm:.2f}")
    if pub_names and "base2new" in pub:
        avg_rows = {e["key"]: e for e in pub["base2new"]["average"]}
        for name in pub_names:
            e = avg_rows.get(name)
            if e is None:
                continue
            t.add(["Average" if first else "", f"{name} [published]", Cell(e["base"], published=True),
                   Cell(e["novel"], published=True), Cell(e["hm"], published=True), "11/11 datasets"],
                  kind="published", sep=first)
            first = False
    t.trainers = {k[0] for k in keys}
    t.notes.append(_configs_note(keys, labels))
    t.notes.append("Base: accuracy on the base-class test set at the end of training (train_base run); Novel: "
                   "eval-only on the new classes (test_new run); HM = 2·B·N/(B+N) of the seed-averaged B and N.")
    t.notes.append("Average: the mean over datasets of base and of novel accuracy; the average HM is the HM of these "
                   "two averages (the papers' convention), not the mean of the per-dataset HMs.")
    t.notes += mean_hm_notes
    t.notes += _common_notes(seeds)
    if any(r["cells"][2].marks == PARTIAL_AVERAGE for r in t.rows if r["kind"] == "average"):
        t.notes.append(f"{PARTIAL_AVERAGE} average over fewer than the {len(DATASETS_11)} standard datasets; not "
                       "comparable with published averages.")
    if pub_names and "base2new" in pub:
        t.notes.append("[published]: " + pub["base2new"]["per_dataset_source"] + "; averages from the sources named "
                       "per method in vlprompt/results/published.json (base2new.average).")
    t.notes += _not_reported_notes(pub, keys, pub_mode) if pub else []
    t.notes += missing.notes()
    return t


def _seeds_text(*cells):
    cs = [c for c in cells if not c.empty]
    if not cs:
        return ""
    n = min(c.n for c in cs)
    e = max(c.expected for c in cs)
    return f"{n}/{e}" + (f" {MISSING_SEEDS}" if n < e or any(c.missing for c in cs) else "")


def _common_notes(seeds):
    return [f"± is the population standard deviation over seeds (ddof=0, as CoOp's parse_test_res.py); expected "
            f"seeds: {' '.join(map(str, seeds))}; {MISSING_SEEDS} marks cells with missing seeds."]


# ----------------------------------------------------------------------------- transfer
def transfer_table(records, protocol, seeds, metric="accuracy", pub=None, pub_mode=None, source=XD_SOURCE,
                   methods=None):
    standard = XD_TARGETS if protocol == "cross_dataset" else list(DG_TARGETS)
    tgt = [r for r in records if r.protocol == protocol]
    src = [r for r in records if r.protocol == "transfer"]
    if not tgt and not (protocol == "cross_dataset" and src):
        return None
    keys_t = {(r.trainer, r.group_config, r.shots) for r in tgt}
    if protocol == "cross_dataset":
        # source-only runs (no targets evaluated yet) are shown here so that they are not lost
        keys_dg = {(r.trainer, r.group_config, r.shots) for r in records if r.protocol == "domain_generalization"}
        keys_t |= {(r.trainer, r.group_config, r.shots) for r in src} - keys_dg
    keys = sorted(keys_t, key=lambda k: (_trainer_rank(k[0], methods), k[1:]))
    labels = _labels(keys, std_shots=16, recs=list(tgt) + list(src))
    targets = _dataset_order({r.dataset for r in tgt}, standard)
    src_name = _fmt_ds(source)
    title = ("Cross-dataset transfer" if protocol == "cross_dataset" else "Domain generalization")
    t = Table(
        name=protocol,
        title=f"{title} from {src_name} ({metric}, %, mean ± std over seeds)",
        columns=["Method", f"{src_name} (source)"] + [_fmt_ds(d) for d in targets] + ["Average", "Seeds"],
        numeric=[False] + [True] * (len(targets) + 2) + [False],
    )
    missing = _Missing()
    for k in keys:
        s = seed_stat(_values([r for r in src if (r.trainer, r.group_config, r.shots) == k and r.dataset == source],
                              metric), seeds)
        cells = [s]
        missing.add(labels[k], f"{src_name} (source)", s)
        for d in targets:
            c = seed_stat(_values([r for r in tgt if (r.trainer, r.group_config, r.shots) == k and r.dataset == d],
                                  metric), seeds)
            cells.append(c)
            missing.add(labels[k], _fmt_ds(d), c)
        have = [c for c in cells[1:] if not c.empty]
        avg = Cell(sum(c.mean for c in have) / len(have),
                   marks=PARTIAL_AVERAGE if len(have) < len(standard) else "") if have else EMPTY
        t.add([labels[k]] + cells + [avg, _seeds_text(*cells)])
    pub_names = _published_names(pub, keys, pub_mode) if pub else []
    first = True
    for name in pub_names:
        vals = pub[protocol]["values"].get(name) if protocol in pub else None
        if not vals:
            continue
        cells = [Cell(vals.get(source), published=True) if vals.get(source) is not None else EMPTY]
        cells += [Cell(vals[d], published=True) if d in vals else EMPTY for d in targets]
        t.add([f"{name} [published]"] + cells + [Cell(vals["average"], published=True), ""], kind="published",
              sep=first)
        first = False
    t.trainers = {k[0] for k in keys}
    t.notes.append(_configs_note(keys, labels))
    t.notes.append(f"Source: the {src_name} training run's own test (16 shots, all classes); targets: eval-only "
                   f"runs of the same model on each target's full test set. Average: mean over the targets shown"
                   f" (the published averages are over all {len(standard)} targets).")
    t.notes += _common_notes(seeds)
    if any(r["cells"][-2].marks == PARTIAL_AVERAGE for r in t.rows if r["kind"] == "ours"):
        t.notes.append(f"{PARTIAL_AVERAGE} average over fewer than the {len(standard)} standard targets.")
    if pub_names and protocol in pub:
        t.notes.append("[published]: " + pub[protocol]["source"])
    t.notes += _not_reported_notes(pub, keys, pub_mode) if pub else []
    t.notes += missing.notes()
    return t


# ----------------------------------------------------------------------------- few-shot
def few_shot_tables(records, seeds, metric="accuracy", pub=None, pub_mode=None, methods=None):
    recs = [r for r in records if r.protocol == "few_shot"]
    if not recs:
        return []
    keys = sorted({(r.trainer, r.group_config) for r in recs}, key=lambda k: (_trainer_rank(k[0], methods), k[1:]))
    labels = _labels(keys, recs=recs)
    datasets = _dataset_order({r.dataset for r in recs}, DATASETS_11)
    shots = sorted({r.shots for r in recs if r.shots is not None})
    tables = []
    averages = {}  # key -> K -> (mean, n datasets)
    blk = pub.get("few_shot_per_dataset") if pub and pub_mode else None
    for K in shots:
        t = Table(
            name=f"few_shot_{K}shots",
            title=(f"Few-shot classification, {K}-shot ({metric}, %, mean ± std over seeds)" if K
                   else f"Zero-shot classification, filed as shots_0 in the few-shot tree ({metric}, %)"),
            columns=["Method"] + [_fmt_ds(d) for d in datasets] + ["Average", "Seeds"],
            numeric=[False] + [True] * (len(datasets) + 1) + [False],
        )
        missing = _Missing()
        for k in keys:
            sel = [r for r in recs if (r.trainer, r.group_config) == k and r.shots == K]
            if not sel:
                continue
            cells = []
            for d in datasets:
                c = seed_stat(_values([r for r in sel if r.dataset == d], metric), seeds)
                cells.append(c)
                missing.add(labels[k], _fmt_ds(d), c)
            have = [c for c in cells if not c.empty]
            mark = PARTIAL_AVERAGE if len(have) < len(DATASETS_11) else ""
            avg = Cell(sum(c.mean for c in have) / len(have), marks=mark)
            averages.setdefault(k, {})[K] = (avg.mean, len(have))
            t.add([labels[k]] + cells + [avg, _seeds_text(*cells)])
        present = [k for k in keys if any(r.shots == K for r in recs if (r.trainer, r.group_config) == k)]
        if blk is not None:
            first = True
            for name in _published_names(pub, present, pub_mode):
                vals = {d: v for d in DATASETS_11
                        if (v := blk["per_dataset"].get(d, {}).get(name, {}).get(str(K))) is not None}
                if not vals:
                    continue
                cells = [Cell(vals[d], published=True) if d in vals else EMPTY for d in datasets]
                avg = Cell(sum(vals.values()) / len(vals), published=True,
                           marks=PARTIAL_AVERAGE if len(vals) < len(DATASETS_11) else "")
                t.add([f"{name} [published]"] + cells + [avg, ""], kind="published", sep=first)
                first = False
            if not first:
                t.notes.append(f"[published]: {blk['source']} ({blk['backbone']}); their Average is over the "
                               f"{len(DATASETS_11)} datasets, not only the columns shown.")
        t.trainers = {k[0] for k in present}
        t.notes.append(_configs_note(present, labels))
        t.notes += _common_notes(seeds)
        if any(r["cells"][-2].marks for r in t.rows):
            t.notes.append(f"{PARTIAL_AVERAGE} average over fewer than the {len(DATASETS_11)} standard datasets.")
        t.notes += missing.notes()
        tables.append(t)
    # summary: average over datasets per shot count
    t = Table(
        name="few_shot_average",
        title=f"Few-shot classification, average over datasets ({metric}, %)",
        columns=["Method"] + [f"{K}-shot" if K else "0 (zero-shot)" for K in shots],
        numeric=[False] + [True] * len(shots),
    )
    for k in keys:
        cells = []
        for K in shots:
            v = averages.get(k, {}).get(K)
            cells.append(Cell(v[0], marks=PARTIAL_AVERAGE if v[1] < len(DATASETS_11) else "") if v else EMPTY)
        t.add([labels[k]] + cells)
    pub_names = _published_names(pub, keys, pub_mode) if pub else []
    first, shown_approx, own_sources = True, False, []
    # rows read from a named table carry their own source; the others are the recalled block
    sources = pub.get("few_shot", {}).get("sources", {}) if pub else {}
    for name in pub_names:
        vals = pub["few_shot"]["average"].get(name) if "few_shot" in pub else None
        if not vals:
            continue
        cells = [Cell(vals[str(K)], published=True) if str(K) in vals else EMPTY for K in shots]
        if name in sources:
            t.add([f"{name} [published]"] + cells, kind="published", sep=first)
            own_sources.append(f"{name}: {sources[name]}")
        else:
            t.add([f"{name} [published, approx.]"] + cells, kind="published", sep=first)
            shown_approx = True
        first = False
    t.trainers = {k[0] for k in keys}
    t.notes.append("Each cell is the mean over datasets of the seed-averaged accuracy (all classes, full test set).")
    if any(c.marks for r in t.rows for c in r["cells"][1:] if isinstance(c, Cell)):
        t.notes.append(f"{PARTIAL_AVERAGE} average over fewer than the {len(DATASETS_11)} standard datasets.")
    if shown_approx:
        t.notes.append("[published, approx.]: " + pub["few_shot"]["source"])
    t.notes.extend("[published] " + s for s in own_sources)
    if blk is not None:
        first = True
        for name in _published_names(pub, keys, pub_mode):
            cells = []
            for K in shots:
                vals = [v for d in DATASETS_11
                        if (v := blk["per_dataset"].get(d, {}).get(name, {}).get(str(K))) is not None]
                cells.append(Cell(sum(vals) / len(vals), published=True) if len(vals) == len(DATASETS_11) else EMPTY)
            if all(c.empty for c in cells):
                continue
            t.add([f"{name} [published]"] + cells, kind="published", sep=first)
            first = False
        if not first:
            t.notes.append(f"[published]: mean over the {len(DATASETS_11)} datasets of {blk['source']} "
                           f"({blk['backbone']}); empty where a dataset is missing.")
    t.notes += _not_reported_notes(pub, keys, pub_mode) if pub else []
    tables.append(t)
    return tables


# ----------------------------------------------------------------------------- all
def _slug(label):
    return re.sub(r"[^A-Za-z0-9]+", "_", str(label)).strip("_").lower() or "backbone"


def published_for(pub, backbone):
    """The part of published.json measured on ``backbone`` (a table label), or None when nothing is.

    A block is on its own ``backbone`` key if it has one, else on the file's top-level ``backbone``;
    base2new ``average`` entries may name theirs too. The ``few_shot_rn50`` block (per-dataset few-shot
    numbers) becomes ``few_shot_per_dataset`` of the view.
    """
    if pub is None or backbone is None:
        return None
    top = pub.get("backbone", "ViT-B/16")
    view = {k: pub[k] for k in ("methods", "not_reported") if k in pub}
    found = False
    for key in ("base2new", "cross_dataset", "domain_generalization", "few_shot"):
        blk = pub.get(key)
        if not isinstance(blk, dict):
            continue
        if key == "base2new":
            avg = [e for e in blk.get("average", []) if e.get("backbone", blk.get("backbone", top)) == backbone]
            if blk.get("backbone", top) == backbone or avg:
                view[key] = dict(blk, average=avg,
                                 per_dataset=blk["per_dataset"] if blk.get("backbone", top) == backbone else {})
                found = True
        elif blk.get("backbone", top) == backbone:
            view[key] = blk
            found = True
    for key, blk in pub.items():
        if key.startswith("few_shot_") and isinstance(blk, dict) and "per_dataset" in blk:
            if blk.get("backbone", top) == backbone:
                view["few_shot_per_dataset"] = dict(blk, backbone=blk.get("backbone", top))
                found = True
    return view if found else None


def _backbone_order(labels, reference):
    return sorted(labels, key=lambda b: (b is None, b != reference, str(b)))


def build_tables(records, protocols=None, seeds=(1, 2, 3), metric="accuracy", published=None, source=XD_SOURCE,
                 methods=None):
    """Tables for the requested protocols (None: every protocol found). ``published``: None, "matched"
    (the published rows of the methods in our results) or "all". ``methods``: the row order and
    recipes (:class:`MethodTable`; default: the registry, see :mod:`vlprompt.results.methods`).

    One set of tables per backbone (``Record.backbone``); see the module docstring for names and for
    which published numbers go where."""
    methods = methods or default_methods()
    pub = load_published() if published else None
    by_bb = {}
    for r in records:
        by_bb.setdefault(r.backbone, []).append(r)
    reference = (pub or {}).get("backbone", "ViT-B/16")
    several = len(by_bb) > 1
    tables, slugs = [], set()
    for bb in _backbone_order(by_bb, reference):
        slug = _slug(bb) if bb is not None else "backbone_not_recorded"
        while slug in slugs:
            slug += "_"
        slugs.add(slug)
        family_notes = apply_families(by_bb[bb], methods)
        ts = _tables_of(by_bb[bb], protocols, seeds, metric, published_for(pub, bb), published, source, methods,
                        family_notes)
        where = f"backbone {bb}" if bb is not None else "backbone not recorded"
        for t in ts:
            t.title += f"; {where}"
            if several:
                t.name = f"{t.name}_{slug}"
            if bb is None:
                t.notes.append("Backbone not recorded: runs without results.json whose folder and config name do "
                               "not say it (see docs/RESULTS.md).")
            elif published and pub is not None and published_for(pub, bb) is None:
                t.notes.append(f"No published numbers are stored for {bb}; published rows appear only beside the "
                               "backbone they were measured on.")
        tables += ts
    return tables


def datasets_table(records, protocol, seeds, metric="accuracy", pub=None, pub_mode=None, source=XD_SOURCE,
                   methods=None):
    """The table of a protocol of kind ``datasets``: one row per (trainer, config), one column per dataset
    (the protocol's standard datasets first), the accuracy of one role (``table_role``, default the last
    step's), averaged over seeds; the average is over the datasets shown."""
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    role = proto.table_role or proto.roles[-1]
    recs = [r for r in records if r.protocol == proto.name and r.role == role]
    if not recs:
        return []
    keys = sorted({(r.trainer, r.group_config) for r in recs}, key=lambda k: (_trainer_rank(k[0], methods), k[1:]))
    labels = _labels(keys, recs=recs)
    datasets = _dataset_order({r.dataset for r in recs}, list(proto.datasets))
    t = Table(
        name=proto.name,
        title=f"{proto.title} ({metric}, %, mean ± std over seeds)",
        columns=["Method"] + [_fmt_ds(d) for d in datasets] + ["Average", "Seeds"],
        numeric=[False] + [True] * (len(datasets) + 1) + [False],
    )
    missing = _Missing()
    for k in keys:
        cells = []
        for d in datasets:
            c = seed_stat(_values([r for r in recs if (r.trainer, r.group_config) == k and r.dataset == d], metric),
                          seeds)
            cells.append(c)
            missing.add(labels[k], _fmt_ds(d), c)
        have = [c for c in cells if not c.empty]
        avg = Cell(sum(c.mean for c in have) / len(have)) if have else EMPTY
        t.add([labels[k]] + cells + [avg, _seeds_text(*cells)])
    t.trainers = {k[0] for k in keys}
    t.notes.append(_configs_note(keys, labels))
    t.notes.append(f"Each cell: the {role} run's {metric}; Average: mean over the datasets shown.")
    t.notes += _common_notes(seeds)
    t.notes += missing.notes()
    return [t]


def _tta_method(r):
    """The test-time procedure of a record (``cfg.TTA.METHOD``; "" for a plain test)."""
    tta = (r.config_dict or {}).get("TTA") or {}
    return str(tta.get("METHOD") or "") if isinstance(tta, dict) else ""


def test_time_tables(records, protocol, seeds, metric="accuracy", methods=None):
    """The tables of the test-time protocol: one for ``metric`` (accuracy) and one for ECE, one row per (base
    trainer, procedure, config), one column per dataset, then the OOD average (the protocol's ``ood`` datasets)
    and the cross-domain average (its ``cross_domain`` datasets), each over the datasets of its group that the
    row has (a partial group is marked with ``*`` and named in the notes). The zero-shot row, the base model's
    ``none`` row and the base + procedure rows stand side by side."""
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    role = proto.table_role or proto.roles[-1]
    recs = [r for r in records if r.protocol == proto.name and r.role == role]
    if not recs:
        return []
    groups = (("OOD avg.", tuple(proto.extra.get("ood", ()))),
              ("Cross-domain avg.", tuple(proto.extra.get("cross_domain", ()))))

    def label_of(trainer, method):
        return trainer if method in ("", "none") else f"{trainer} + {method}"

    keys = sorted({(r.trainer, _tta_method(r), r.group_config) for r in recs},
                  key=lambda k: (_trainer_rank(k[0], methods), k[1] not in ("", "none"), k[1], k[2]))
    per_label = {}
    for k in keys:
        per_label.setdefault(label_of(k[0], k[1]), set()).add(k[2])
    labels = {k: label_of(k[0], k[1]) + (f" ({k[2]})" if len(per_label[label_of(k[0], k[1])]) > 1 else "")
              for k in keys}
    datasets = _dataset_order({r.dataset for r in recs}, list(proto.datasets))
    out = []
    for m, what in ((metric, metric), ("ece", "ECE")):
        t = Table(
            name=proto.name if m == metric else f"{proto.name}_ece",
            title=f"{proto.title} ({what}, %, mean ± std over seeds)",
            columns=["Method"] + [_fmt_ds(d) for d in datasets] + [g for g, _ in groups] + ["Seeds"],
            numeric=[False] + [True] * (len(datasets) + len(groups)) + [False],
        )
        missing, partial = _Missing(), []
        for k in keys:
            cells = {}
            for d in datasets:
                c = seed_stat(_values([r for r in recs if (r.trainer, _tta_method(r), r.group_config) == k
                                       and r.dataset == d], m), seeds)
                cells[d] = c
                missing.add(labels[k], _fmt_ds(d), c)
            avgs = []
            for g, members in groups:
                have = [cells[d] for d in members if d in cells and not cells[d].empty]
                if not have:
                    avgs.append(EMPTY)
                    continue
                avg = Cell(sum(c.mean for c in have) / len(have))
                if len(have) < len(members):
                    avg = Cell(avg.mean, marks="*")
                    partial.append(f"{labels[k]}: {g} over {len(have)} of {len(members)} datasets")
                avgs.append(avg)
            t.add([labels[k]] + [cells[d] for d in datasets] + avgs + [_seeds_text(*cells.values())])
        t.trainers = {k[0] for k in keys}
        t.notes.append("Rows (TRAINER:CONFIG folder, test-time procedure): " + "; ".join(
            f"{labels[k]} = {k[0]}:{k[2]}, {k[1] or 'none'}" for k in keys))
        bins = " (20 equal-width confidence bins, C-TPT's)" if what == "ECE" else ""
        t.notes.append(f"Each cell: the {role} run's {what}{bins}; "
                       f"OOD avg.: {', '.join(_fmt_ds(d) for d in groups[0][1])}; cross-domain avg.: the "
                       f"{len(groups[1][1])} fine-grained sets.")
        t.notes += [f"* partial average: {p}" for p in partial]
        t.notes += _common_notes(seeds)
        t.notes += missing.notes()
        out.append(t)
    return out


def _test_time_kind(records, proto, seeds, metric, pub, pub_mode, source, methods):
    return test_time_tables(records, proto, seeds, metric, methods)


def _base2new_kind(records, proto, seeds, metric, pub, pub_mode, source, methods):
    t = base2new_table(records, seeds, metric, pub, pub_mode, methods)
    return [t] if t else []


def _transfer_kind(records, proto, seeds, metric, pub, pub_mode, source, methods):
    t = transfer_table(records, proto.name, seeds, metric, pub, pub_mode, source, methods)
    return [t] if t else []


def _few_shot_kind(records, proto, seeds, metric, pub, pub_mode, source, methods):
    return few_shot_tables(records, seeds, metric, pub, pub_mode, methods)


def _datasets_kind(records, proto, seeds, metric, pub, pub_mode, source, methods):
    return datasets_table(records, proto, seeds, metric, pub, pub_mode, source, methods)


#: table kind (a protocol's ``table``) -> builder ``(records, protocol, seeds, metric, published view,
#: published mode, source, methods) -> [Table]``
TABLE_KINDS = {"base2new": _base2new_kind, "transfer": _transfer_kind, "few_shot": _few_shot_kind,
               "datasets": _datasets_kind, "test_time": _test_time_kind}


def _tables_of(records, protocols, seeds, metric, pub, published, source, methods, family_notes):
    wanted = set(protocols or PROTOCOL_REGISTRY)
    dup = {}
    for r in records:
        dup.setdefault((r.trainer, r.group_config, r.protocol, r.role, r.dataset, r.shots, r.seed), []).append(r.path)
    dup_notes = [f"several runs for one seed (the last one is used): {', '.join(p)}"
                 for p in dup.values() if len(p) > 1]
    published = published if pub is not None else None
    tables = []
    for proto in PROTOCOL_REGISTRY.values():  # registration order: base2new, cross_dataset, DG, few_shot, ...
        if proto.name not in wanted:
            continue
        for t in TABLE_KINDS[proto.table](records, proto, seeds, metric, pub, published, source, methods):
            t.protocol = proto.name
            tables.append(t)
    for t in tables:
        proto = t.protocol
        # the shared source run's notes go with the protocol that owns its recipe (cross-dataset)
        owner = PROTOCOL_REGISTRY[proto]
        shared = {s.tree for s in owner.steps if s.tree} if not owner.recipe_from else set()
        t.notes += [n for n in family_notes if n.split(" ")[0] in t.trainers
                    and (f" {proto}:" in n or any(f" {name}:" in n for name in shared))]
        t.notes += dup_notes
        if methods.note:
            t.notes.append("Note: " + methods.note + ".")
    return tables
