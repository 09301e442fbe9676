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
    assert [(p, m) for p, m, _, _ in steps] == (
        [("fill", "GDA"), ("fill", "CLAP")]
        + [(p, m) for p in ("warm", "per_run") for m in ("GDA", "CLAP") for _ in (1, 4)])
    for p, m, cmd, store in steps:
        assert cmd[1:3] == ["-m", "vlprompt.sweep"]
        args = build_parser().parse_args(cmd[3:])  # the sweep CLI accepts the command as planned
        assert args.methods == [f"{m}:toy"] and args.protocols == ["few_shot"] and args.datasets == ["toy_shapes"]
        assert args.jobs == 1 and args.seeds == [1]
        assert args.shots == [1, 4] if p == "fill" else len(args.shots) == 1 and args.shots[0] in (1, 4)
        assert args.output_root == f"/w/{p}" and args.data_root == "/w/data"
        # only the per-run pass has a store of its own per run, empty and removed after the run
        assert store == (f"/w/stores/{m}_{args.shots[0]}_1" if p == "per_run" else None)
        assert args.opts == (["FEATURES.DIR", store] if store else []) and args.tag == ("bench" if store else "")
    assert len({s for *_, s in steps if s}) == 4
    with_dir = bench.plan(bench.parse_args(["--store-dir", "/s"]), "/w")
    assert with_dir[0][2][-5:] == ["--opts", "FEATURES.DIR", "/s", "--tag", "bench"]
    assert [c[-3] for p, _, c, _ in with_dir if p == "warm"] == ["/s"] * 90
    assert {c[-3] for p, _, c, _ in with_dir if p == "per_run"} == {f"/w/stores/{m}_{k}_{s}" for m in bench.METHODS
                                                                   for k in (1, 2, 4, 8, 16) for s in (1, 2, 3)}
