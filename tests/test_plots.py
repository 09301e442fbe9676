"""The few-shot figure (vlprompt/results/plots.py plot_few_shot): accuracy against shots, one line per
method, zero-shot runs as dashed horizontal reference lines, an average panel over the datasets every
method has; asserted on the matplotlib objects and the files written (Agg backend)."""
import os

import matplotlib
import pytest

matplotlib.use("Agg", force=True)

from matplotlib.collections import PolyCollection  # noqa: E402

from tests.test_results import write_result  # noqa: E402
from vlprompt.results import collect  # noqa: E402
from vlprompt.results import plots  # noqa: E402

SHOTS = [1, 2, 4, 8, 16]
METHODS = {"CoOp": 60.0, "CoCoOp": 62.0, "MaPLe": 64.0}
ZS = {"dtd": 44.0, "eurosat": 48.0}


def _acc(method, dataset, k, seed):
    return METHODS[method] + (3.0 if dataset == "eurosat" else 0.0) + 2.0 * k ** 0.5 + seed


def _fabricate(out, skip=()):
    """Few-shot runs (1/2/4/8/16 shots x 3 seeds) of three methods and a ZeroshotCLIP run (filed as
    shots_0, 3 seeds) on two datasets; ``skip``: (method, dataset, shots) left out."""
    for d in ZS:
        for m in METHODS:
            for k in SHOTS:
                if (m, d, k) in skip:
                    continue
                for s in (1, 2, 3):
                    write_result(out, f"few_shot/{d}/{m}/cfg/shots_{k}/seed{s}", m, d, s, _acc(m, d, k, s), shots=k,
                                 config_name="cfg")
        for s in (1, 2, 3):
            write_result(out, f"few_shot/{d}/ZeroshotCLIP/vit_b16/shots_0/seed{s}", "ZeroshotCLIP", d, s, ZS[d],
                         shots=-1, phase="eval", config_name="vit_b16")
    records, problems = collect(out)
    assert problems == []
    return records


@pytest.fixture
def figures(monkeypatch):
    """The figures handed to the file writer (kept open for inspection)."""
    seen = {}
    original = plots._save

    def keep(fig, out_dir, name):
        seen[name] = fig
        paths = original(fig, out_dir, name)
        return paths

    monkeypatch.setattr(plots, "_save", keep)
    return seen


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_one_line_per_method_and_the_zero_shot_reference(tmp_path, figures):
    records = _fabricate(str(tmp_path / "out"))
    paths = plots.plot_few_shot(records, str(tmp_path / "fig"))
    assert sorted(os.path.basename(p) for p in paths) == ["few_shot_curves.pdf", "few_shot_curves.png"]
    with open(tmp_path / "fig" / "few_shot_curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "fig" / "few_shot_curves.pdf", "rb") as f:
        assert f.read(5) == b"%PDF-"
    fig = figures["few_shot_curves"]
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert [ax.get_title() for ax in axes] == ["DTD", "EuroSAT", "Average (2 datasets)"]
    for ax, d in zip(axes, ["dtd", "eurosat", None]):
        lines = _lines(ax)
        assert list(lines) == ["ZeroshotCLIP (zero-shot)", "CoOp", "CoCoOp", "MaPLe"]
        for m in METHODS:
            line = lines[m]
            assert [int(x) for x in line.get_xdata()] == SHOTS and line.get_linestyle() == "-"
            datasets = [d] if d else list(ZS)
            expected = [sum(_acc(m, dd, k, s) for dd in datasets for s in (1, 2, 3)) / (3 * len(datasets)) for k in SHOTS]
            assert list(line.get_ydata()) == pytest.approx(expected)
        ref = lines["ZeroshotCLIP (zero-shot)"]
        y_ref = ZS[d] if d else sum(ZS.values()) / 2
        assert ref.get_linestyle() == "--" and list(ref.get_ydata()) == [y_ref, y_ref]
        assert list(ref.get_xdata()) == [0, 1] and ref.get_transform() == ax.get_yaxis_transform()  # spans the axes
        assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in SHOTS]
        assert ax.get_xlabel() == "shots per class" and ax.get_ylabel() == "accuracy (%)"
        # a +-1 std band per method on the dataset panels (3 seeds); none on the average
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == (3 if d else 0)
        # the method lines share one colour per method across panels; the reference is its method's colour
        assert len({lines[m].get_color() for m in METHODS} | {ref.get_color()}) == 4
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ZeroshotCLIP (zero-shot)", "CoOp", "CoCoOp", "MaPLe"]


def test_the_average_panel_averages_the_datasets_every_method_has(tmp_path, figures):
    records = _fabricate(str(tmp_path / "out"), skip={("CoCoOp", "eurosat", 16)})
    plots.plot_few_shot(records, str(tmp_path / "fig"))
    axes = [ax for ax in figures["few_shot_curves"].axes if ax.axison]
    assert axes[2].get_title() == "Average (1 of 2 datasets: those every method has)"
    avg, eurosat = _lines(axes[2]), _lines(axes[1])
    assert list(avg["MaPLe"].get_ydata()) == pytest.approx([_acc("MaPLe", "dtd", k, 2) for k in SHOTS])
    assert list(avg["ZeroshotCLIP (zero-shot)"].get_ydata()) == [ZS["dtd"], ZS["dtd"]]
    assert [int(x) for x in eurosat["CoCoOp"].get_xdata()] == SHOTS[:-1]  # its panel shows what it has


def test_few_shot_curves_data_and_no_figure_without_few_shot_runs(tmp_path):
    records = _fabricate(str(tmp_path / "out"))
    keys, datasets, curves, averaged = plots.few_shot_curves(records)
    assert [k[0] for k in keys] == ["ZeroshotCLIP", "CoOp", "CoCoOp", "MaPLe"] and averaged == datasets == ["dtd", "eurosat"]
    mean, std = curves[("CoOp", "cfg")]["dtd"][4]
    assert mean == pytest.approx(_acc("CoOp", "dtd", 4, 2)) and std == pytest.approx((2 / 3) ** 0.5)  # seeds +1, +2, +3 (population std, as the tables)
    assert curves[("ZeroshotCLIP", "vit_b16")]["dtd"] == {0: (44.0, 0.0)}
    others = [r for r in records if r.protocol != "few_shot"]
    assert plots.plot_few_shot(others, str(tmp_path / "none")) == []
    assert not (tmp_path / "none").exists()
