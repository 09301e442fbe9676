"""Result collection, aggregation arithmetic, tables (golden files), legacy logs, plots, parse_test_res.py.

All runs are fabricated results.json / log.txt files in tmp_path. Golden tables are in
tests/golden/results_*; regenerate them with VLPROMPT_UPDATE_GOLDEN=1 after an intended change.
"""
import json
import os
import os.path as osp
import sys

import pytest

from vlprompt.results import build_tables, collect, hm, infer_from_path, mean_std, parse_lines, read_run_log
from vlprompt.results.cli import main as results_main
from vlprompt.results.render import runs_csv, to_csv, to_latex, to_markdown

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
import parse_test_res  # noqa: E402
from tests.helpers import assert_golden

CLASS = {"dtd": "DescribableTextures", "eurosat": "EuroSAT", "imagenet": "ImageNet", "imagenet_a": "ImageNetA",
         "oxford_pets": "OxfordPets"}


def write_result(out, rel, trainer, dataset, seed, acc, subsample="all", shots=16, phase="train", model_dir="",
                 config_name="cfg", n_ctx=None, backbone="ViT-B/16", tag=None):
    d = osp.join(out, rel)
    os.makedirs(d, exist_ok=True)
    config = {"TRAINER": {"NAME": trainer}, "SEED": seed}
    if n_ctx is not None:
        config["TRAINER"]["APLE"] = {"N_CTX": n_ctx}
    data = {
        "schema": 1, "trainer": trainer, "dataset": CLASS.get(dataset, dataset), "subsample": subsample,
        "shots": shots, "seed": seed, "backbone": backbone,
        "config_file": f"configs/trainers/{trainer}/{config_name}.yaml", "config_name": config_name,
        "dataset_config_file": f"configs/datasets/{dataset}.yaml", "config_digest": "0" * 16, "phase": phase,
        "model_dir": model_dir, "load_epoch": None, "split": "test",
        "metrics": {"accuracy": acc, "error_rate": 100 - acc, "macro_f1": acc - 1.0},
        "num_classes": 10, "num_test": 100, "epochs": 5, "wall_time_s": 1.0, "started_at": "", "finished_at": "",
        "output_dir": d, "versions": {}, "config": config,
    }
    if tag is not None:
        data["pretrained_tag"] = tag
    with open(osp.join(d, "results.json"), "w") as f:
        json.dump(data, f)
    return d


def b2n(out, trainer, cfg, dataset, seed, base, novel, **kw):
    tail = f"{dataset}/shots_16/{trainer}/{cfg}/seed{seed}"
    tr = write_result(out, f"base2new/train_base/{tail}", trainer, dataset, seed, base, "base", config_name=cfg, **kw)
    if novel is not None:
        write_result(out, f"base2new/test_new/{tail}", trainer, dataset, seed, novel, "new", phase="eval",
                     model_dir=tr, config_name=cfg, **kw)


def fabricate(out):
    """A small, hand-checkable tree covering every protocol."""
    m = "vit_b16_c2_ep5_batch4_2ctx"
    for s, (bd, nd, be, ne) in {1: (80.0, 60.0, 90.0, 70.0), 2: (82.0, 62.0, 92.0, 72.0),
                                3: (84.0, 64.0, 94.0, 74.0)}.items():
        b2n(out, "MaPLe", m, "dtd", s, bd, nd)
        b2n(out, "MaPLe", m, "eurosat", s, be, ne)
        b2n(out, "APLe", "aple", "dtd", s, bd + 1, nd + 1)
        b2n(out, "APLe", "aple", "eurosat", s, be + 1, None if s == 3 else ne + 1)  # seed 3 novel missing
    xd = "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"
    for s in (1, 2, 3):
        src = write_result(out, f"imagenet/MaPLe/{xd}_16shots/seed{s}", "MaPLe", "imagenet", s, 70.0 + s,
                           config_name=xd)
        for d, base in (("dtd", 45.0), ("eurosat", 48.0), ("imagenet_a", 50.0)):
            write_result(out, f"evaluation/MaPLe/{xd}_16shots/{d}/seed{s}", "MaPLe", d, s, base + s, shots=-1,
                         phase="eval", model_dir=src, config_name=xd)
    for s in (1, 2, 3):
        for k, acc in ((1, 50.0), (16, 70.0)):
            write_result(out, f"few_shot/dtd/MaPLe/{m}/shots_{k}/seed{s}", "MaPLe", "dtd", s, acc + s, shots=k,
                         config_name=m)
        write_result(out, f"few_shot/dtd/ZeroshotCLIP/vit_b16/shots_0/seed{s}", "ZeroshotCLIP", "dtd", s, 44.0,
                     shots=-1, phase="eval", config_name="vit_b16")


def _tables(out, **kw):
    records, problems = collect(out)
    assert problems == []
    return {t.name: t for t in build_tables(records, **kw)}


# --------------------------------------------------------------------------- arithmetic
def test_hm_and_mean_std():
    assert hm(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert hm(0.0, 0.0) == 0.0 and hm(None, 3.0) is None
    m, s = mean_std([70.0, 72.0, 74.0])
    assert m == 72.0 and s == pytest.approx((8 / 3) ** 0.5)  # population std, as parse_test_res.py
    assert mean_std([40.0, 0.0]) == (20.0, 20.0)


def test_average_hm_is_hm_of_averages_not_mean_of_hms(tmp_path):
    out = str(tmp_path)
    for s in (1, 2, 3):
        b2n(out, "MaPLe", "c", "dtd", s, 90.0, 50.0)
        b2n(out, "MaPLe", "c", "eurosat", s, 60.0, 80.0)
    t = _tables(out)["base2new"]
    avg = [r for r in t.rows if r["kind"] == "average"][0]["cells"]
    assert avg[2].mean == pytest.approx(75.0) and avg[3].mean == pytest.approx(65.0)
    assert avg[4].mean == pytest.approx(2 * 75 * 65 / 140)  # 69.64, not the mean of HMs
    mean_of_hms = (hm(90, 50) + hm(60, 80)) / 2  # 66.43
    assert abs(avg[4].mean - mean_of_hms) > 3
    assert f"mean of per-dataset HMs {mean_of_hms:.2f}" in " ".join(t.notes)
    assert avg[2].marks == "‡"  # 2 of 11 datasets


def test_seed_statistics_and_missing_seeds(tmp_path):
    out = str(tmp_path)
    fabricate(out)
    t = _tables(out)["base2new"]
    # dtd MaPLe: base 80/82/84, novel 60/62/64
    dtd = [r["cells"] for r in t.rows if r["cells"][1] == "MaPLe"][0]
    assert dtd[2].mean == pytest.approx(82.0) and dtd[2].std == pytest.approx((8 / 3) ** 0.5) and dtd[2].n == 3
    assert dtd[4].mean == pytest.approx(hm(82.0, 62.0)) and dtd[5] == "3/3"
    aple_eurosat = [r["cells"] for r in t.rows if r["cells"][1] == "APLe" and r["kind"] == "ours"][1]
    assert aple_eurosat[3].n == 2 and aple_eurosat[3].missing == (3,) and aple_eurosat[3].marks == "†"
    assert aple_eurosat[5] == "2/3 †"
    assert "APLe: seed(s) 3 missing for EuroSAT novel" in t.notes
    # --seeds 1 2: nothing is missing any more and seed 3 is left out
    records, _ = collect(out)
    t12 = {x.name: x for x in build_tables([r for r in records if r.seed in (1, 2)], seeds=(1, 2))}["base2new"]
    dtd12 = [r["cells"] for r in t12.rows if r["cells"][1] == "MaPLe"][0]
    assert dtd12[2].mean == pytest.approx(81.0) and not dtd12[2].missing


def test_transfer_and_few_shot_tables(tmp_path):
    out = str(tmp_path)
    fabricate(out)
    ts = _tables(out)
    xd = ts["cross_dataset"]
    assert xd.columns == ["Method", "ImageNet (source)", "DTD", "EuroSAT", "Average", "Seeds"]
    row = xd.rows[0]["cells"]
    assert row[1].mean == pytest.approx(72.0) and row[2].mean == pytest.approx(47.0)
    assert row[4].mean == pytest.approx((47.0 + 50.0) / 2) and row[4].marks == "‡"  # targets only
    dg = ts["domain_generalization"]
    assert dg.columns == ["Method", "ImageNet (source)", "ImageNet-A", "Average", "Seeds"]
    assert dg.rows[0]["cells"][2].mean == pytest.approx(52.0)
    fs = ts["few_shot_average"]
    assert fs.columns == ["Method", "0 (zero-shot)", "1-shot", "16-shot"]
    cells = {r["cells"][0]: r["cells"] for r in fs.rows}
    assert cells["MaPLe"][2].mean == pytest.approx(52.0) and cells["MaPLe"][3].mean == pytest.approx(72.0)
    assert cells["ZeroshotCLIP"][1].mean == pytest.approx(44.0) and cells["ZeroshotCLIP"][2].empty
    assert {"few_shot_0shots", "few_shot_1shots", "few_shot_16shots"} <= set(ts)


def test_published_beside_ours(tmp_path):
    out = str(tmp_path)
    fabricate(out)
    ts = _tables(out, published="matched")
    b = ts["base2new"]
    pub = [r for r in b.rows if r["kind"] == "published"]
    labels = [r["cells"][1] for r in pub]
    # DTD, EuroSAT, Average: MaPLe's own row, then DePT's re-run of MaPLe (named so, tests/test_published_numbers.py)
    assert labels == ["MaPLe [published]", "MaPLe (re-run in the DePT paper) [published]"] * 3
    assert [c.mean for c in pub[-2]["cells"][2:5]] == [82.28, 75.14, 78.55]
    assert [c.mean for c in pub[0]["cells"][2:5]] == [80.36, 59.18, 68.16]
    assert any("APLe's own tables were not available" in n for n in b.notes)
    xd = [r for r in ts["cross_dataset"].rows if r["kind"] == "published"][0]["cells"]
    assert xd[0] == "MaPLe [published]" and xd[1].mean == 70.72 and xd[4].mean == 66.30
    assert not [r for r in _tables(out)["base2new"].rows if r["kind"] == "published"]
    allp = _tables(out, published="all")["base2new"]
    assert any(r["cells"][1] == "PromptSRC [published]" for r in allp.rows)


def test_recipe_family_rows(tmp_path):
    """CoOp's ImageNet run (50-epoch config) is shown in the main CoOp row, with a note."""
    out = str(tmp_path)
    for s in (1, 2, 3):
        b2n(out, "CoOp", "vit_b16_ctxv1", "dtd", s, 80.0, 50.0)
        b2n(out, "CoOp", "vit_b16_ep50_ctxv1", "imagenet", s, 76.0, 68.0)
    t = _tables(out)["base2new"]
    assert {r["cells"][1] for r in t.rows} == {"CoOp"}
    assert any("runs with vit_b16_ep50_ctxv1 (ImageNet 16-shot) are shown in the vit_b16_ctxv1 row" in n
               for n in t.notes)
    # the same config run on its own keeps its own row
    out2 = str(tmp_path / "solo")
    for s in (1, 2, 3):
        b2n(out2, "CoOp", "vit_b16_ep50_ctxv1", "imagenet", s, 76.0, 68.0)
        b2n(out2, "CoOp", "vit_b16_ep50_ctxv1", "dtd", s, 76.0, 68.0)
    labels = {r["cells"][1] for r in _tables(out2)["base2new"].rows}
    assert labels == {"CoOp"}
    assert "CoOp = CoOp:vit_b16_ep50_ctxv1" in " ".join(_tables(out2)["base2new"].notes)


# --------------------------------------------------------------------------- golden tables
def test_tablesassert_golden(tmp_path):
    out = str(tmp_path / "output")
    fabricate(out)
    ts = _tables(out, published="matched")
    assert_golden("results_base2new.md", to_markdown(ts["base2new"]))
    assert_golden("results_base2new.csv", to_csv(ts["base2new"]))
    assert_golden("results_base2new.tex", to_latex(ts["base2new"]))
    assert_golden("results_cross_dataset.md", to_markdown(ts["cross_dataset"]))
    assert_golden("results_domain_generalization.md", to_markdown(ts["domain_generalization"]))
    assert_golden("results_few_shot_average.md", to_markdown(ts["few_shot_average"]))
    assert_golden("results_few_shot_1shots.csv", to_csv(ts["few_shot_1shots"]))
    records, _ = collect(out)
    assert_golden("results_runs.csv", runs_csv(records).replace(out, "OUT"))


def test_results_cli_writes_files(tmp_path, capsys):
    out = str(tmp_path / "output")
    fabricate(out)
    rep = str(tmp_path / "report")
    assert results_main([out, "--out", rep, "--with-published", "--protocol", "base2new", "cross_dataset"]) == 0
    files = sorted(os.listdir(rep))
    assert files == ["base2new.csv", "base2new.md", "base2new.tex", "cross_dataset.csv", "cross_dataset.md",
                     "cross_dataset.tex", "runs.csv"]
    assert results_main([out, "--protocol", "domain_generalization", "--no-std"]) == 0
    text = capsys.readouterr().out
    assert "### Domain generalization from ImageNet" in text and "| MaPLe | 72.00 † " not in text
    assert "| MaPLe | 72.00 | 52.00 | 52.00 ‡ | 3/3 |" in text
    assert results_main([str(tmp_path / "nothing_here")]) == 2


# --------------------------------------------------------------------------- paths and legacy logs
def test_infer_from_path():
    assert infer_from_path("/o/base2new/test_new/dtd/shots_16/MaPLe/cfg/seed2") == dict(
        protocol="base2new", role="novel", dataset="dtd", shots=16, trainer="MaPLe", config="cfg", seed=2, backbone=None)
    assert infer_from_path("/o/few_shot/dtd/CoOp/vit_b16/shots_4/seed1")["protocol"] == "few_shot"
    assert infer_from_path("/o/imagenet/CoOp/vit_b16_ep50_16shots/seed1") == dict(
        protocol="transfer", role="source", dataset="imagenet", trainer="CoOp", config="vit_b16_ep50", shots=16,
        seed=1, backbone=None)
    # CoOp's own trees, with the nctx folder
    assert infer_from_path("/o/evaluation/CoOp/vit_b16_ep50_16shots/nctx16_cscFalse_ctpend/imagenet_r/seed3") == dict(
        protocol="domain_generalization", role="target", dataset="imagenet_r", trainer="CoOp",
        config="vit_b16_ep50/nctx16_cscFalse_ctpend", shots=16, seed=3, backbone=None)
    assert infer_from_path("/o/dtd/CoOp/rn50_4shots/nctx16_cscFalse_ctpend/seed1")["protocol"] == "few_shot"
    assert infer_from_path("/o/somewhere/else/seed1") is None


LOG_NEW = """Loading trainer: CoOp
epoch [1/2] batch [1/1] loss 1.0
=> result
* accuracy: 11.1%
Finish training
Deploy the last-epoch model
=> result
* total: 1,881
* correct: 1,727
* accuracy: 91.8%
* error: 8.2%
* macro_f1: 91.5%
Elapsed: 0:01:00
"""
LOG_OLD = LOG_NEW.replace("Finish training", "Finished training").replace("91.8%", "91.81%")
LOG_EVAL = """Loading weights to prompt_learner from "x/prompt_learner/model.pth.tar-5" (epoch = 5)
Evaluate on the *test* set
=> result
* total: 100
* accuracy: 75.25%
* error: 24.75%
* macro_f1: 70.0%
"""


def test_legacy_log_parsing_both_spellings(tmp_path):
    lines = LOG_NEW.splitlines()
    assert parse_lines(lines, ("accuracy", "error", "macro_f1")) == {"accuracy": 91.8, "error": 8.2, "macro_f1": 91.5}
    assert parse_lines(LOG_OLD.splitlines()) == {"accuracy": 91.81}
    assert parse_lines(LOG_EVAL.splitlines()) == {}
    assert parse_lines(LOG_EVAL.splitlines(), signals=("=> result",)) == {"accuracy": 75.25}
    out = str(tmp_path / "output")
    for s, text in ((1, LOG_NEW), (2, LOG_OLD)):
        d = osp.join(out, f"base2new/train_base/dtd/shots_16/CoOp/c/seed{s}")
        os.makedirs(d)
        open(osp.join(d, "log.txt"), "w").write(text)
        e = osp.join(out, f"base2new/test_new/dtd/shots_16/CoOp/c/seed{s}")
        os.makedirs(e)
        open(osp.join(e, "log.txt"), "w").write(LOG_EVAL)
    # a re-run rotated the first log away: the newest log with a result wins
    d1 = osp.join(out, "base2new/train_base/dtd/shots_16/CoOp/c/seed1")
    os.rename(osp.join(d1, "log.txt"), osp.join(d1, "log.txt-2024-01-01-00-00-00"))
    open(osp.join(d1, "log.txt"), "w").write("crashed before any result\n")
    metrics, path, kind = read_run_log(d1)
    assert metrics == {"accuracy": 91.8, "error_rate": 8.2, "macro_f1": 91.5} and kind == "train"
    assert path.endswith("log.txt-2024-01-01-00-00-00")
    records, problems = collect(out)
    assert problems == [] and len(records) == 4 and {r.origin for r in records} == {"log"}
    t = {x.name: x for x in build_tables(records, seeds=(1, 2))}["base2new"]
    cells = t.rows[0]["cells"]
    assert cells[2].mean == pytest.approx((91.8 + 91.81) / 2) and cells[3].mean == pytest.approx(75.25)
    # an unfinished run is reported, not silently dropped
    d3 = osp.join(out, "base2new/train_base/dtd/shots_16/CoOp/c/seed3")
    os.makedirs(d3)
    open(osp.join(d3, "log.txt"), "w").write("epoch [1/5]\n")
    _, problems = collect(out)
    assert problems == [(d3, "log.txt has no result (unfinished run?)")]


def test_runs_outside_the_tree_are_placed_from_fields(tmp_path):
    out = str(tmp_path)
    write_result(out, "mine/a/seed1", "MaPLe", "dtd", 1, 80.0, subsample="base", config_name="c")
    write_result(out, "mine/b/seed1", "MaPLe", "dtd", 1, 60.0, subsample="new", phase="eval", model_dir="/m",
                 config_name="c")
    write_result(out, "mine/c", "MaPLe", "dtd", 1, 60.0, phase="eval", config_name="c")  # ambiguous
    records, problems = collect(out)
    assert sorted((r.protocol, r.role) for r in records) == [("base2new", "base"), ("base2new", "novel")]
    assert all(r.inferred for r in records)
    assert len(problems) == 1 and "do not name a protocol" in problems[0][1]


@pytest.mark.parametrize("src", ["caltech101", "toy_shapes"])
def test_a_transfer_source_run_on_another_source_is_never_filed_as_few_shot(tmp_path, capsys, src):
    """Issue 26 item 4: the source run of a cross-dataset sweep on another source than ImageNet has the shape
    of a CoOp-tree few-shot run (``<d>/<T>/<cfg>_16shots/seed<S>``), and an older engine recorded it with
    protocol null. Target runs evaluated on its model name it as their model_dir: it is the transfer source,
    whichever --source the results tool is given, and no few-shot table is made of it."""
    out = str(tmp_path)
    sdir = write_result(out, f"{src}/CoOp/c_16shots/seed1", "CoOp", src, 1, 81.0, config_name="c")
    write_result(out, "evaluation/CoOp/c_16shots/dtd/seed1", "CoOp", "dtd", 1, 44.0, shots=-1, phase="eval",
                 model_dir=sdir, config_name="c")
    records, problems = collect(out)
    assert problems == []
    assert sorted((r.protocol, r.role, r.dataset) for r in records) == [
        ("cross_dataset", "target", "dtd"), ("transfer", "source", src)]
    assert results_main([out, "--protocol", "cross_dataset", "few_shot", "--seeds", "1"]) == 0
    text = capsys.readouterr().out
    assert "Cross-dataset transfer" in text and "Few-shot" not in text
    # told the source, the table shows its column
    assert results_main([out, "--protocol", "cross_dataset", "--seeds", "1", "--source", src]) == 0
    assert "81.00" in capsys.readouterr().out


def test_a_results_json_that_records_a_wrong_protocol_is_refiled_as_the_source(tmp_path):
    out = str(tmp_path)
    sdir = write_result(out, "caltech101/CoOp/c_16shots/seed1", "CoOp", "caltech101", 1, 81.0, config_name="c")
    data = json.load(open(osp.join(sdir, "results.json")))
    json.dump(dict(data, protocol="few_shot", role="test"), open(osp.join(sdir, "results.json"), "w"))
    write_result(out, "evaluation/CoOp/c_16shots/dtd/seed1", "CoOp", "dtd", 1, 44.0, shots=-1, phase="eval",
                 model_dir=sdir, config_name="c")
    records, problems = collect(out)
    assert {(r.protocol, r.role) for r in records} == {("transfer", "source"), ("cross_dataset", "target")}
    assert len(problems) == 1 and "records few_shot/test, but target runs were evaluated" in problems[0][1]


def test_a_training_run_outside_the_tree_is_not_guessed_to_be_few_shot(tmp_path):
    out = str(tmp_path)
    write_result(out, "mine/run1", "CoOp", "caltech101", 1, 81.0, config_name="c")
    records, problems = collect(out)
    assert records == [] and len(problems) == 1
    assert "may be a few-shot run or a transfer source run, so it is not filed" in problems[0][1]


# --------------------------------------------------------------------------- plots
def test_plots_written(tmp_path):
    from vlprompt.results.plots import make_plots

    out = str(tmp_path / "output")
    fabricate(out)
    for n in (2, 4, 8):
        for s in (1, 2):
            for d in ("dtd", "eurosat"):
                b2n(out, "APLe", f"aple_n{n}", d, s, 80.0 + n, 70.0 - n, n_ctx=n)
    records, _ = collect(out)
    paths = make_plots(records, str(tmp_path / "fig"))
    names = sorted(osp.basename(p) for p in paths)
    assert names == ["base2new_bars.pdf", "base2new_bars.png", "few_shot_curves.pdf", "few_shot_curves.png",
                     "prompt_length_APLe.pdf", "prompt_length_APLe.png"]
    for p in paths:
        assert osp.getsize(p) > 1000
    with open([p for p in paths if p.endswith(".png")][0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- parse_test_res.py
def test_parse_test_res_cli(tmp_path, capsys):
    exp = tmp_path / "exp"
    for name, text in (("seed1", LOG_NEW), ("seed2", LOG_OLD.replace("91.81%", "90.00%"))):
        (exp / name).mkdir(parents=True)
        (exp / name / "log.txt").write_text(text)
    assert parse_test_res.main([str(exp)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"Parsing files in {exp}",
        f"file: {exp}/seed1/log.txt. accuracy: 91.80%. ",
        f"file: {exp}/seed2/log.txt. accuracy: 90.00%. ",
        "===",
        f"Summary of directory: {exp}",
        "* accuracy: 90.90% +- 0.90%",
        "===",
    ]
    assert parse_test_res.main([str(exp), "--ci95", "--keyword", "macro_f1"]) == 0
    assert "* macro_f1: 91.50% +- 0.00%" in capsys.readouterr().out
    # --test-log on eval-only logs, --multi-exp over two experiments
    for e, acc in (("a", "40.0"), ("b", "0.0")):
        (tmp_path / "multi" / e / "seed1").mkdir(parents=True)
        (tmp_path / "multi" / e / "seed1" / "log.txt").write_text(f"=> result\n* accuracy: {acc}%\n")
    assert parse_test_res.main([str(tmp_path / "multi"), "--test-log", "--multi-exp"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["Average performance", "* accuracy: 20.00%"]
    # training logs are required without --test-log
    assert parse_test_res.main([str(tmp_path / "multi" / "a")]) == 1
    assert "Nothing found" in capsys.readouterr().err


# --------------------------------------------------------------------------- protocol/role from results.json
def test_protocol_and_role_recorded_in_results_json_win(tmp_path):
    """A results.json that records protocol/role (the engine writes them from describe_run_dir) is placed by
    them, wherever the folder is now; the run fields come from its ``run`` entry."""
    from vlprompt.protocol import describe_run_dir

    out = str(tmp_path / "out")
    src = write_result(out, "imagenet/MaPLe/x_16shots/seed1", "MaPLe", "imagenet", 1, 70.0, config_name="x")
    # a copied run, outside the tree, that recorded where it came from
    moved = write_result(out, "archive/run7", "MaPLe", "dtd", 2, 55.0, subsample="all", phase="eval",
                         model_dir=src, config_name="x")
    data = json.load(open(osp.join(moved, "results.json")))
    run = describe_run_dir("/o/evaluation/MaPLe/x_16shots/imagenet_a/seed2")
    data.update(protocol=run["protocol"], role=run["role"], run=run)
    json.dump(data, open(osp.join(moved, "results.json"), "w"))
    records, problems = collect(out)
    assert problems == []
    by = {r.path: r for r in records}
    r = by[osp.join(moved, "results.json")]
    assert (r.protocol, r.role, r.dataset, r.config, r.shots, r.seed) == (
        "domain_generalization", "target", "imagenet_a", "x", 16, 2)
    assert r.placed_by == "json" and not r.inferred
    assert by[osp.join(src, "results.json")].placed_by == "path"
    # recorded protocol/role that disagree with the folder: results.json wins, and it is reported
    d = write_result(out, "few_shot/dtd/MaPLe/c/shots_4/seed1", "MaPLe", "dtd", 1, 60.0, shots=4, config_name="c")
    data = json.load(open(osp.join(d, "results.json")))
    data.update(protocol="base2new", role="base")
    json.dump(data, open(osp.join(d, "results.json"), "w"))
    records, problems = collect(out)
    r = [x for x in records if x.path == osp.join(d, "results.json")][0]
    assert (r.protocol, r.role, r.dataset, r.shots, r.config) == ("base2new", "base", "dtd", 4, "c")
    assert problems == [(osp.join(d, "results.json"),
                         "results.json records base2new/base but the folder is a few_shot/test folder; using "
                         "results.json")]
    data.update(protocol="b2n")
    json.dump(data, open(osp.join(d, "results.json"), "w"))
    _, problems = collect(out)
    assert problems == [(osp.join(d, "results.json"), "unknown protocol/role b2n/base in results.json")]


def test_rows_follow_the_declared_method_order_or_name_order_with_a_note(tmp_path):
    from vlprompt.engine.methods import method_order
    from vlprompt.results import MethodTable, default_methods
    from vlprompt.results.methods import load_methods

    out = str(tmp_path / "out")
    for t in ("APLe", "CoOp", "MaPLe", "ZeroshotCLIP"):
        b2n(out, t, "c", "dtd", 1, 80.0, 60.0)
    records, _ = collect(out)
    # (a fresh table: the cached one may predate trainers that other tests of this process registered)
    assert load_methods().order == method_order() and default_methods().note is None
    rows = [r["cells"][1] for r in build_tables(records, seeds=(1,))[0].rows if r["kind"] == "ours"]
    declared = [t for t in method_order() if t in ("APLe", "CoOp", "MaPLe", "ZeroshotCLIP")]
    assert rows == declared and rows[0] == "ZeroshotCLIP" and rows[-1] == "APLe"
    broken = MethodTable(note="the method table could not be loaded (ImportError: no torch)")
    t = build_tables(records, seeds=(1,), methods=broken)[0]
    assert [r["cells"][1] for r in t.rows if r["kind"] == "ours"] == ["APLe", "CoOp", "MaPLe", "ZeroshotCLIP"]
    assert "Note: the method table could not be loaded (ImportError: no torch)." in t.notes


def test_failing_method_table_is_said_not_silent(tmp_path, monkeypatch, capsys):
    import builtins

    import vlprompt.results.methods as methods

    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "vlprompt.engine.methods":
            raise ImportError("torch is not installed")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(methods, "_DEFAULT", [])
    out = str(tmp_path / "out")
    b2n(out, "MaPLe", "c", "dtd", 1, 80.0, 60.0)
    assert results_main([out, "--seeds", "1"]) == 0
    cap = capsys.readouterr()
    assert ("note: the method table could not be loaded (ImportError: torch is not installed); trainers are "
            "listed by name") in cap.err
    assert "MaPLe" in cap.out


def test_results_does_not_import_the_sweep():
    import subprocess

    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    code = "import sys, vlprompt.results; print('vlprompt.sweep' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_parse_test_res_counts_a_resumed_run_once(tmp_path, capsys):
    """A resumed run has log.txt (oldest) and log.txt-<timestamp> files: the newest log with a result counts."""
    exp = tmp_path / "exp"
    (exp / "seed1").mkdir(parents=True)
    (exp / "seed1" / "log.txt").write_text("epoch [1/5]\n")  # interrupted
    (exp / "seed1" / "log.txt-2026-01-02-10-00-00").write_text(LOG_NEW.replace("91.8%", "70.0%"))
    (exp / "seed1" / "log.txt-2026-01-03-10-00-00").write_text(LOG_NEW)  # the newest with a result
    (exp / "seed1" / "log.txt-2026-01-04-10-00-00").write_text("epoch [1/5]\n")  # a later restart, unfinished
    (exp / "seed2").mkdir()
    (exp / "seed2" / "log.txt").write_text(LOG_NEW.replace("91.8%", "90.0%"))
    assert parse_test_res.main([str(exp)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:3] == [f"file: {exp}/seed1/log.txt-2026-01-03-10-00-00. accuracy: 91.80%. ",
                          f"file: {exp}/seed2/log.txt. accuracy: 90.00%. "]
    assert lines[-2] == "* accuracy: 90.90% +- 0.90%"
    (exp / "seed3").mkdir()
    assert parse_test_res.main([str(exp)]) == 1
    assert "seed3/log.txt not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- backbones
def test_tables_per_backbone_published_only_beside_its_backbone(tmp_path):
    """Two backbones: one set of tables each (suffixed names, the backbone in the title); the published
    ViT-B/16 numbers only beside ViT-B/16; a SigLIP run in the bb- level and one with a config of its own."""
    out = str(tmp_path / "output")
    m = "vit_b16_c2_ep5_batch4_2ctx"
    for s in (1, 2, 3):
        b2n(out, "MaPLe", m, "dtd", s, 80.0 + s, 60.0 + s)
        # MaPLe on SigLIP through the recipe config + command-line backbone (bb- level)
        tail = f"dtd/shots_16/MaPLe/{m}/bb-ViT-B-16-SigLIP@webli/seed{s}"
        tr = write_result(out, f"base2new/train_base/{tail}", "MaPLe", "dtd", s, 70.0, "base", config_name=m,
                          backbone="ViT-B-16-SigLIP", tag="webli")
        write_result(out, f"base2new/test_new/{tail}", "MaPLe", "dtd", s, 50.0, "new", phase="eval", model_dir=tr,
                     config_name=m, backbone="ViT-B-16-SigLIP", tag="webli")
        # CoOp on SigLIP with its own config (no level): the backbone comes from results.json
        b2n(out, "CoOp", "siglip_b16_ctxv1", "dtd", s, 75.0, 55.0, backbone="ViT-B-16-SigLIP", tag="webli")
    ts = _tables(out, published="matched")
    assert sorted(ts) == ["base2new_vit_b_16", "base2new_vit_b_16_siglip_webli"]
    vit, sig = ts["base2new_vit_b_16"], ts["base2new_vit_b_16_siglip_webli"]
    assert vit.title.endswith("; backbone ViT-B/16") and sig.title.endswith("; backbone ViT-B-16-SigLIP@webli")
    md_vit, md_sig = to_markdown(vit), to_markdown(sig)
    assert "| DTD | MaPLe | 82.00 ± 0.82 | 62.00 ± 0.82 |" in md_vit and "70.00" not in md_vit
    assert "MaPLe [published]" in md_vit and "[published]" not in md_sig
    assert "| DTD | CoOp | 75.00 ± 0.00 | 55.00 ± 0.00 |" in md_sig and "|  | MaPLe | 70.00 ± 0.00 |" in md_sig
    assert "No published numbers are stored for ViT-B-16-SigLIP@webli" in md_sig
    records, _ = collect(out)
    assert {r.backbone for r in records} == {"ViT-B/16", "ViT-B-16-SigLIP@webli"}
    assert ",MaPLe,vit_b16_c2_ep5_batch4_2ctx,ViT-B-16-SigLIP@webli,16,1," in runs_csv(records)
    # CSV and LaTeX of a per-backbone table
    assert to_csv(sig).splitlines()[2].startswith("ours,DTD,MaPLe,70.0000,0.0000,3,")
    assert "\\caption{Base-to-novel generalization (accuracy, \\%, mean $\\pm$ std over seeds); backbone " \
           "ViT-B-16-SigLIP@webli}" in to_latex(sig)
    rep = str(tmp_path / "rep")
    assert results_main([out, "--out", rep, "--format", "md"]) == 0
    assert sorted(os.listdir(rep)) == ["base2new_vit_b_16.md", "base2new_vit_b_16_siglip_webli.md", "runs.csv"]


def test_rn50_few_shot_published_beside_rn50_runs_only(tmp_path):
    """published.json's few_shot_rn50 block (Tip-Adapter's RN50 numbers) appears next to RN50 few-shot results,
    never next to ViT-B/16 ones."""
    out = str(tmp_path / "output")
    for s in (1, 2, 3):
        write_result(out, f"few_shot/dtd/TipAdapter/rn50_dtd/shots_1/seed{s}", "TipAdapter", "dtd", s, 45.0 + s,
                     shots=1, phase="eval", config_name="rn50_dtd", backbone="RN50")
        write_result(out, f"few_shot/dtd/ZeroshotCLIP/vit_b16/bb-RN50/shots_0/seed{s}", "ZeroshotCLIP", "dtd", s,
                     42.0, shots=-1, phase="eval", config_name="vit_b16", backbone="RN50")
        write_result(out, f"few_shot/dtd/TipAdapter/vit_b16_dtd/bb-ViT-B%2F16/shots_1/seed{s}", "TipAdapter", "dtd",
                     s, 55.0, shots=1, phase="eval", config_name="rn50_dtd")
    ts = _tables(out, published="matched")
    assert sorted(ts) == ["few_shot_0shots_rn50", "few_shot_1shots_rn50", "few_shot_1shots_vit_b_16",
                          "few_shot_average_rn50", "few_shot_average_vit_b_16"]
    one = to_markdown(ts["few_shot_1shots_rn50"])
    pub = json.load(open(osp.join(ROOT, "vlprompt", "results", "published.json")))["few_shot_rn50"]["per_dataset"]
    want = pub["dtd"]["Tip-Adapter"]["1"]
    mean11 = sum(pub[d]["Tip-Adapter"]["1"] for d in pub) / 11
    assert f"| Tip-Adapter [published] | *{want:.2f}* | *{mean11:.2f}* |" in one
    assert "| TipAdapter | 47.00 ± 0.82 |" in one and "RN50" in one
    zero = to_markdown(ts["few_shot_0shots_rn50"])
    assert f"| CLIP [published] | *{pub['dtd']['CLIP']['0']:.2f}* |" in zero
    avg = to_markdown(ts["few_shot_average_rn50"])
    assert f"*{mean11:.2f}*" in avg
    for name in ("few_shot_1shots_vit_b_16", "few_shot_average_vit_b_16"):
        assert "Tip-Adapter [published]" not in to_markdown(ts[name])


def test_backbone_of_log_runs_and_legacy_records(tmp_path):
    """Runs without results.json: the backbone from the bb- level, else from the config name's prefix;
    a results.json without pretrained_tag (older records) takes the tag from its config."""
    out = str(tmp_path / "output")
    for rel in ("base2new/train_base/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1",
                "base2new/train_base/dtd/shots_16/VPT/vit_b16_c2_ep5_batch4_4/bb-EVA02-B-16@merged2b_s8b_b131k/seed1",
                "base2new/train_base/dtd/shots_16/Odd/mycfg/seed1"):
        os.makedirs(osp.join(out, rel))
        with open(osp.join(out, rel, "log.txt"), "w") as f:
            f.write("Finish training\n* accuracy: 70.0%\n")
    d = write_result(out, "base2new/train_base/dtd/shots_16/CoOp/x/seed1", "CoOp", "dtd", 1, 60.0, "base",
                     backbone="ViT-B-16", config_name="x")
    data = json.load(open(osp.join(d, "results.json")))
    data["config"]["MODEL"] = {"BACKBONE": {"NAME": "ViT-B-16", "PRETRAINED_TAG": "laion2b_s34b_b88k"}}
    json.dump(data, open(osp.join(d, "results.json"), "w"))
    records, problems = collect(out)
    got = {r.trainer: r.backbone for r in records}
    assert got == {"MaPLe": "ViT-B/16", "VPT": "EVA02-B-16@merged2b_s8b_b131k", "Odd": None,
                   "CoOp": "ViT-B-16@laion2b_s34b_b88k"}
    ts = {t.name: t for t in build_tables(records, ["base2new"], seeds=[1])}
    assert "base2new_backbone_not_recorded" in ts
    assert "Backbone not recorded" in " ".join(ts["base2new_backbone_not_recorded"].notes)


def test_few_shot_published_rows_from_a_named_table_carry_their_own_source(tmp_path):
    """A few-shot average read from a named later table (published.json few_shot.sources) is shown as
    [published] with its own source in the notes; the recalled rows keep [published, approx.] and the
    global note."""
    out = str(tmp_path / "output")
    for s in (1, 2, 3):
        for t, cfg in (("LinearProbeCLIP", "vit_b16"), ("CoOp", "vit_b16")):
            write_result(out, f"few_shot/dtd/{t}/{cfg}/shots_1/seed{s}", t, "dtd", s, 50.0 + s, shots=1,
                         phase="eval", config_name=cfg)
    md = to_markdown(_tables(out, published="matched")["few_shot_average"])
    pub = json.load(open(osp.join(ROOT, "vlprompt", "results", "published.json")))["few_shot"]
    name = "Linear probe CLIP (ViT-B/16, CasPL table)"
    assert f"| {name} [published] | *{pub['average'][name]['1']:.2f}* |" in md
    assert f"- [published] {name}: {pub['sources'][name]}" in md
    assert "| CoOp [published, approx.] |" in md and f"- [published, approx.]: {pub['source']}" in md
