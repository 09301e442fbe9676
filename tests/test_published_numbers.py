"""The published numbers (vlprompt/results/published.json): the invariants its ``_about`` promises, its sources,
the naming of re-runs and host + plug-in rows, and that the rows appear beside ours in a base-to-novel table.

The invariant checks are the guard against a mistyped cell: a base or novel typo breaks its HM or the
average, an HM typo breaks the HM check. The cells that do not recompute in the printed source itself are
listed in ``base2new.printed_inconsistencies`` and must match that list exactly (no more, no fewer).
"""
import json
import os.path as osp
import re

import pytest

from vlprompt.results import build_tables, collect, hm

from tests.test_results import b2n

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PATH = osp.join(ROOT, "vlprompt", "results", "published.json")
DATASETS = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
            "sun397", "dtd", "eurosat", "ucf101"]
HOSTS = {"CoOp": "CoOp", "CoCoOp": "CoCoOp", "KgCoOp": "KgCoOp", "MaPLe": "MaPLe", "PromptSRC": "PromptSRC",
         "CLIP-Adapter": "CLIP_Adapter", "VPT": "VPT"}  # published name -> vlprompt trainer
DEPT_IMAGE = "Koorye/DePT@d4ff4168:examples/base_to_new_performance.png"


@pytest.fixture(scope="module")
def pub():
    with open(PATH) as f:
        return json.load(f)


def _listed(pub):
    return {(e["method"], e["dataset"]) for e in pub["base2new"]["printed_inconsistencies"]}


def hm_violations(per_dataset):
    """(method, dataset) of every cell whose HM is not HM(base, novel) within 0.01."""
    return {(m, d) for m, rows in per_dataset.items() for d, (b, n, h) in rows.items() if abs(hm(b, n) - h) > 0.01}


def average_violations(per_dataset):
    """(method, "average") of every row whose average base or novel is not the mean of its 11 datasets within 0.01."""
    bad = set()
    for m, rows in per_dataset.items():
        for i in (0, 1):
            if abs(sum(rows[d][i] for d in DATASETS) / len(DATASETS) - rows["average"][i]) > 0.01:
                bad.add((m, "average"))
    return bad


def test_every_base2new_row_is_complete(pub):
    per = pub["base2new"]["per_dataset"]
    assert len(per) == 25
    for m, rows in per.items():
        assert list(rows) == DATASETS + ["average"], m
        for d, v in rows.items():
            assert len(v) == 3 and all(isinstance(x, float) and 0 < x < 100 for x in v), (m, d, v)


def test_each_hm_and_average_recomputes_except_the_listed_printed_inconsistencies(pub):
    per = pub["base2new"]["per_dataset"]
    assert hm_violations(per) | average_violations(per) == _listed(pub)
    for m, rows in per.items():  # the average HM is HM of the printed average B and N, always
        assert abs(hm(*rows["average"][:2]) - rows["average"][2]) <= 0.01, m


def test_listed_inconsistencies_are_the_stored_cells_and_really_do_not_recompute(pub):
    per = pub["base2new"]["per_dataset"]
    for e in pub["base2new"]["printed_inconsistencies"]:
        stored = per[e["method"]][e["dataset"]]
        assert stored == e["printed"], e
        if e["dataset"] == "average":
            means = [round(sum(per[e["method"]][d][i] for d in DATASETS) / len(DATASETS), 2) for i in (0, 1)]
            assert means == e["recomputed"][:2] and round(hm(*means), 2) == e["recomputed"][2], e
        else:
            assert round(hm(*stored[:2]), 2) == e["recomputed"][2] != stored[2], e
    assert {(e["method"], e["dataset"]) for e in pub["base2new"]["printed_inconsistencies"]} == {
        ("MaPLe (re-run in the DePT paper)", "fgvc_aircraft"), ("PromptSRC+DePT (CVPR24)", "ucf101"),
        ("CoOp (re-run in the DePT paper)", "average"), ("CoCoOp (re-run in the DePT paper)", "average"),
        (PROMPTKD, "stanford_cars"), (PROMPTKD, "ucf101")}


PROMPTKD = "PromptKD (CVPR24, transductive, ViT-L/14 teacher)"


def test_promptkd_row_is_marked_transductive_and_sourced(pub):
    """PromptKD's published row (ATPrompt's table) is marked transductive in its name, its method entry, its
    average and its source, so that it is never read as an inductive number."""
    per, src = pub["base2new"]["per_dataset"], pub["base2new"]["per_dataset_sources"]
    assert per[PROMPTKD]["average"] == [86.96, 80.73, 83.73]
    assert per[PROMPTKD]["dtd"] == [85.84, 71.37, 77.94]
    assert pub["methods"][PROMPTKD] == {"match": [{"trainer": "PromptKD"}], "transductive": True}
    assert [e["transductive"] for e in pub["base2new"]["average"] if e["key"] == PROMPTKD] == [True]
    assert "arXiv 2403.02781" in src[PROMPTKD] and "TRANSDUCTIVE" in src[PROMPTKD]


@pytest.mark.parametrize("block,n_targets", [("cross_dataset", 10), ("domain_generalization", 4)])
def test_transfer_averages_recompute_over_the_targets(pub, block, n_targets):
    """_about: each 10-target (cross-dataset) and 4-target (DG) average recomputes from its rows, to the digit."""
    for m, v in pub[block]["values"].items():
        targets = [x for d, x in v.items() if d not in ("imagenet", "average")]
        assert len(targets) == n_targets, m
        assert round(sum(targets) / n_targets, 2) == v["average"], (block, m)


def test_the_checks_catch_a_mistyped_cell(pub):
    per = json.loads(json.dumps(pub["base2new"]["per_dataset"]))
    per["VPT+DePT (CVPR24)"]["eurosat"][1] = 73.60  # printed 76.30: digits swapped
    per["KgCoOp (CVPR23)"]["dtd"][2] = 64.53  # printed 64.35
    assert hm_violations(per) - _listed(pub) == {("VPT+DePT (CVPR24)", "eurosat"), ("KgCoOp (CVPR23)", "dtd")}
    assert average_violations(per) - _listed(pub) == {("VPT+DePT (CVPR24)", "average")}


def test_average_entries_equal_the_per_dataset_averages(pub):
    avg = {e["key"]: e for e in pub["base2new"]["average"]}
    for m, rows in pub["base2new"]["per_dataset"].items():
        e = avg[m]
        assert [e["base"], e["novel"], e["hm"]] == rows["average"], m
        assert e["source"], m
    assert len(avg) == len(pub["base2new"]["average"])  # keys unique


def test_every_per_dataset_row_names_its_source_and_can_be_shown(pub):
    b = pub["base2new"]
    assert set(b["per_dataset_sources"]) == set(b["per_dataset"])
    for m, src in b["per_dataset_sources"].items():
        assert re.search(r"arXiv \d{4}\.\d{5}", src), m
        assert "shared" not in src and "specs" not in src, m
        assert m in pub["methods"], m  # so that --with-published can show it
    for m in b["per_dataset"]:
        if m.endswith("(CVPR24)") and "+DePT" in m or "re-run in the DePT paper" in m:
            assert DEPT_IMAGE in b["per_dataset_sources"][m] and "arXiv 2309.07439" in b["per_dataset_sources"][m]


def test_dept_table_rows_host_rerun_and_host_plus_dept(pub):
    """DePT's table: each host's baseline is DePT's re-run (kept apart from the host's own published row) and each
    host + DePT row matches the composed trainer Host+DePT."""
    meth, per, src = pub["methods"], pub["base2new"]["per_dataset"], pub["base2new"]["per_dataset_sources"]
    for name, trainer in HOSTS.items():
        rerun, plus = f"{name} (re-run in the DePT paper)", f"{name}+DePT (CVPR24)"
        assert meth[rerun]["match"] == [{"trainer": trainer}]
        assert meth[plus]["match"] == [{"trainer": f"{trainer}+DePT"}]
        assert "not " + name + "'s published numbers" in src[rerun]
    # spot cells, as printed in the DePT image
    assert per["CoOp+DePT (CVPR24)"]["dtd"] == [83.20, 56.13, 67.04]
    assert per["VPT+DePT (CVPR24)"]["eurosat"] == [93.77, 76.30, 84.14]
    assert per["CLIP-Adapter (re-run in the DePT paper)"]["oxford_flowers"] == [87.80, 73.33, 79.92]
    assert per["PromptSRC+DePT (CVPR24)"]["average"] == [85.19, 76.17, 80.43]
    # SkipTuning's "DePT" column is KgCoOp + DePT; ATPrompt's "DePT" row is CoOp + DePT (said in the sources)
    assert "'DePT (CVPR'24)' column" in src["KgCoOp+DePT (CVPR24)"]
    assert "'DePT (CVPR 24)' row" in src["CoOp+DePT (CVPR24)"]


def test_original_rows_kept_and_reruns_named_as_reruns(pub):
    per, src = pub["base2new"]["per_dataset"], pub["base2new"]["per_dataset_sources"]
    assert per["CoOp"]["caltech101"] == [98.0, 89.81, 93.73] and per["CoOp"]["average"] == [82.69, 63.22, 71.66]
    assert per["CoCoOp"]["sun397"] == [79.74, 76.86, 78.27]
    assert per["MaPLe"]["average"] == [82.28, 75.14, 78.55]
    assert per["PromptSRC"]["dtd"] == [83.37, 62.97, 71.75]
    # the rows that are another paper's run say so in their name
    reruns = {m for m in per if "re-run" in m}
    assert reruns == {f"{h} (re-run in the DePT paper)" for h in HOSTS} | {
        "ProGrad (ViT-B/16, re-run in the KgCoOp paper)", "CoPrompt (re-run in the SkipTuning paper)"}
    assert per["CoPrompt (ICLR24)"]["average"] == [84.0, 77.23, 80.48]
    assert per["CoPrompt (re-run in the SkipTuning paper)"]["average"] == [82.89, 75.32, 78.93]
    assert "ShuvenduRoy/CoPrompt" in src["CoPrompt (ICLR24)"] and "arXiv 2306.01195" in src["CoPrompt (ICLR24)"]
    for m, arxiv in (("KgCoOp (CVPR23)", "2303.13283"), ("TCP (CVPR24)", "2311.18231"),
                     ("ProGrad (ViT-B/16, re-run in the KgCoOp paper)", "2205.14865")):
        assert f"arXiv {arxiv}" in src[m] and "Koorye/SkipTuning@8c4636ed:examples/base_to_new.png" in src[m]


def test_host_and_host_plus_dept_rows_shown_beside_ours(tmp_path):
    out = str(tmp_path)
    for s in (1, 2, 3):
        b2n(out, "CoOp", "vit_b16_ep10_bs4_lr35", "dtd", s, 80.0, 50.0)
        b2n(out, "CoOp+DePT", "vit_b16_ep10_bs4_lr35", "dtd", s, 82.0, 55.0)
    records, problems = collect(out)
    assert problems == []
    t = {t.name: t for t in build_tables(records, published="matched")}["base2new"]
    pub = [r for r in t.rows if r["kind"] == "published"]
    pub_rows = {r["cells"][1]: [c.mean for c in r["cells"][2:5]] for r in pub if r["cells"][5] == ""}  # DTD
    assert list(pub_rows) == ["CoOp [published]", "CoOp (re-run in the DePT paper) [published]",
                              "CoOp+DePT (CVPR24) [published]"]
    assert pub_rows["CoOp [published]"] == [79.44, 41.18, 54.24]
    assert pub_rows["CoOp (re-run in the DePT paper) [published]"] == [79.33, 49.70, 61.11]
    assert pub_rows["CoOp+DePT (CVPR24) [published]"] == [83.20, 56.13, 67.04]
    avg = [r for r in pub if r["cells"][5] == "11/11 datasets"]
    assert {r["cells"][1]: [c.mean for c in r["cells"][2:5]] for r in avg} == {
        "CoOp [published]": [82.69, 63.22, 71.66],
        "CoOp (re-run in the DePT paper) [published]": [81.50, 69.77, 75.18],
        "CoOp+DePT (CVPR24) [published]": [83.66, 71.82, 77.29]}
    assert "MaPLe+DePT (CVPR24) [published]" not in {r["cells"][1] for r in t.rows}
    note = [n for n in t.notes if n.startswith("[published]")][0]
    assert "arXiv 2309.07439" in note and "base2new.per_dataset_sources" in note


# --------------------------------------------------------------------------- few-shot rows (issue 24 item 5)
SHOT_KEYS = {"0", "1", "2", "4", "8", "16"}


def _few_shot_rows(pub):
    """(block, name, {shots: value}) of every few-shot row: the ViT-B/16 averages and the per-dataset blocks."""
    rows = [("few_shot", n, v) for n, v in pub["few_shot"]["average"].items()]
    for key, blk in pub.items():
        if key.startswith("few_shot_"):
            rows += [(key, n, v) for d, per in blk["per_dataset"].items() for n, v in per.items()]
    return rows


def test_every_few_shot_row_has_a_source_numbers_in_range_and_a_registered_trainer(pub):
    import trainers  # noqa: F401  (register)
    from vlprompt.engine import TRAINER_REGISTRY

    registered = set(TRAINER_REGISTRY.registered_names())
    rows = _few_shot_rows(pub)
    assert len(rows) > 30
    sources = pub["few_shot"]["sources"]
    assert set(sources) <= set(pub["few_shot"]["average"])
    for block, name, vals in rows:
        assert vals and set(vals) <= SHOT_KEYS, (block, name)
        assert all(isinstance(x, float) and 0 <= x <= 100 for x in vals.values()), (block, name, vals)
        own = sources.get(name) if block == "few_shot" else None
        assert re.search(r"@ ?[0-9a-f]{7}", own or pub[block]["source"]), (block, name)  # a repository at a commit
        assert name in pub["methods"], name
        for m in pub["methods"][name]["match"]:
            assert m["trainer"] in registered, (name, m)
    # the frozen-feature family's rows, each matched to its trainer and read from a named table
    for name, trainer in (("LP++ (ViT-B/16, CLIP-SVD table)", "LPPP"), ("GDA (ViT-B/16, CLIP-SVD table)", "GDA"),
                          ("CLIP-LoRA (few-shot, ViT-B/16, CLIP-SVD table)", "CLIPLoRA")):
        assert pub["methods"][name]["match"] == [{"trainer": trainer}]
        assert sources[name].startswith("HealthX-Lab/CLIP-SVD:README.md@022b1eda")
        assert list(pub["few_shot"]["average"][name]) == ["1", "2", "4", "8", "16"]
