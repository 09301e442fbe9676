"""Figures (matplotlib, Agg backend), each written as PNG and PDF.

Which figures are drawn follows the registered protocols (``figure`` of
:class:`vlprompt.protocol.Protocol`, :data:`FIGURE_KINDS`) and ``--protocol``; as the tables, the
figures of one backbone never mix with another's: with several backbones each figure is drawn per
backbone, named ``<figure>_<backbone slug>``. What a figure cannot show as a plain value is marked: a
bar or point averaged over fewer seeds than expected is hatched / hollow and marked ``†``, a value that
is not a number (NaN) is written ``NaN`` where it would stand, and a footnote says so.

* ``base2new_bars``: per dataset (and the average), base / novel / HM bars for each method;
* ``few_shot_curves``: accuracy against shots per dataset (and the average over the datasets every
  method has), one line per method; zero-shot runs (shots_0) are drawn as dashed horizontal lines;
  with ``published`` (``--with-published``), the published curves of the methods in the records are
  drawn beside them (dotted, hollow markers, labelled "(published)"; see
  :func:`published_few_shot_curves`);
* ``prompt_length``: accuracy against the prompt length N for the runs of one trainer whose config
  sets ``TRAINER.<X>.N_CTX`` differently (the N is read from the ``config`` dict of results.json).
"""
import math
import os
import os.path as osp

from ..protocol import DATASETS_11, DEFAULT_SEEDS, DISPLAY_NAMES, PROTOCOL_REGISTRY
from .aggregate import (MISSING_SEEDS, _dataset_order, _published_for, _slug, _trainer_rank, _values, apply_families, hm,
                        load_published, mean_std, published_for)

__all__ = ["plot_base2new", "few_shot_curves", "published_few_shot_curves", "plot_few_shot", "plot_prompt_length", "make_plots", "FIGURE_KINDS"]

NAN_NOTE = "NaN: the runs' metric is not a number (shown where the value would stand)"


def _nan(x):
    return x is not None and x != x


def _seed_stat(values, seeds):
    """(mean, std, missing seeds) over the seeds of ``values`` ({seed: value}); NaN propagates."""
    m, s = mean_std(values.values())
    return m, s, tuple(sorted(set(seeds) - set(values)))


def _footnote(fig, marks):
    notes = []
    if marks.get("missing"):
        notes.append(f"{MISSING_SEEDS} hatched / hollow: fewer seeds than expected ({'; '.join(marks['missing'])})")
    if marks.get("nan"):
        notes.append(NAN_NOTE + f" ({'; '.join(marks['nan'])})")
    if marks.get("published"):
        notes.append("dotted, hollow squares: published numbers (sources: vlprompt/results/published.json; "
                     "python -m vlprompt.results --with-published lists them) of " + "; ".join(marks["published"]))
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize="x-small", ha="left", va="bottom", wrap=True)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir, name):
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = osp.join(out_dir, f"{name}.{ext}")
        fig.savefig(p, dpi=120, bbox_inches="tight")
        paths.append(p)
    _plt().close(fig)
    return paths


def _grid(n):
    cols = min(4, n)
    return int(math.ceil(n / cols)), cols


def _legend_entries(axes):
    handles, labels = [], []
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    return handles, labels


def _label(k, keys):
    from .records import TEST_SELECTION_MARK

    same = [x for x in keys if x[0] == k[0]]
    tested = k[1].endswith(TEST_SELECTION_MARK)
    if len(same) == 1:
        return f"{k[0]} (selected on test)" if tested else k[0]
    config = k[1].replace(TEST_SELECTION_MARK, "")
    return f"{k[0]} ({config}{', selected on test' if tested else ''})"


def plot_base2new(records, out_dir, metric="accuracy", seeds=DEFAULT_SEEDS, name="base2new_bars", where=""):
    """Base / novel / HM bars per dataset and the average, one colour per method (``seeds``: the expected
    seeds; a bar over fewer is hatched and marked, a NaN value is written ``NaN``). Returns the paths."""
    recs = [r for r in records if r.protocol == "base2new"]
    if not recs:
        return []
    keys = sorted({(r.trainer, r.group_config) for r in recs}, key=lambda k: (_trainer_rank(k[0]), k[1]))
    datasets = _dataset_order({r.dataset for r in recs}, DATASETS_11)
    vals = {}  # key -> dataset -> (b, n, h, bstd, nstd, bmissing, nmissing)
    marks = {"missing": [], "nan": []}
    for k in keys:
        for d in datasets:
            sel = [r for r in recs if (r.trainer, r.group_config) == k and r.dataset == d]
            b = _values([r for r in sel if r.role == "base"], metric)
            n = _values([r for r in sel if r.role == "novel"], metric)
            if not b and not n:
                continue
            bm, bs, bmiss = _seed_stat(b, seeds) if b else (None, None, tuple(seeds))
            nm, ns, nmiss = _seed_stat(n, seeds) if n else (None, None, tuple(seeds))
            h = hm(bm, nm) if bm is not None and nm is not None else None
            vals.setdefault(k, {})[d] = (bm, nm, h, bs, ns, bmiss, nmiss)
            for role, miss in (("base", bmiss), ("novel", nmiss)):
                if miss:
                    marks["missing"].append(f"{_label(k, keys)} {DISPLAY_NAMES.get(d, d)} {role}: seed(s) "
                                            f"{' '.join(map(str, miss))}")
            if any(_nan(x) for x in (bm, nm)):
                marks["nan"].append(f"{_label(k, keys)} {DISPLAY_NAMES.get(d, d)}")
    panels = datasets + ["Average"]
    for k in keys:
        ds = [d for d in datasets if d in vals.get(k, {}) and vals[k][d][2] is not None]
        if ds:
            ab = sum(vals[k][d][0] for d in ds) / len(ds)
            an = sum(vals[k][d][1] for d in ds) / len(ds)
            vals[k]["Average"] = (ab, an, hm(ab, an), None, None, (), ())
    plt = _plt()
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    width = 0.8 / max(1, len(keys))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, d in zip(axes.flat, panels):
        for i, k in enumerate(keys):
            v = vals.get(k, {}).get(d)
            if v is None:
                continue
            xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(3)]
            miss = [v[5], v[6], v[5] or v[6]]
            first = True
            for j in range(3):
                y = v[j]
                if y is None:
                    continue
                if _nan(y):
                    ax.text(xs[j], 0, "NaN", rotation=90, ha="center", va="bottom", fontsize="x-small",
                            color=colors[i % len(colors)])
                    continue
                err = (v[3] if j == 0 else v[4] if j == 1 else None) or 0.0
                ax.bar([xs[j]], [y], width, yerr=[err], capsize=2, color=colors[i % len(colors)],
                       label=_label(k, keys) if first else None, hatch="//" if miss[j] else None,
                       edgecolor="black" if miss[j] else None)
                first = False
                if miss[j]:
                    ax.annotate(MISSING_SEEDS, (xs[j], y), ha="center", va="bottom", fontsize="small")
        ax.set_xticks(range(3))
        ax.set_xticklabels(["Base", "Novel", "HM"])
        ax.set_title(DISPLAY_NAMES.get(d, d))
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = _legend_entries(axes)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Base-to-novel generalization (average: HM of averaged base and novel)" + where)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    _footnote(fig, marks)
    return _save(fig, out_dir, name)


def few_shot_curves(records, metric="accuracy"):
    """The data of :func:`plot_few_shot`: ``(keys, datasets, curves, averaged)``.

    ``curves[key][dataset][K] = (mean, std)`` over seeds (``K = 0``: a zero-shot run filed as
    ``shots_0``), and ``curves[key]["Average"][K] = (mean, None)``: the mean over ``averaged``, the
    datasets for which every method has its whole curve (every one of its shot counts), so that every
    point of the average panel averages the same datasets."""
    recs = [r for r in records if r.protocol == "few_shot" and r.shots is not None]
    keys = sorted({(r.trainer, r.group_config) for r in recs}, key=lambda k: (_trainer_rank(k[0]), k[1]))
    datasets = _dataset_order({r.dataset for r in recs}, DATASETS_11)
    curves = {}
    for k in keys:
        for d in datasets:
            for K in sorted({r.shots for r in recs}):
                v = _values([r for r in recs if (r.trainer, r.group_config) == k and r.dataset == d and r.shots == K],
                            metric)
                if v:
                    curves.setdefault(k, {}).setdefault(d, {})[K] = mean_std(v.values())
    own_shots = {k: {K for c in curves.get(k, {}).values() for K in c} for k in keys}
    averaged = [d for d in datasets if all(own_shots[k] and own_shots[k] <= set(curves.get(k, {}).get(d, {}))
                                           for k in keys)]
    if averaged:
        for k in keys:
            curves.setdefault(k, {})["Average"] = {
                K: (sum(curves[k][d][K][0] for d in averaged) / len(averaged), None) for K in sorted(own_shots[k])}
    return keys, datasets, curves, averaged


def published_few_shot_curves(records, mode="matched", pub=None):
    """The published few-shot curves to draw beside ``records``: ``{name: (key, {panel: {K: accuracy}}, approx)}``.

    ``key`` is the (trainer, config) of the records the published row matches (``methods`` of
    published.json), ``panel`` a dataset of the records or ``"Average"``. Only the published numbers of the
    records' backbone (one backbone; none when the records name none or several) are used: a per-dataset
    row (``few_shot_<x>`` blocks) for the datasets the records have, and an 11-dataset average row (the
    ``few_shot`` block) only when the figure's average panel averages those same 11 datasets. ``mode``:
    "matched" (rows of the methods in the records) or "all" (every stored row that matches a method in
    the records: the same here, as a row without a method of ours has no line to stand beside). ``approx``:
    the average row is one of the ``few_shot`` block's recalled rows (no source of its own; the block says
    ``approximate``)."""
    if not mode:
        return {}
    keys, datasets, curves, averaged = few_shot_curves(records)
    backbones = {r.backbone for r in records if r.protocol == "few_shot" and r.shots is not None}
    if not keys or len(backbones) != 1:
        return {}
    view = published_for(pub if pub is not None else load_published(), backbones.pop())
    if view is None:
        return {}
    block = view.get("few_shot", {})
    average, sources = block.get("average", {}), block.get("sources", {})
    per_dataset = view.get("few_shot_per_dataset", {}).get("per_dataset", {})
    out = {}
    for k in keys:
        for name in _published_for(view, k[0], k[1]):
            if name in out:
                continue
            got = {}
            for d in datasets:
                row = {int(K): v for K, v in per_dataset.get(d, {}).get(name, {}).items() if int(K) > 0}
                if row:
                    got[d] = row
            if name in average and sorted(averaged) == sorted(DATASETS_11):
                got["Average"] = {int(K): v for K, v in average[name].items() if int(K) > 0}
            if got:
                out[name] = (k, got, "Average" in got and name not in sources and bool(block.get("approximate")))
    return out


def plot_few_shot(records, out_dir, metric="accuracy", seeds=DEFAULT_SEEDS, name="few_shot_curves", where="",
                  published=None):
    """Accuracy against shots per class, one panel per dataset and an average panel: one line per method
    (mean over seeds, a band of +-1 std where there are several seeds), and every zero-shot run
    (``shots_0``, e.g. ZeroshotCLIP) as a dashed horizontal reference line at its accuracy. A point over
    fewer seeds than ``seeds`` is hollow, a NaN value is written ``NaN`` at its shot count. Written as
    ``few_shot_curves.png`` and ``.pdf``; returns the paths ([] without few-shot records).
    ``published`` ("matched" / "all", as ``--with-published``): the published curves of
    :func:`published_few_shot_curves` beside the measured ones, in their method's colour, dotted with
    hollow square markers, labelled ``<published name> (published)`` (``(published, approx.)`` for the
    recalled rows); the footnote names their sources."""
    keys, datasets, curves, averaged = few_shot_curves(records, metric)
    if not keys:
        return []
    pub_curves = published_few_shot_curves(records, published) if published and metric == "accuracy" else {}
    recs = [r for r in records if r.protocol == "few_shot" and r.shots is not None]
    missing, marks = {}, {"missing": [], "nan": []}
    for k in keys:
        for d in datasets:
            for K in curves.get(k, {}).get(d, {}):
                got = {r.seed for r in recs if (r.trainer, r.group_config) == k and r.dataset == d and r.shots == K
                       and metric in r.metrics}
                miss = tuple(sorted(set(seeds) - got))
                if miss:
                    missing[(k, d, K)] = miss
                    marks["missing"].append(f"{_label(k, keys)} {DISPLAY_NAMES.get(d, d)} {K}-shot: seed(s) "
                                            f"{' '.join(map(str, miss))}")
                if _nan(curves[k][d][K][0]):
                    marks["nan"].append(f"{_label(k, keys)} {DISPLAY_NAMES.get(d, d)} {K}-shot")
    panels = datasets + (["Average"] if averaged else [])
    titles = {d: DISPLAY_NAMES.get(d, d) for d in datasets}
    titles["Average"] = (f"Average ({len(averaged)} datasets)" if len(averaged) == len(datasets) else
                         f"Average ({len(averaged)} of {len(datasets)} datasets: those every method has)")
    plt = _plt()
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_k = sorted({K for k in keys for c in curves.get(k, {}).values() for K in c if K > 0})
    for ax, d in zip(axes.flat, panels):
        for i, k in enumerate(keys):
            c = curves.get(k, {}).get(d, {})
            color = colors[i % len(colors)]
            if 0 in c:
                ax.axhline(c[0][0], ls="--", lw=1.5, color=color, label=f"{_label(k, keys)} (zero-shot)")
            for K in sorted(c):
                if _nan(c[K][0]):
                    ax.text(K if K > 0 else 1, 0.5, "NaN", transform=ax.get_xaxis_transform(), ha="center",
                            fontsize="x-small", color=color)
            ks = [K for K in sorted(c) if K > 0 and not _nan(c[K][0])]
            if not ks:
                continue
            means = [c[K][0] for K in ks]
            ax.plot(ks, means, marker="o", color=color, label=_label(k, keys))
            hollow = [K for K in ks if (k, d, K) in missing]
            if hollow:
                ax.plot(hollow, [c[K][0] for K in hollow], ls="none", marker="o", markersize=9, markerfacecolor="white",
                        markeredgecolor=color, label=f"{MISSING_SEEDS} fewer seeds")
            stds = [c[K][1] for K in ks]
            if all(sd is not None and sd > 0 for sd in stds):
                ax.fill_between(ks, [m - sd for m, sd in zip(means, stds)], [m + sd for m, sd in zip(means, stds)],
                                color=color, alpha=0.15, lw=0)
        for pname, (k, pc, approx) in pub_curves.items():
            pts = pc.get(d)
            if pts:
                ks = sorted(pts)
                ax.plot(ks, [pts[K] for K in ks], ls=":", marker="s", markerfacecolor="white",
                        color=colors[keys.index(k) % len(colors)],
                        label=f"{pname} (published{', approx.' if approx else ''})")
        if all_k:
            ax.set_xscale("log", base=2)
            ax.set_xticks(all_k)
            ax.set_xticklabels([str(K) for K in all_k])
            ax.minorticks_off()
        ax.set_title(titles[d])
        ax.set_xlabel("shots per class")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = _legend_entries(axes)
    if pub_curves:
        marks["published"] = sorted(pub_curves)
    fig.suptitle("Few-shot classification (mean over seeds; dashed: zero-shot"
                 + ("; dotted: published" if pub_curves else "") + ")" + where)
    fig.tight_layout(rect=(0, 0.1 if rows == 1 else 0.06, 1, 0.97))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), bbox_to_anchor=(0.5, 0.0))
    _footnote(fig, marks)
    return _save(fig, out_dir, name)


def _get_key(d, dotted):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _common(per_n):
    """Datasets present for every N (so that every point averages the same datasets)."""
    sets = [set(v) for v in per_n.values() if v]
    return set.intersection(*sets) if sets else set()


def plot_prompt_length(records, out_dir, trainer="APLe", key=None, metric="accuracy", name=None, where=""):
    """Accuracy against N for ``trainer``'s runs; N is ``key`` (default TRAINER.<TRAINER>.N_CTX) read
    from each run's results.json ``config``. Every point averages (over seeds, then over datasets) the
    datasets that were run for every N. A panel is drawn per protocol with at least two values of N;
    returns [] when there is none."""
    key = key or f"TRAINER.{trainer.upper()}.N_CTX"
    out_name = name or f"prompt_length_{trainer}"
    recs = [r for r in records if r.trainer == trainer and _get_key(r.config_dict, key) is not None]
    nval = {id(r): _get_key(r.config_dict, key) for r in recs}

    def seed_mean(sel):
        v = _values(sel, metric)
        return mean_std(v.values())[0] if v else None

    panels = []
    b2n = [r for r in recs if r.protocol == "base2new"]
    per_n = {}
    for n in sorted({nval[id(r)] for r in b2n}):
        for d in {r.dataset for r in b2n if nval[id(r)] == n}:
            sel = [r for r in b2n if nval[id(r)] == n and r.dataset == d]
            b = seed_mean([r for r in sel if r.role == "base"])
            v = seed_mean([r for r in sel if r.role == "novel"])
            if b is not None and v is not None:
                per_n.setdefault(n, {})[d] = (b, v)
    common = _common(per_n)
    if len(per_n) >= 2 and common:
        series = {"Base": {}, "Novel": {}, "HM": {}}
        for n, dd in per_n.items():
            ab = sum(dd[d][0] for d in common) / len(common)
            an = sum(dd[d][1] for d in common) / len(common)
            series["Base"][n], series["Novel"][n], series["HM"][n] = ab, an, hm(ab, an)
        panels.append((f"Base-to-novel ({len(common)} datasets)", series))
    fs = [r for r in recs if r.protocol == "few_shot"]
    fs_series = {}
    for K in sorted({r.shots for r in fs if r.shots is not None}):
        per_n = {}
        for n in sorted({nval[id(r)] for r in fs if r.shots == K}):
            for d in {r.dataset for r in fs if nval[id(r)] == n and r.shots == K}:
                per_n.setdefault(n, {})[d] = seed_mean([r for r in fs if nval[id(r)] == n and r.shots == K
                                                        and r.dataset == d])
        common = _common(per_n)
        if len(per_n) >= 2 and common:
            fs_series[f"{K}-shot ({len(common)} datasets)"] = {
                n: sum(dd[d] for d in common) / len(common) for n, dd in per_n.items()}
    if fs_series:
        panels.append(("Few-shot", fs_series))
    for proto, title in (("cross_dataset", "Cross-dataset"), ("domain_generalization", "Domain generalization")):
        sel = [r for r in recs if r.protocol == proto]
        per_n = {}
        for n in sorted({nval[id(r)] for r in sel}):
            for d in {r.dataset for r in sel if nval[id(r)] == n}:
                per_n.setdefault(n, {})[d] = seed_mean([r for r in sel if nval[id(r)] == n and r.dataset == d])
        common = _common(per_n)
        if len(per_n) >= 2 and common:
            panels.append((f"{title} ({len(common)} targets)", {
                "target average": {n: sum(dd[d] for d in common) / len(common) for n, dd in per_n.items()}}))
    if not panels:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels):
        xs_all = sorted({x for pts in series.values() for x in pts})
        for name, pts in series.items():
            xs = sorted(pts)
            ax.plot(xs, [pts[x] for x in xs], marker="o", label=name)
        ax.set_xticks(xs_all)
        ax.set_xlabel(f"prompt length N ({key})")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{trainer}: accuracy vs prompt length (mean over seeds, then over datasets)" + where)
    fig.tight_layout()
    return _save(fig, out_dir, out_name)


#: figure kind (a protocol's ``figure``) -> ``(plot function, figure name)``
FIGURE_KINDS = {"base2new": (plot_base2new, "base2new_bars"), "few_shot": (plot_few_shot, "few_shot_curves")}


def make_plots(records, out_dir, metric="accuracy", ablation_trainer="APLe", ablation_key=None, protocols=None,
               seeds=DEFAULT_SEEDS, published=None):
    """Every figure of the records: the figure of each registered protocol in ``protocols`` (None: all)
    that declares one, and the prompt-length figure over those protocols' runs. One set per backbone
    (``Record.backbone``); with several backbones the names get ``_<backbone slug>`` and the titles say
    the backbone. ``published`` ("matched" / "all"): published curves in the few-shot figure
    (:func:`plot_few_shot`). Returns the paths written."""
    wanted = set(protocols or PROTOCOL_REGISTRY)
    tree_names = set(wanted) | {s.tree for p in wanted if p in PROTOCOL_REGISTRY
                                for s in PROTOCOL_REGISTRY[p].steps if s.tree}
    records = [r for r in records if r.protocol in tree_names]
    by_bb = {}
    for r in records:
        by_bb.setdefault(r.backbone, []).append(r)
    several = len(by_bb) > 1
    paths = []
    for bb in sorted(by_bb, key=lambda b: (b is None, str(b))):
        recs = by_bb[bb]
        apply_families(recs)
        suffix = ("_" + (_slug(bb) if bb is not None else "backbone_not_recorded")) if several else ""
        where = f"; backbone {bb}" if bb is not None else ""
        done = set()
        for p in PROTOCOL_REGISTRY.values():
            kind = FIGURE_KINDS.get(p.figure) if p.name in wanted else None
            if kind is None or kind in done:
                continue
            done.add(kind)
            fn, name = kind
            extra = {"published": published} if fn is plot_few_shot else {}
            paths += fn(recs, out_dir, metric, seeds=seeds, name=name + suffix, where=where, **extra)
        paths += plot_prompt_length(recs, out_dir, ablation_trainer, ablation_key, metric,
                                    name=f"prompt_length_{ablation_trainer}{suffix}", where=where)
    return paths
