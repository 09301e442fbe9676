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


# --------------------------------------------------------------------------- issue 26 item 8
def _b2n(out, trainer, d, seed, base, novel, bb="ViT-B/16", level=""):
    tail = f"{d}/shots_16/{trainer}/c/{level}seed{seed}"
    write_result(out, f"base2new/train_base/{tail}", trainer, d, seed, base, subsample="base", config_name="c",
                 backbone=bb)
    write_result(out, f"base2new/test_new/{tail}", trainer, d, seed, novel, subsample="new", phase="eval",
                 model_dir="/m", config_name="c", backbone=bb)


def _bars(ax):
    return [p for p in ax.patches if p.get_height() == p.get_height()]


def test_two_backbones_give_one_figure_each(tmp_path, figures):
    """The second backbone's bars are drawn (in a figure of its own), not dropped or mixed into the first."""
    out = str(tmp_path / "out")
    for s in (1, 2):
        _b2n(out, "CoOp", "dtd", s, 80.0, 60.0)
        _b2n(out, "CoOp", "dtd", s, 70.0, 50.0, bb="RN50", level="bb-RN50/")
    records, problems = collect(out)
    assert problems == [] and {r.backbone for r in records} == {"ViT-B/16", "RN50"}
    paths = plots.make_plots(records, str(tmp_path / "fig"), seeds=(1, 2))
    assert sorted(os.path.basename(p) for p in paths) == [
        "base2new_bars_rn50.pdf", "base2new_bars_rn50.png", "base2new_bars_vit_b_16.pdf", "base2new_bars_vit_b_16.png"]
    for name, (b, n) in (("base2new_bars_vit_b_16", (80.0, 60.0)), ("base2new_bars_rn50", (70.0, 50.0))):
        fig = figures[name]
        dtd = next(ax for ax in fig.axes if ax.get_title() == "DTD")
        assert [p.get_height() for p in _bars(dtd)] == pytest.approx([b, n, 2 * b * n / (b + n)])
        assert fig._suptitle.get_text().endswith("; backbone " + ("ViT-B/16" if b == 80.0 else "RN50"))


def test_figures_follow_the_protocols_asked_for(tmp_path, capsys):
    out = str(tmp_path / "out")
    _fabricate(out)
    _b2n(out, "CoOp", "dtd", 1, 80.0, 60.0)
    records, _ = collect(out)
    only = plots.make_plots(records, str(tmp_path / "a"), protocols=["few_shot"])
    assert sorted(os.path.basename(p) for p in only) == ["few_shot_curves.pdf", "few_shot_curves.png"]
    assert sorted(os.path.basename(p) for p in plots.make_plots(records, str(tmp_path / "b"),
                                                                protocols=["base2new"])) == [
        "base2new_bars.pdf", "base2new_bars.png"]
    from vlprompt.results.cli import main

    assert main([out, "--protocol", "few_shot", "--plots", str(tmp_path / "c")]) == 0
    assert sorted(os.listdir(tmp_path / "c")) == ["few_shot_curves.pdf", "few_shot_curves.png"]


def test_missing_seeds_and_nan_are_shown(tmp_path, figures):
    out = str(tmp_path / "out")
    for s in (1, 2, 3):
        _b2n(out, "CoOp", "dtd", s, 80.0, 60.0)
    _b2n(out, "MaPLe", "dtd", 1, 82.0, 70.0)  # seeds 2 and 3 missing
    for s in (1, 2, 3):  # seed 1's base accuracy is not a number
        _b2n(out, "VPT", "dtd", s, float("nan") if s == 1 else 75.0, 65.0)
    records, problems = collect(out)
    assert problems == []
    plots.make_plots(records, str(tmp_path / "fig"), protocols=["base2new"], seeds=(1, 2, 3))
    fig = figures["base2new_bars"]
    dtd = next(ax for ax in fig.axes if ax.get_title() == "DTD")
    hatched = [p.get_height() for p in dtd.patches if p.get_hatch()]
    assert hatched == pytest.approx([82.0, 70.0, 2 * 82 * 70 / 152])  # MaPLe's three bars, and only those
    assert [t.get_text() for t in dtd.texts].count("†") == 3
    assert [t.get_text() for t in dtd.texts].count("NaN") == 2  # VPT's base and HM, where their bars would stand
    foot = "\n".join(t.get_text() for t in fig.texts)
    assert "MaPLe DTD base: seed(s) 2 3" in foot and "NaN" in foot and "VPT DTD" in foot


# --------------------------------------------------------------------------- issue 24 item 5
ELEVEN = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
          "sun397", "dtd", "eurosat", "ucf101"]


def _eleven(out, trainer, backbone="ViT-B/16", shots=(1, 16)):
    for d in ELEVEN:
        for k in shots:
            write_result(out, f"few_shot/{d}/{trainer}/cfg/shots_{k}/seed1", trainer, d, 1, 50.0 + k, shots=k,
                         config_name="cfg", backbone=backbone)
    records, problems = collect(out)
    assert problems == []
    return records


def test_published_curve_is_drawn_beside_a_method_in_the_records_and_nothing_for_an_absent_one(tmp_path, monkeypatch):
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, name: figures.setdefault(name, fig) and [])  # no files
    records = _eleven(str(tmp_path / "out"), "LPPP")
    pub = plots.published_few_shot_curves(records)
    assert list(pub) == ["LP++ (ViT-B/16, CLIP-SVD table)"]  # no GDA / CLIP-LoRA row: not in the records
    key, curves, approx = pub["LP++ (ViT-B/16, CLIP-SVD table)"]
    assert key == ("LPPP", "cfg") and list(curves) == ["Average"] and approx is False  # a row with its own source
    assert curves["Average"] == {1: 70.35, 2: 72.93, 4: 75.77, 8: 77.94, 16: 80.32}
    plots.plot_few_shot(records, str(tmp_path / "fig"), published="matched")
    fig = figures["few_shot_curves"]
    avg = [ax for ax in fig.axes if ax.axison][-1]
    assert avg.get_title() == "Average (11 datasets)"
    line = _lines(avg)["LP++ (ViT-B/16, CLIP-SVD table) (published)"]
    assert [int(x) for x in line.get_xdata()] == SHOTS and list(line.get_ydata()) == [70.35, 72.93, 75.77, 77.94, 80.32]
    assert line.get_linestyle() == ":" and line.get_color() == _lines(avg)["LPPP"].get_color()
    for ax in [ax for ax in fig.axes if ax.axison][:-1]:  # the published row is an 11-dataset average only
        assert not any("(published)" in label for label in _lines(ax))
    # without --with-published, on another backbone, or with only some of the 11 datasets: nothing
    assert plots.published_few_shot_curves(records, None) == {}
    assert plots.published_few_shot_curves(_eleven(str(tmp_path / "rn"), "LPPP", backbone="ViT-L/14")) == {}
    assert plots.published_few_shot_curves([r for r in records if r.dataset != "ucf101"]) == {}


def test_published_per_dataset_rows_follow_the_datasets_of_the_records(tmp_path):
    out = str(tmp_path / "out")
    for k in (1, 16):
        write_result(out, f"few_shot/dtd/TipAdapterF/rn50/shots_{k}/seed1", "TipAdapterF", "dtd", 1, 50.0, shots=k,
                     config_name="rn50", backbone="RN50")
    records, _ = collect(out)
    pub = plots.published_few_shot_curves(records)
    assert {n: list(c) for n, (_, c, _) in pub.items()} == {"Tip-Adapter-F": ["dtd"]}
    assert pub["Tip-Adapter-F"][1]["dtd"] == {1: 49.65, 2: 53.72, 4: 57.39, 8: 62.71, 16: 66.55}
    assert pub["Tip-Adapter-F"][2] is False


def test_a_recalled_published_average_is_marked_approximate(tmp_path):
    _, curves, approx = plots.published_few_shot_curves(_eleven(str(tmp_path / "out"), "CoOp", shots=(1,)))["CoOp"]
    assert approx is True and curves["Average"][16] == 79.01
