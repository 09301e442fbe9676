"""Figures (matplotlib, Agg backend), each written as PNG and PDF.

* ``base2new_bars``: per dataset (and the average), base / novel / HM bars for each method;
* ``few_shot_curves``: accuracy against shots per dataset (and the average over the datasets every
  method has), one line per method; zero-shot runs (shots_0) are drawn as dashed horizontal lines;
* ``prompt_length``: accuracy against the prompt length N for the runs of one trainer whose config
  sets ``TRAINER.<X>.N_CTX`` differently (the N is read from the ``config`` dict of results.json).
"""
import math
import os
import os.path as osp

from ..protocol import DATASETS_11, DISPLAY_NAMES
from .aggregate import _dataset_order, _trainer_rank, _values, apply_families, hm, mean_std

__all__ = ["plot_base2new", "few_shot_curves", "plot_few_shot", "plot_prompt_length", "make_plots"]


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
    same = [x for x in keys if x[0] == k[0]]
    return k[0] if len(same) == 1 else f"{k[0]} ({k[1]})"


def plot_base2new(records, out_dir, metric="accuracy"):
    recs = [r for r in records if r.protocol == "base2new"]
    if not recs:
        return []
    keys = sorted({(r.trainer, r.group_config) for r in recs}, key=lambda k: (_trainer_rank(k[0]), k[1]))
    datasets = _dataset_order({r.dataset for r in recs}, DATASETS_11)
    vals = {}  # key -> dataset -> (b, n, h, bstd, nstd)
    for k in keys:
        for d in datasets:
            sel = [r for r in recs if (r.trainer, r.group_config) == k and r.dataset == d]
            b = _values([r for r in sel if r.role == "base"], metric)
            n = _values([r for r in sel if r.role == "novel"], metric)
            if b and n:
                (bm, bs), (nm, ns) = mean_std(b.values()), mean_std(n.values())
                vals.setdefault(k, {})[d] = (bm, nm, hm(bm, nm), bs, ns)
    panels = datasets + ["Average"]
    for k in keys:
        ds = [d for d in datasets if d in vals.get(k, {})]
        if ds:
            ab = sum(vals[k][d][0] for d in ds) / len(ds)
            an = sum(vals[k][d][1] for d in ds) / len(ds)
            vals[k]["Average"] = (ab, an, hm(ab, an), None, None)
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
            err = [v[3] or 0.0, v[4] or 0.0, 0.0]
            ax.bar(xs, v[:3], width, yerr=err, capsize=2, label=_label(k, keys), color=colors[i % len(colors)])
        ax.set_xticks(range(3))
        ax.set_xticklabels(["Base", "Novel", "HM"])
        ax.set_title(DISPLAY_NAMES.get(d, d))
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = _legend_entries(axes)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Base-to-novel generalization (average: HM of averaged base and novel)")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return _save(fig, out_dir, "base2new_bars")


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


def plot_few_shot(records, out_dir, metric="accuracy"):
    """Accuracy against shots per class, one panel per dataset and an average panel: one line per method
    (mean over seeds, a band of +-1 std where there are several seeds), and every zero-shot run
    (``shots_0``, e.g. ZeroshotCLIP) as a dashed horizontal reference line at its accuracy. Written as
    ``few_shot_curves.png`` and ``.pdf``; returns the paths ([] without few-shot records)."""
    keys, datasets, curves, averaged = few_shot_curves(records, metric)
    if not keys:
        return []
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
            ks = [K for K in sorted(c) if K > 0]
            if not ks:
                continue
            means = [c[K][0] for K in ks]
            ax.plot(ks, means, marker="o", color=color, label=_label(k, keys))
            stds = [c[K][1] for K in ks]
            if all(sd is not None and sd > 0 for sd in stds):
                ax.fill_between(ks, [m - sd for m, sd in zip(means, stds)], [m + sd for m, sd in zip(means, stds)],
                                color=color, alpha=0.15, lw=0)
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
    fig.suptitle("Few-shot classification (mean over seeds; dashed: zero-shot)")
    fig.tight_layout(rect=(0, 0.1 if rows == 1 else 0.06, 1, 0.97))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), bbox_to_anchor=(0.5, 0.0))
    return _save(fig, out_dir, "few_shot_curves")


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


def plot_prompt_length(records, out_dir, trainer="APLe", key=None, metric="accuracy"):
    """Accuracy against N for ``trainer``'s runs; N is ``key`` (default TRAINER.<TRAINER>.N_CTX) read
    from each run's results.json ``config``. Every point averages (over seeds, then over datasets) the
    datasets that were run for every N. A panel is drawn per protocol with at least two values of N;
    returns [] when there is none."""
    key = key or f"TRAINER.{trainer.upper()}.N_CTX"
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
    fig.suptitle(f"{trainer}: accuracy vs prompt length (mean over seeds, then over datasets)")
    fig.tight_layout()
    return _save(fig, out_dir, f"prompt_length_{trainer}")


def make_plots(records, out_dir, metric="accuracy", ablation_trainer="APLe", ablation_key=None):
    apply_families(records)
    paths = []
    paths += plot_base2new(records, out_dir, metric)
    paths += plot_few_shot(records, out_dir, metric)
    paths += plot_prompt_length(records, out_dir, ablation_trainer, ablation_key, metric)
    return paths
