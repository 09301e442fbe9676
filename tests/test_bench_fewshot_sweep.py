"""benchmarks/bench_fewshot_sweep.py plans the sweep a user runs (the sweep CLI, --jobs 1, one command per
method and pass, the store disabled only in the no_store pass); nothing is run here."""
import os.path as osp
import sys

from vlprompt.sweep.cli import build_parser

BENCH = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import bench_fewshot_sweep as bench  # noqa: E402


def test_full_and_quick_plans():
    full = bench.parse_args([])
    assert (full.methods, full.shots, full.seeds) == (
        ["LPPP", "GDA", "TaskRes", "CLAP", "TwoSFS", "ProLIP"], [1, 2, 4, 8, 16], [1, 2, 3])
    quick = bench.parse_args(["--quick", "--methods", "GDA", "CLAP", "--max-load", "0.5"])
    assert (quick.methods, quick.shots, quick.seeds, quick.max_load) == (["GDA", "CLAP"], [1, 4], [1], 0.5)
    assert bench.parse_args(["--quick", "--seeds", "2", "3"]).seeds == [2, 3]  # explicit values win

    steps = bench.plan(quick, "/w")
    assert [(p, m) for p, m, _ in steps] == [(p, m) for p in ("fill", "warm", "no_store") for m in ("GDA", "CLAP")]
    for p, m, cmd in steps:
        assert cmd[1:3] == ["-m", "vlprompt.sweep"]
        args = build_parser().parse_args(cmd[3:])  # the sweep CLI accepts the command as planned
        assert args.methods == [f"{m}:toy"] and args.protocols == ["few_shot"] and args.datasets == ["toy_shapes"]
        assert (args.shots, args.seeds, args.jobs) == ([1, 4], [1], 1)
        assert args.output_root == f"/w/{p}" and args.data_root == "/w/data"
        assert args.opts == (["TEST.FEATURE_CACHE", "False", "FEATURES.TRAIN_CACHE", "False"] if p == "no_store" else [])
    with_dir = bench.plan(bench.parse_args(["--store-dir", "/s"]), "/w")
    assert with_dir[0][2][-3:] == ["--opts", "FEATURES.DIR", "/s"]
    assert with_dir[-1][2][-7:] == ["--opts", "TEST.FEATURE_CACHE", "False", "FEATURES.TRAIN_CACHE", "False",
                                    "FEATURES.DIR", "/s"]
