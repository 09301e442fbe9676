"""Sweep planning (protocol presets), the local job runner and Slurm scripts.

Runs use a fabricated repository (config yamls only) and fake commands (``python -c ...``), never
train.py. Golden run lists are in tests/golden/plan_*.txt; regenerate them with
VLPROMPT_UPDATE_GOLDEN=1 after an intended change.
"""
import json
import os
import os.path as osp
import shlex
import stat
import subprocess
import sys

import pytest

from vlprompt.sweep import DATASETS_11, DG_TARGETS, Runner, SweepError, cpu_slots, expand, gpu_slots, plan
from vlprompt.sweep.cli import grid_variants, main as sweep_main
from vlprompt.sweep.protocols import family_config, parse_method, read_max_epoch, registry_specs, route_datasets
from vlprompt.sweep.slurm import SlurmOptions, submit, write_slurm
from tests import procs
from tests.helpers import assert_golden


CONFIGS = {
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx": 5,
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets": 2,
    "CoOp/vit_b16_ctxv1": 200,
    "CoOp/vit_b16_ep50_ctxv1": 50,
    "CoOp/vit_b16": 200,
    "CoOp/vit_b16_ep50": 50,
    "CoOp/vit_b16_ep100": 100,
    "APLe/aple_b2n": 7,
    "APLe/no_epoch": None,  # no OPTIM.MAX_EPOCH: the engine default (10) applies
    "MyTrainer/mine": 3,  # a trainer without a default config in recipes.json
}


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    (root / "configs" / "datasets").mkdir(parents=True)
    for d in DATASETS_11 + DG_TARGETS:
        (root / "configs" / "datasets" / f"{d}.yaml").write_text(f"DATASET:\n  NAME: {d}\n")
    for name, ep in CONFIGS.items():
        p = root / "configs" / "trainers" / f"{name}.yaml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("OPTIM:\n  NAME: sgd\n" + (f"  MAX_EPOCH: {ep}\n" if ep is not None else ""))
    return str(root)


def _fmt_plan(runs, out):
    lines = []
    for r in runs:
        dep = f"  after={osp.relpath(r.depends_on, out)}" if r.depends_on else ""
        args = shlex.join(r.train_args("DATA")).replace(out + "/", "OUT/")
        lines.append(f"{r.phase} {osp.relpath(r.output_dir, out)}{dep}\n    {args}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- expansion
def test_base2new_expansion_exact(repo, tmp_path):
    out = str(tmp_path / "out")
    runs = expand("MaPLe", "base2new", ["dtd", "eurosat"], [1, 2], output_root=out, root=repo)
    assert [(r.phase, osp.relpath(r.output_dir, out)) for r in runs] == [
        ("train", "base2new/train_base/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"),
        ("test", "base2new/test_new/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"),
        ("train", "base2new/train_base/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed2"),
        ("test", "base2new/test_new/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed2"),
        ("train", "base2new/train_base/eurosat/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"),
        ("test", "base2new/test_new/eurosat/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"),
        ("train", "base2new/train_base/eurosat/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed2"),
        ("test", "base2new/test_new/eurosat/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed2"),
    ]
    train, test = runs[0], runs[1]
    assert train.train_args("/data") == [
        "--root", "/data", "--seed", "1", "--trainer", "MaPLe",
        "--dataset-config-file", "configs/datasets/dtd.yaml",
        "--config-file", "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
        "--output-dir", train.output_dir,
        "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
    ]
    assert test.train_args("/data")[-9:] == [
        "--model-dir", train.output_dir, "--load-epoch", "5", "--eval-only",
        "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new",
    ]
    assert test.depends_on == train.output_dir and train.depends_on is None
    assert_golden("plan_base2new.txt", _fmt_plan(runs, out))


def test_transfer_expansion_exact(repo, tmp_path):
    out = str(tmp_path / "out")
    runs = expand("MaPLe", "cross_dataset", ["dtd", "eurosat"], [1], output_root=out, root=repo)
    assert [(r.phase, osp.relpath(r.output_dir, out)) for r in runs] == [
        ("train", "imagenet/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/seed1"),
        ("test", "evaluation/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/dtd/seed1"),
        ("test", "evaluation/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/eurosat/seed1"),
    ]
    assert runs[0].opts == ["DATASET.NUM_SHOTS", "16"]
    for t in runs[1:]:
        args = t.train_args("D")
        assert "DATASET.NUM_SHOTS" not in args  # full test split of the target
        assert args[args.index("--load-epoch") + 1] == "2" and "--eval-only" in args
        assert t.depends_on == runs[0].output_dir
    assert_golden("plan_cross_dataset.txt", _fmt_plan(runs, out))
    dg = expand("MaPLe", "domain_generalization", None, [1], output_root=out, root=repo)
    assert [r.dataset for r in dg] == ["imagenet"] + list(DG_TARGETS)
    assert_golden("plan_domain_generalization.txt", _fmt_plan(dg, out))
    # the default cross-dataset targets: the 10 others
    xd = expand("MaPLe", "cross_dataset", None, [1], output_root=out, root=repo)
    assert [r.dataset for r in xd[1:]] == [d for d in DATASETS_11 if d != "imagenet"]


def test_few_shot_expansion_and_coop_recipe(repo, tmp_path):
    out = str(tmp_path / "out")
    runs = expand("CoOp", "few_shot", ["dtd", "imagenet"], [1], output_root=out, root=repo, shots=[1, 4, 16])
    assert [(osp.relpath(r.output_dir, out), r.opts) for r in runs] == [
        ("few_shot/dtd/CoOp/vit_b16_ep50/shots_1/seed1", ["DATASET.NUM_SHOTS", "1"]),
        ("few_shot/dtd/CoOp/vit_b16_ep100/shots_4/seed1", ["DATASET.NUM_SHOTS", "4"]),
        ("few_shot/dtd/CoOp/vit_b16/shots_16/seed1", ["DATASET.NUM_SHOTS", "16"]),
        ("few_shot/imagenet/CoOp/vit_b16_ep50/shots_1/seed1", ["DATASET.NUM_SHOTS", "1"]),
        ("few_shot/imagenet/CoOp/vit_b16_ep50/shots_4/seed1", ["DATASET.NUM_SHOTS", "4"]),
        ("few_shot/imagenet/CoOp/vit_b16_ep50/shots_16/seed1", ["DATASET.NUM_SHOTS", "16"]),
    ]
    assert all(r.phase == "train" and r.depends_on is None for r in runs)
    assert_golden("plan_few_shot.txt", _fmt_plan(runs, out))
    # CoOp base2new: ImageNet trains with the 50-epoch config, and its test loads epoch 50
    b2n = expand("CoOp", "base2new", ["imagenet", "dtd"], [1], output_root=out, root=repo)
    assert b2n[0].config == "vit_b16_ep50_ctxv1" and b2n[1].load_epoch == 50
    assert b2n[2].config == "vit_b16_ctxv1" and b2n[3].load_epoch == 200
    assert family_config("CoOp", "base2new", "imagenet", 16, "vit_b16_ep50_ctxv1") == "vit_b16_ctxv1"
    assert family_config("CoOp", "base2new", "dtd", 16, "vit_b16_ep50_ctxv1") is None
    # an explicit config is used everywhere
    exp = expand("CoOp:vit_b16_ep50", "few_shot", ["dtd"], [1], output_root=out, root=repo, shots=[1, 16])
    assert {r.config for r in exp} == {"vit_b16_ep50"}


def test_zero_shot_is_eval_only_without_dependencies(repo, tmp_path):
    out = str(tmp_path / "out")
    b2n = expand("ZeroshotCLIP:CoOp/vit_b16", "base2new", ["dtd"], [1], output_root=out, root=repo)
    assert [r.phase for r in b2n] == ["eval", "eval"]
    assert all(r.depends_on is None and r.model_dir is None for r in b2n)
    assert b2n[0].config_file == "configs/trainers/CoOp/vit_b16.yaml"
    assert "--eval-only" in b2n[0].train_args("D") and "base" in b2n[0].opts and "new" in b2n[1].opts
    fs = expand("ZeroshotCLIP", "few_shot", ["dtd"], [1], output_root=out, root=repo)
    assert [osp.relpath(r.output_dir, out) for r in fs] == ["few_shot/dtd/ZeroshotCLIP/vit_b16/shots_0/seed1"]


def test_load_epoch_from_yaml_options_and_default(repo, tmp_path):
    assert read_max_epoch(osp.join(repo, "configs/trainers/APLe/aple_b2n.yaml")) == 7
    assert read_max_epoch(osp.join(repo, "configs/trainers/APLe/aple_b2n.yaml"), ["OPTIM.MAX_EPOCH", "3"]) == 3
    assert read_max_epoch(osp.join(repo, "configs/trainers/APLe/no_epoch.yaml")) == 10  # Dassl's default
    out = str(tmp_path / "out")
    runs = expand("APLe:aple_b2n", "base2new", ["dtd"], [1], output_root=out, root=repo,
                  opts=["OPTIM.MAX_EPOCH", "3"], tag="_ep3")
    assert runs[1].load_epoch == 3
    assert osp.relpath(runs[0].output_dir, out) == "base2new/train_base/dtd/shots_16/APLe/aple_b2n_ep3/seed1"
    assert runs[0].opts[-2:] == ["OPTIM.MAX_EPOCH", "3"]


def test_plan_shares_imagenet_training_between_xd_and_dg(repo, tmp_path):
    out = str(tmp_path / "out")
    runs = plan(["MaPLe"], ["cross_dataset", "domain_generalization"], ["dtd", "imagenet_a", "imagenet"], [1, 2],
                output_root=out, root=repo)
    trains = [r for r in runs if r.phase == "train"]
    assert len(trains) == 2 and all(r.protocols == ["cross_dataset", "domain_generalization"] for r in trains)
    assert sorted(r.dataset for r in runs if r.phase == "test") == ["dtd", "dtd", "imagenet_a", "imagenet_a"]
    assert route_datasets("base2new", ["dtd", "imagenet_a", "imagenet"]) == ["dtd", "imagenet"]
    with pytest.raises(SweepError, match="domain_generalization"):
        route_datasets("domain_generalization", ["dtd"])


def test_clear_errors(repo, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(SweepError, match="Valid protocols: base2new, cross_dataset, domain_generalization, few_shot"):
        expand("MaPLe", "b2n", output_root=out, root=repo)
    with pytest.raises(SweepError, match="Unknown trainer 'Mapel'. Known trainers: .*MaPLe"):
        expand("Mapel", "base2new", output_root=out, root=repo)
    with pytest.raises(SweepError, match="Available configs for MaPLe: vit_b16_c2_ep5_batch4_2ctx, "):
        expand("MaPLe:nope", "base2new", output_root=out, root=repo)
    with pytest.raises(SweepError, match="No default config for MyTrainer in protocol base2new.*Available configs: mine"):
        expand("MyTrainer", "base2new", output_root=out, root=repo)
    with pytest.raises(SweepError, match=r"default for APLe/base2new \(the method card of trainer APLe\)"):
        expand("APLe", "base2new", output_root=out, root=repo)  # the recipe's config is not in this fake repo
    with pytest.raises(SweepError, match="unknown dataset 'dtdx'.*Available: caltech101"):
        expand("MaPLe", "base2new", ["dtdx"], output_root=out, root=repo)
    with pytest.raises(SweepError, match="empty config"):
        parse_method("MaPLe:")
    assert parse_method("MaPLe:configs/trainers/MaPLe/x.yaml").config == "x"


def test_recipes_come_from_the_registry_and_name_existing_configs():
    """The sweep's defaults are the trainers' RECIPES (no table of its own), and every config they name
    exists in configs/trainers/ of this repository; every protocol of every recipe expands."""
    from vlprompt.engine.methods import load_plugins, method_specs
    from vlprompt.sweep.protocols import registry_specs, repo_root

    root = repo_root()
    assert not osp.exists(osp.join(root, "vlprompt", "sweep", "recipes.json"))
    specs = registry_specs()  # possibly from the cache: it must agree with the live registry
    load_plugins()
    live = method_specs()
    with_recipes = [s.name for s in live]
    assert live == [specs[n] for n in with_recipes]  # the cached cards equal the live ones, field by field
    assert {"CoOp", "MaPLe", "APLe", "ZeroshotCLIP"} <= set(with_recipes)
    assert specs["ZeroshotCLIP"].eval_only and not specs["CoOp"].eval_only
    for name in with_recipes:
        spec = specs[name]
        for protocol, rec in spec.all_recipes().items():
            names = [rec["config"]] + list(rec.get("per_dataset", {}).values()) + list(rec.get("per_shots", {}).values())
            for cfg in names:
                folder, base = cfg.rsplit("/", 1) if "/" in cfg else (spec.config_folder, cfg)
                path = osp.join(root, "configs", "trainers", folder, base + ".yaml")
                assert osp.isfile(path), f"{name}'s card names {cfg} for {protocol}, but {path} is missing"
            runs = expand(name, protocol, None, [1], output_root="/o", root=root)
            assert runs and all(r.trainer == name for r in runs)
            assert all(r.eval_only for r in runs) == spec.eval_only


def test_grid_variants():
    assert grid_variants([]) == [("", [], [])]
    # without a tag every option names the folder; with one, only the grid's options do
    v = grid_variants(["TRAINER.APLE.N_CTX=1,4"], "", ["A", "1"])
    assert v == [("", ["A", "1", "TRAINER.APLE.N_CTX", "1"], ["A", "1", "TRAINER.APLE.N_CTX", "1"]),
                 ("", ["A", "1", "TRAINER.APLE.N_CTX", "4"], ["A", "1", "TRAINER.APLE.N_CTX", "4"])]
    v = grid_variants(["TRAINER.APLE.N_CTX=1,4"], "_mine", ["A", "1"])
    assert v[1] == ("_mine", ["A", "1", "TRAINER.APLE.N_CTX", "4"], ["TRAINER.APLE.N_CTX", "4"])
    with pytest.raises(SweepError):
        grid_variants(["TRAINER.APLE.N_CTX"])


def test_grid_folders_keep_their_names(repo, tmp_path, capsys):
    out = str(tmp_path / "out")
    rc = sweep_main(["--methods", "MaPLe", "--protocol", "base2new", "--datasets", "dtd", "--seeds", "1", "--root",
                     "/d", "--output-root", out, "--repo-root", repo, "--grid", "TRAINER.MAPLE.N_CTX=2,4",
                     "--print-commands", "--only", "train"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(lines) == 2
    for n, line in zip((2, 4), lines):
        assert f"/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx_n_ctx{n}/seed1 " in line
        assert line.endswith(f"DATASET.SUBSAMPLE_CLASSES base TRAINER.MAPLE.N_CTX {n}")


def test_p1_options_never_land_in_the_default_folder(repo, tmp_path, capsys):
    """A run with trailing options gets its own folder, so a finished default run is not taken for it."""
    out = str(tmp_path / "out")
    default = expand("CoOp", "base2new", ["dtd"], [1], output_root=out, root=repo)
    os.makedirs(default[0].output_dir)
    open(default[0].result_file(), "w").write("{}")
    variant = expand("CoOp", "base2new", ["dtd"], [1], output_root=out, root=repo,
                     opts=["TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"])
    assert osp.relpath(variant[0].output_dir, out) == \
        "base2new/train_base/dtd/shots_16/CoOp/vit_b16_ctxv1_class_token_positionmiddle/seed1"
    assert default[0].is_complete() and not variant[0].is_complete()
    assert variant[1].model_dir == variant[0].output_dir
    # a tag names the variant instead (the user's promise); values unsafe in a path are hashed
    tagged = expand("CoOp", "base2new", ["dtd"], [1], output_root=out, root=repo, opts=["A.B", "x"], tag="_mid")
    assert tagged[0].config == "vit_b16_ctxv1_mid"
    odd = expand("CoOp", "base2new", ["dtd"], [1], output_root=out, root=repo, opts=["A.B", "a b/c"])
    odd2 = expand("CoOp", "base2new", ["dtd"], [1], output_root=out, root=repo, opts=["A.B", "a b/d"])
    assert odd[0].config.startswith("vit_b16_ctxv1_opts-") and odd[0].config != odd2[0].config
    # the CLI: --opts without --tag -> its own folder, and the default run's completion is not reused
    rc = sweep_main(["--methods", "CoOp", "--protocol", "base2new", "--datasets", "dtd", "--seeds", "1", "--root",
                     "/d", "--output-root", out, "--repo-root", repo, "--print-commands", "--opts",
                     "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"])
    cap = capsys.readouterr()
    assert rc == 0 and len(cap.out.splitlines()) == 2 and "skip" not in cap.err
    rc = sweep_main(["--methods", "CoOp", "--protocol", "base2new", "--datasets", "dtd", "--seeds", "1", "--root",
                     "/d", "--output-root", out, "--repo-root", repo, "--print-commands"])
    cap = capsys.readouterr()
    assert rc == 0 and len(cap.out.splitlines()) == 1 and "Results exist at" in cap.err


def test_p2_load_epoch_follows_the_effective_max_epoch(repo, tmp_path, capsys):
    out = str(tmp_path / "out")
    runs = expand("MaPLe", "base2new", ["dtd"], [1], output_root=out, root=repo, opts=["OPTIM.MAX_EPOCH", "2"])
    assert runs[1].load_epoch == 2 and runs[0].config == "vit_b16_c2_ep5_batch4_2ctx_max_epoch2"
    xd = expand("MaPLe", "cross_dataset", ["dtd"], [1], output_root=out, root=repo, opts=["OPTIM.MAX_EPOCH", "1"])
    assert xd[1].load_epoch == 1
    # the last value wins, as in yacs; an explicit --load-epoch overrides
    assert read_max_epoch(osp.join(repo, "configs/trainers/APLe/aple_b2n.yaml"),
                          ["OPTIM.MAX_EPOCH", "3", "OPTIM.MAX_EPOCH", "4"]) == 4
    runs = expand("MaPLe", "base2new", ["dtd"], [1], output_root=out, root=repo, load_epoch=3)
    assert runs[1].load_epoch == 3
    with pytest.raises(SweepError, match="OPTIM.MAX_EPOCH must be an integer"):
        expand("MaPLe", "base2new", ["dtd"], [1], output_root=out, root=repo, opts=["OPTIM.MAX_EPOCH", "x"])
    # the bash scripts go through the same code: their print-out follows the options too
    rc = sweep_main(["--methods", "MaPLe", "--protocol", "base2new", "--datasets", "dtd", "--seeds", "1", "--root",
                     "/d", "--output-root", "out", "--repo-root", repo, "--print-commands", "--only", "test",
                     "--opts", "OPTIM.MAX_EPOCH", "2"])
    line = capsys.readouterr().out.strip()
    assert rc == 0 and "--load-epoch 2 --eval-only" in line
    assert "--output-dir out/base2new/test_new/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx_max_epoch2/seed1" in line


def test_dry_run_cli(repo, tmp_path, capsys):
    out = str(tmp_path / "out")
    rc = sweep_main(["--methods", "MaPLe", "--protocol", "base2new", "--datasets", "dtd", "--seeds", "1",
                     "--root", "/data", "--output-root", out, "--repo-root", repo, "--dry-run"])
    text = capsys.readouterr().out
    assert rc == 0 and "# plan: 2 runs, 0 already complete, 2 to run" in text
    assert "--load-epoch 5 --eval-only" in text and "train.py --root /data --seed 1" in text
    assert not osp.exists(out)  # nothing ran, nothing written
    rc = sweep_main(["--methods", "Nope", "--protocol", "base2new", "--root", "/d", "--repo-root", repo, "--dry-run"])
    assert rc == 2 and "Known trainers" in capsys.readouterr().err


# --------------------------------------------------------------------------- runner with fake jobs
# The fake job: records CUDA_VISIBLE_DEVICES and start/end times, sleeps, writes results.json,
# and fails for datasets named in FAIL_ON.
FAKE = r"""
import json, os, sys, time
a = sys.argv[1:]
out = a[a.index('--output-dir') + 1]
ds = os.path.basename(a[a.index('--dataset-config-file') + 1])[:-5]
t0 = time.time()
time.sleep(float(os.environ.get('FAKE_SLEEP', '0.3')))
rec = {'gpu': os.environ.get('CUDA_VISIBLE_DEVICES'), 'start': t0, 'end': time.time(), 'args': a}
with open(os.environ['FAKE_RECORD'], 'a') as f:
    f.write(json.dumps(rec) + '\n')
print('fake run', out)
if ds in os.environ.get('FAIL_ON', '').split(',') and '--eval-only' not in a:
    print('boom', file=sys.stderr)
    sys.exit(3)
os.makedirs(out, exist_ok=True)
json.dump({'metrics': {'accuracy': 50.0}}, open(os.path.join(out, 'results.json'), 'w'))
"""


def _fake_prefix():
    return [sys.executable, "-c", FAKE]


def _records(path):
    with open(path) as f:
        return [json.loads(l) for l in f]


def test_runner_one_job_per_gpu_and_skip_completed(repo, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    rec = str(tmp_path / "rec.jsonl")
    monkeypatch.setenv("FAKE_RECORD", rec)
    runs = expand("MaPLe", "few_shot", ["dtd", "eurosat", "ucf101"], [1, 2], output_root=out, root=repo, shots=[1])
    # two runs already complete: they must not run again
    for r in runs[:2]:
        os.makedirs(r.output_dir)
        open(r.result_file(), "w").write("{}")
    log = []

    class Stream:
        def write(self, s):
            log.append(s)

        def flush(self):
            pass

    runner = Runner(runs, "/data", gpu_slots("0,1"), output_root=out, prefix=_fake_prefix(), poll=0.02,
                    stream=Stream())
    assert runner.run() == 0
    got = _records(rec)
    assert len(got) == 4
    assert {g["gpu"] for g in got} == {"0", "1"}
    for gpu in ("0", "1"):
        spans = sorted((g["start"], g["end"]) for g in got if g["gpu"] == gpu)
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"two jobs overlapped on GPU {gpu}"
    ran = {g["args"][g["args"].index("--output-dir") + 1] for g in got}
    assert ran == {r.output_dir for r in runs[2:]}
    text = "".join(log)
    assert "2 already complete, 4 to run on 2 slot(s) (gpu0, gpu1)" in text
    assert text.count("START") == 4 and text.count("OK ") == 4
    # per-job log with the command and the job's output
    job_log = osp.join(out, "sweep_logs", osp.relpath(runs[2].output_dir, out) + ".log")
    content = open(job_log).read()
    assert "CUDA_VISIBLE_DEVICES=" in content and "fake run" in content
    status = json.load(open(osp.join(out, "sweep_logs", "sweep_status.json")))
    assert status["counts"] == {"complete": 2, "ok": 4}
    # resuming: everything is complete now, nothing runs
    assert Runner(runs, "/data", gpu_slots("0,1"), output_root=out, prefix=_fake_prefix(), poll=0.02,
                  stream=Stream()).run() == 0
    assert len(_records(rec)) == 4


def test_runner_failures_dependencies_and_exit_status(repo, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    rec = str(tmp_path / "rec.jsonl")
    monkeypatch.setenv("FAKE_RECORD", rec)
    monkeypatch.setenv("FAKE_SLEEP", "0.1")
    monkeypatch.setenv("FAIL_ON", "dtd")
    runs = expand("MaPLe", "base2new", ["dtd", "eurosat"], [1], output_root=out, root=repo)
    runner = Runner(runs, "/data", cpu_slots(2), output_root=out, prefix=_fake_prefix(), poll=0.02)
    assert runner.run() == 1
    st = {osp.relpath(j.run.output_dir, out): j for j in runner.states()}
    assert st["base2new/train_base/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"].status == "failed"
    assert st["base2new/test_new/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"].status == "skipped"
    assert st["base2new/train_base/eurosat/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"].status == "ok"
    assert st["base2new/test_new/eurosat/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1"].status == "ok"
    # the test started after its training run ended
    got = {g["args"][g["args"].index("--output-dir") + 1]: g for g in _records(rec)}
    tr, te = runs[2].output_dir, runs[3].output_dir
    assert got[te]["start"] >= got[tr]["end"]
    assert runs[1].output_dir not in got  # the skipped test never ran
    text = capsys.readouterr().out
    assert "1 failed job(s):" in text and "FAILED  train base2new dtd" in text and "| boom" in text
    assert "1 job(s) skipped because a dependency did not succeed:" in text
    # CPU slots leave CUDA_VISIBLE_DEVICES as it was
    assert all(g["gpu"] == os.environ.get("CUDA_VISIBLE_DEVICES") for g in got.values())


def test_runner_cli_end_to_end(repo, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "rec.jsonl"))
    monkeypatch.setenv("FAKE_SLEEP", "0.05")
    monkeypatch.setenv("FAIL_ON", "eurosat")
    cmd = shlex.join(_fake_prefix())
    rc = sweep_main(["--methods", "MaPLe", "--protocol", "cross_dataset", "--datasets", "dtd", "--seeds", "1",
                     "--root", "/d", "--output-root", out, "--repo-root", repo, "--command", cmd, "--jobs", "2",
                     "--poll", "0.02"])
    assert rc == 0
    assert osp.isfile(osp.join(out, "evaluation/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/dtd/seed1/"
                                    "results.json"))
    with pytest.raises(ValueError, match="twice"):
        gpu_slots("0,0")


# --------------------------------------------------------------------------- slurm
def test_slurm_scripts(repo, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    runs = expand("MaPLe", "base2new", ["dtd", "eurosat"], [1, 2], output_root=out, root=repo)
    os.makedirs(runs[0].output_dir)
    open(runs[0].result_file(), "w").write("{}")  # complete: left out of the arrays
    opts = SlurmOptions(partition="gpu", time="02:00:00", account="proj", max_parallel=4, array_max=2,
                        setup=["source venv/bin/activate"], extra=["--qos=normal"])
    sdir = str(tmp_path / "slurm")
    paths = write_slurm(runs, "/data", ["python", "train.py"], "/repo", sdir, opts)
    names = [osp.basename(p) for p in paths]
    # 3 pending trains in arrays of at most 2, 4 tests in arrays of 2
    assert names == ["submit.sh", "train0.sbatch", "train1.sbatch", "test0.sbatch", "test1.sbatch"]
    train0 = open(paths[1]).read()
    for line in ["#SBATCH --array=0-1%4", "#SBATCH --partition=gpu", "#SBATCH --time=02:00:00",
                 "#SBATCH --account=proj", "#SBATCH --gres=gpu:1", "#SBATCH --qos=normal",
                 "source venv/bin/activate", "cd /repo", 'if [ -f "$OUT/results.json" ]']:
        assert line in train0
    assert "  0)  # train base2new dtd 16-shot MaPLe/vit_b16_c2_ep5_batch4_2ctx seed2" in train0  # dtd seed1 is done
    assert "CMD=(python train.py --root /data --seed 2 --trainer MaPLe" in train0
    test0 = open(paths[3]).read()
    assert "--load-epoch 5 --eval-only" in test0 and "DEP=" + runs[0].output_dir in test0
    assert "#SBATCH --array=0-1%4" in test0
    sub = open(paths[0]).read()
    assert sub.count("sbatch --parsable") == 4 and "--dependency=afterany:" in sub
    for p in paths:
        assert subprocess.run(["bash", "-n", p]).returncode == 0, f"{p} is not valid bash"
    # submission through a fake sbatch that prints job ids and records its arguments
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "sbatch_calls"
    fake = bindir / "sbatch"
    fake.write_text(f'#!/bin/bash\necho "$@" >> {calls}\necho $((100 + $(wc -l < {calls})))\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    ok, text = submit(paths[0])
    assert ok and "submitted train0.sbatch: job 101" in text
    lines = calls.read_text().splitlines()
    assert lines[0].endswith("train0.sbatch") and lines[1].endswith("train1.sbatch")
    assert "--dependency=afterany:101:102" in lines[2] and lines[2].endswith("test0.sbatch")


def test_slurm_cli_prints_script_without_sbatch(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    out = str(tmp_path / "out")
    rc = sweep_main(["--methods", "MaPLe", "--protocol", "cross_dataset", "--datasets", "dtd", "--seeds", "1",
                     "--root", "/d", "--output-root", out, "--repo-root", repo, "--slurm", "--partition", "p",
                     "--slurm-dir", str(tmp_path / "s"), "--slurm-dependency", "afterok",
                     "--command", "python train.py"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "##### " + str(tmp_path / "s" / "submit.sh") in text and "--dependency=afterok:" in text
    assert "#SBATCH --partition=p" in text and "not submitted (sbatch not found on PATH)" in text


# --------------------------------------------------------------------------- the real train.py
TINY_COOP = """DATALOADER:
  TRAIN_X:
    BATCH_SIZE: 4
  TEST:
    BATCH_SIZE: 16
  NUM_WORKERS: 0
OPTIM:
  NAME: "sgd"
  LR: 0.002
  MAX_EPOCH: 1
  LR_SCHEDULER: "cosine"
MODEL:
  BACKBONE:
    NAME: "test-vit-tiny"
TRAINER:
  COOP:
    N_CTX: 4
    PREC: "fp32"
USE_CUDA: False
"""


def test_sweep_runs_real_train_py_and_results_reads_it(tmp_path, capsys):
    """base2new on a miniature DTD with CoOp and the tiny test backbone: the test phase loads the
    train phase's last checkpoint (epoch 1, read from the yaml) and both write results.json."""
    from tests.dataset_fixtures import make_dtd
    from vlprompt.results import build_tables, collect

    repo_root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    repo = tmp_path / "repo"
    (repo / "configs" / "trainers" / "CoOp").mkdir(parents=True)
    (repo / "configs" / "datasets").mkdir()
    (repo / "configs" / "datasets" / "dtd.yaml").write_text(
        open(osp.join(repo_root, "configs", "datasets", "dtd.yaml")).read())
    (repo / "configs" / "trainers" / "CoOp" / "tiny.yaml").write_text(TINY_COOP)
    data = tmp_path / "data"
    make_dtd(str(data))
    out = str(tmp_path / "out")
    cmd = shlex.join([*procs.command(), osp.join(repo_root, "train.py")])  # train.py, forked (tests/procs.py)
    rc = sweep_main(["--methods", "CoOp:tiny", "--protocol", "base2new", "--datasets", "dtd", "--seeds", "1",
                     "--root", str(data), "--output-root", out, "--repo-root", str(repo), "--command", cmd,
                     "--poll", "0.1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    test_dir = osp.join(out, "base2new/test_new/dtd/shots_16/CoOp/tiny/seed1")
    res = json.load(open(osp.join(test_dir, "results.json")))
    assert res["phase"] == "eval" and res["subsample"] == "new" and res["load_epoch"] == 1
    assert "model.pth.tar-1" in open(osp.join(test_dir, "log.txt")).read()
    records, problems = collect(out)
    assert problems == [] and sorted(r.role for r in records) == ["base", "novel"]
    table = build_tables(records, seeds=(1,))[0]
    assert table.name == "base2new" and table.rows[0]["cells"][1] == "CoOp"


def test_sweep_stops_its_jobs_when_terminated(repo, tmp_path):
    """SIGTERM to the sweep stops the running jobs (they run in their own sessions) and exits 143."""
    import signal
    import time

    out = str(tmp_path / "out")
    pidfile = tmp_path / "child.pid"
    child = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    cmd = shlex.join([sys.executable, "-c", child])
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlprompt.sweep", "--methods", "MaPLe", "--protocol", "few_shot", "--datasets", "dtd",
         "--shots", "1", "--seeds", "1", "--root", "/d", "--output-root", out, "--repo-root", repo,
         "--command", cmd, "--poll", "0.05"],
        cwd=osp.dirname(osp.dirname(osp.abspath(__file__))), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while not (pidfile.exists() and pidfile.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    child_pid = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "interrupted (SIGTERM): stopping 1 running job(s)" in text and "1 failed job(s)" in text
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)


# --------------------------------------------------------------------------- stopping a sweep (real signals)
# A fake train.py that starts a grandchild in its process group, records both pids, and sleeps; the run
# with seed S ignores the signals named in IGNORE_S (e.g. SIGINT,SIGTERM) so that escalation is needed.
SLEEPER = r"""
import os, signal, subprocess, sys, time
a = sys.argv[1:]
seed = a[a.index('--seed') + 1]
for name in os.environ.get('IGNORE_' + seed, '').split(','):
    if name:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
gc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
tmp = os.path.join(os.environ['PIDDIR'], seed + '.tmp')
open(tmp, 'w').write(f'{os.getpid()} {gc.pid}')
os.replace(tmp, os.path.join(os.environ['PIDDIR'], seed + '.pid'))
time.sleep(120)
"""

# The sweep itself: two such runs on two slots, through the Runner and the exit path of __main__.
DRIVER = r"""
import json, sys
from vlprompt.sweep import Runner, cpu_slots, expand
from vlprompt.sweep.__main__ import _quiet_stdout
repo, out, prefix, grace = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
runs = expand("MyTrainer:mine", "few_shot", ["dtd"], [1, 2], output_root=out, root=repo, shots=[1], specs={})
rc = Runner(runs, "/d", cpu_slots(2), output_root=out, prefix=prefix, poll=0.05, grace=grace).run()
_quiet_stdout()
sys.exit(rc)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_sweep(repo, tmp_path, ignore, stdout):
    import time

    piddir = tmp_path / "pids"
    piddir.mkdir()
    env = dict(os.environ, PIDDIR=str(piddir), PYTHONPATH=osp.dirname(osp.dirname(osp.abspath(__file__))))
    env.update({f"IGNORE_{s}": v for s, v in ignore.items()})
    prefix = json.dumps([sys.executable, "-c", SLEEPER])
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, repo, str(tmp_path / "out"), prefix, "0.5"],
                            stdout=stdout, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 60
    while len(list(piddir.glob("*.pid"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    pids = [int(p) for f in sorted(piddir.glob("*.pid")) for p in f.read_text().split()]
    assert len(pids) == 4, proc.stderr.read() if proc.poll() is not None else "jobs did not start"
    return proc, pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_with_a_broken_stdout_pipe_stops_every_job(repo, tmp_path):
    """`sweep | tee log`, Ctrl-C: tee is gone (stdout is a broken pipe), the sweep still stops both jobs'
    process groups (the one that ignores SIGINT by SIGTERM), says so on stderr and exits 130."""
    import signal

    proc, pids = _start_sweep(repo, tmp_path, {"1": "SIGINT"}, subprocess.PIPE)
    proc.stdout.close()  # the reader of the pipe dies first, as tee does on Ctrl-C
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert "sweep interrupted by SIGINT: stopped 2 running job(s)" in err
    assert "stdout is closed (broken pipe)" in err and "Traceback" not in err
    assert not any(_alive(p) for p in pids)
    status = json.load(open(tmp_path / "out" / "sweep_logs" / "sweep_status.json"))
    assert sorted(j["status"] for j in status["jobs"]) == ["interrupted", "interrupted"]
    # the job that ignored SIGINT was ended by SIGTERM, the other by SIGINT (Python re-raises it)
    rcs = sorted(j["rc"] for j in status["jobs"])
    assert rcs == sorted([-signal.SIGINT, -signal.SIGTERM])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_escalates_to_sigkill_for_a_job_that_ignores_both(repo, tmp_path):
    """Not piped: SIGTERM to the sweep; a job ignoring SIGINT and SIGTERM is killed after the grace period,
    its grandchild with it; the sweep exits 143."""
    import signal

    log = open(tmp_path / "sweep.out", "w")
    proc, pids = _start_sweep(repo, tmp_path, {"1": "SIGINT,SIGTERM", "2": "SIGINT"}, log)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    log.close()
    assert proc.returncode == 143, err
    assert "sweep interrupted by SIGTERM" in err
    out = open(tmp_path / "sweep.out").read()
    assert "interrupted (SIGTERM): stopping 2 running job(s)" in out and "2 failed job(s)" in out
    assert not any(_alive(p) for p in pids)
    status = json.load(open(tmp_path / "out" / "sweep_logs" / "sweep_status.json"))
    assert sorted(j["rc"] for j in status["jobs"]) == sorted([-signal.SIGKILL, -signal.SIGTERM])


# --------------------------------------------------------------------------- scripts/ (through the sweep)
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _bash(*args, env=None):
    e = dict(os.environ, DRY_RUN="1", PYTHON=procs.executable())  # the sweep's planner, forked (tests/procs.py)
    e.update(env or {})
    p = subprocess.run(["bash", *args], cwd=ROOT, env=e, capture_output=True, text=True)
    return p.returncode, p.stdout.splitlines(), p.stderr


def test_method_wrappers_are_one_exec_line_without_defaults():
    scripts = osp.join(ROOT, "scripts")
    assert not osp.exists(osp.join(scripts, "lib", "prompt_protocols.sh"))
    n = 0
    for method in sorted(os.listdir(scripts)):
        folder = osp.join(scripts, method)
        if not osp.isdir(folder) or method == "lib":
            continue
        assert not osp.exists(osp.join(folder, "config.sh")), method
        for name in sorted(os.listdir(folder)):
            if name == "prompt_length.sh":
                continue
            code = [ln for ln in open(osp.join(folder, name)).read().splitlines()
                    if ln.strip() and not ln.startswith("#") and ln != "set -euo pipefail"]
            assert len(code) == 1 and code[0].startswith('exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" '), \
                (method, name, code)
            assert "vit_b16" not in code[0] and "configs/" not in code[0], (method, name)  # no config of its own
            n += 1
    assert n >= 7 * 8


def test_run_sh_follows_the_options_p1_p2():
    """The bash path goes through the sweep: trailing options name the folder, and the test loads the
    epoch the options set (not the yaml's)."""
    rc, lines, err = _bash("scripts/coop/base2new.sh", "/DATA", "dtd", "1", "OPTIM.MAX_EPOCH", "2")
    assert rc == 0, err
    tr, te = lines
    cfg = "vit_b16_ctxv1_max_epoch2"
    assert f"--output-dir output/base2new/train_base/dtd/shots_16/CoOp/{cfg}/seed1 " in tr
    assert f"--model-dir output/base2new/train_base/dtd/shots_16/CoOp/{cfg}/seed1 --load-epoch 2 --eval-only" in te
    assert tr.endswith("DATASET.SUBSAMPLE_CLASSES base OPTIM.MAX_EPOCH 2")
    # the generic entry: several seeds, '--' before the options, all datasets of a protocol
    rc, lines, err = _bash("scripts/run.sh", "MaPLe", "xd_train", "/DATA", "1", "2", "--", "OPTIM.MAX_EPOCH", "1")
    assert rc == 0 and len(lines) == 2 and all("imagenet/MaPLe/" in ln and "_max_epoch1_16shots/" in ln
                                               for ln in lines), err
    rc, lines, err = _bash("scripts/run.sh", "VPT", "domain_generalization", "/DATA", "all", "3")
    assert rc == 0 and len(lines) == 5 and "evaluation/VPT/vit_b16_c2_ep5_batch4_4_16shots/imagenet_r/seed3" in lines[-1]
    rc, lines, err = _bash("scripts/run.sh", "CoOp", "few_shot", "/DATA", "dtd,eurosat", "1",
                           env={"SHOTS_LIST": "2", "LOADEP": "9"})
    assert rc == 0 and [ln.split("few_shot/")[1].split("/")[0] for ln in lines] == ["dtd", "eurosat"]
    # APLe's prompt-length ablation and the uni-modal MuDPT stay expressible
    rc, lines, err = _bash("scripts/aple/prompt_length.sh", "/DATA", "dtd", "1", env={"NCTX_LIST": "4 16"})
    assert rc == 0 and len(lines) == 4 and "APLe/vit_b16_c16_ep5_batch4_16ctx.yaml" in lines[-1]
    rc, lines, err = _bash("scripts/mudpt/base2new.sh", "/DATA", "dtd", "1", env={"TRAINER": "UMuDPT"})
    assert rc == 0 and "--trainer UMuDPT" in lines[0] and "UMuDPT/vit_b16_bz4_ep5_nctx2_depth9.yaml" in lines[0]


def test_run_sh_errors_are_one_line():
    rc, _, err = _bash("scripts/run.sh", "CoOp", "b2n", "/DATA")
    assert rc == 2 and err.startswith("Error: unknown protocol 'b2n'") and "Traceback" not in err
    rc, _, err = _bash("scripts/run.sh", "CoOp", "base2new", "/DATA", "dtd", "1", "OPTIM.MAX_EPOCH")
    assert rc == 2 and "KEY VALUE pairs" in err
    rc, _, err = _bash("scripts/run.sh", "CoOp", "base2new", "/DATA", "dtd", "1", "oops", "x")
    assert rc == 2 and "expected config options" in err
    rc, _, err = _bash("scripts/aple/xd_test.sh", "/DATA", "imagenet", "1")
    assert rc == 2 and "None of the datasets imagenet belongs" in err
    rc, _, err = _bash("scripts/run.sh")
    assert rc == 2 and "METHOD PROTOCOL DATA" in err


def test_method_table_cache(tmp_path, monkeypatch):
    """The sweep reads the trainers' declarations once per change of trainers/ (a JSON cache)."""
    import vlprompt.engine.methods as em
    import vlprompt.sweep.protocols as sp

    monkeypatch.setenv("VLPROMPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sp, "_engine_loaded", lambda: False)  # as in a fresh `python -m vlprompt.sweep`
    monkeypatch.setattr(sp, "_REGISTRY", {})
    fresh = sp.registry_specs()
    cached = json.load(open(sp._cache_path(sp.repo_root())))
    assert cached["key"] == sp._cache_key(sp.repo_root())
    assert {r["name"] for r in cached["specs"]} == set(fresh)

    def boom(*a, **k):
        raise AssertionError("the registry was read although the cache is valid")

    monkeypatch.setattr(em, "method_cards", boom)
    monkeypatch.setattr(sp, "_REGISTRY", {})
    assert sp.registry_specs() == fresh
    # a change under trainers/ (another key) reads the registry again
    monkeypatch.setattr(sp, "_cache_key", lambda root: "changed")
    monkeypatch.setattr(sp, "_REGISTRY", {})
    with pytest.raises(AssertionError, match="the registry was read"):
        sp.registry_specs()


def test_recipes_listing(capsys):
    assert sweep_main(["--recipes"]) == 0
    out = capsys.readouterr().out
    assert "ZeroshotCLIP  (eval only)\n  base2new               CoOp/vit_b16\n" in out
    assert ("  few_shot               vit_b16; per_dataset imagenet: vit_b16_ep50; per_shots 1: vit_b16_ep50, "
            "2: vit_b16_ep100, 4: vit_b16_ep100\n") in out
    with pytest.raises(SystemExit):
        sweep_main(["--methods", "CoOp"])  # --protocol and --root are required for a sweep
    assert "required: --protocol, --root" in capsys.readouterr().err


def test_every_planned_folder_parses_back_to_its_run(tmp_path):
    """The sweep builds folders with vlprompt.protocol.run_dir; the results side parses them with the same
    layouts: for every registered method and protocol the description matches the run."""
    from vlprompt.protocol import describe_run_dir

    out = str(tmp_path / "out")
    runs = []
    for m, spec in registry_specs().items():
        if not spec.recipes:
            continue
        runs += plan([m], list(spec.recipes), None, [2], output_root=out, opts=["OPTIM.MAX_EPOCH", "1"])
    assert len(runs) > 100
    for r in runs:
        got = describe_run_dir(r.output_dir)
        protocol = "transfer" if r.role == "source" else r.protocol
        shots = r.shots if r.role != "target" else 16
        assert got == dict(protocol=protocol, role=r.role, dataset=r.dataset, trainer=r.trainer, config=r.config,
                           shots=shots, seed=2, backbone=None), r.output_dir


def test_another_transfer_source(repo, tmp_path):
    """--source moves the source run (e.g. the toy world's toy_shapes); the results side parses it back
    with the same source."""
    from vlprompt.protocol import describe_run_dir

    out = str(tmp_path / "out")
    runs = expand("MaPLe", "cross_dataset", ["dtd"], [1], output_root=out, root=repo, source="eurosat")
    assert osp.relpath(runs[0].output_dir, out) == "eurosat/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/seed1"
    assert runs[0].dataset == "eurosat" and runs[1].depends_on == runs[0].output_dir
    assert describe_run_dir(runs[0].output_dir, source="eurosat")["role"] == "source"
    with pytest.raises(SweepError, match="cannot also be a target"):
        expand("MaPLe", "cross_dataset", ["eurosat"], [1], output_root=out, root=repo, source="eurosat")


def test_trainers_registered_at_run_time_are_planned(repo, tmp_path):
    """In a process that imported the engine, the live registry counts: a trainer registered by a test or
    a notebook (not in trainers/, so never in the cache) gets its recipe and its eval-only flag."""
    from vlprompt.engine import TRAINER_REGISTRY, TrainerX

    class SweepProbe(TrainerX):
        RECIPES = {"base2new": {"config": "mine"}}
        CONFIG_FOLDER = "MyTrainer"
        EVAL_ONLY = True

    TRAINER_REGISTRY.register(SweepProbe, force=True)
    try:
        runs = expand("SweepProbe", "base2new", ["dtd"], [1], output_root=str(tmp_path), root=repo)
    finally:  # leave the registry as it was (other tests iterate over it)
        TRAINER_REGISTRY._obj_map.pop("SweepProbe", None)
    assert "SweepProbe" not in TRAINER_REGISTRY
    assert [r.phase for r in runs] == ["eval", "eval"] and runs[0].config_file == "configs/trainers/MyTrainer/mine.yaml"


# --------------------------------------------------------------------------- the backbone axis
def _towers(name):
    """Tower kinds as vlprompt.clip.families.tower_info reads them (fixed here: no model is built)."""
    from vlprompt.sweep.backbones import TowerInfo

    clip = TowerInfo(text="causal", vision="clip_vit", clip_towers=True, fp16_weights=True)
    return {
        "ViT-B/16": clip, "ViT-B-16-quickgelu": clip,
        "RN50": TowerInfo(text="causal", vision="resnet", clip_towers=True, fp16_weights=True),
        "ViT-B-16-SigLIP": TowerInfo(text="bidirectional", vision="timm_vit", clip_towers=False, fp16_weights=False),
        "EVA02-B-16": TowerInfo(text="causal", vision="timm_eva", clip_towers=False, fp16_weights=False),
        "PE-Core-B-16": TowerInfo(text="causal", vision="timm_eva", clip_towers=False, fp16_weights=False),
    }[name]


BB = ["ViT-B/16", "ViT-B-16-SigLIP@webli", "EVA02-B-16@merged2b_s8b_b131k"]


def _by(runs, trainer, backbone, role="base"):
    return [r for r in runs if r.trainer == trainer and r.backbone == backbone and r.role == role]


def test_backbone_axis_uses_the_methods_own_configs_or_sets_the_backbone(tmp_path):
    out = str(tmp_path / "out")
    runs = plan(["CoOp", "VPT"], ["base2new"], ["dtd"], [1], output_root=out, backbones=BB, towers=_towers)
    default = plan(["CoOp", "VPT"], ["base2new"], ["dtd"], [1], output_root=out, towers=_towers)
    # ViT-B/16 is the recipes' own backbone: exactly today's runs and folders
    assert {r.output_dir for r in runs if r.backbone == "ViT-B/16"} == {r.output_dir for r in default}
    assert all("MODEL.BACKBONE.NAME" not in r.opts for r in default) and len(runs) == 3 * len(default)
    # CoOp ships siglip_b16_ctxv1 / eva02_b16_ctxv1 beside vit_b16_ctxv1: used as they are
    (sig,) = _by(runs, "CoOp", "ViT-B-16-SigLIP@webli")
    assert sig.config_file == "configs/trainers/CoOp/siglip_b16_ctxv1.yaml" and "MODEL.BACKBONE.NAME" not in sig.opts
    assert osp.relpath(sig.output_dir, out) == "base2new/train_base/dtd/shots_16/CoOp/siglip_b16_ctxv1/seed1"
    (eva,) = _by(runs, "CoOp", "EVA02-B-16@merged2b_s8b_b131k", role="novel")
    assert eva.config_file.endswith("CoOp/eva02_b16_ctxv1.yaml") and eva.load_epoch == 200
    # VPT ships none: its recipe config with the backbone on the command line, in a bb- level, PREC fp16 -> amp
    (vs,) = _by(runs, "VPT", "ViT-B-16-SigLIP@webli")
    assert vs.config_file == "configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml"
    assert vs.opts[-6:] == ["MODEL.BACKBONE.NAME", "ViT-B-16-SigLIP", "MODEL.BACKBONE.PRETRAINED_TAG", "webli",
                            "TRAINER.VPT.PREC", "amp"]
    assert osp.relpath(vs.output_dir, out) == ("base2new/train_base/dtd/shots_16/VPT/vit_b16_c2_ep5_batch4_4/"
                                               "bb-ViT-B-16-SigLIP@webli/seed1")
    (vt,) = _by(runs, "VPT", "ViT-B-16-SigLIP@webli", role="novel")
    assert vt.depends_on == vs.output_dir and vt.model_dir == vs.output_dir and "ViT-B-16-SigLIP" in vt.opts
    assert "on ViT-B-16-SigLIP@webli seed1" in vt.describe()
    assert len({r.output_dir for r in runs}) == len(runs)  # two backbones never share a folder
    # the user's options come after the backbone's (they win), and still name the folder
    (vo,) = _by(plan(["VPT"], ["base2new"], ["dtd"], [1], output_root=out, backbones=BB[1:2], towers=_towers,
                     opts=["TRAINER.VPT.PREC", "fp32"]), "VPT", BB[1])
    assert vo.opts[-2:] == ["TRAINER.VPT.PREC", "fp32"] and "TRAINER.VPT.PREC amp" not in " ".join(vo.opts)
    assert "/vit_b16_c2_ep5_batch4_4_precfp32/bb-ViT-B-16-SigLIP@webli/" in vo.output_dir


def test_backbone_axis_transfer_and_few_shot_keep_their_dependencies(tmp_path):
    out = str(tmp_path / "out")
    runs = plan(["VPT", "ZeroshotCLIP"], ["cross_dataset", "domain_generalization", "few_shot"],
                ["dtd", "imagenet_a"], [1], output_root=out, backbones=["EVA02-B-16@merged2b_s8b_b131k"],
                towers=_towers, few_shot_shots=[2])
    src = [r for r in runs if r.role == "source" and r.trainer == "VPT"]
    assert len(src) == 1 and sorted(src[0].protocols) == ["cross_dataset", "domain_generalization"]
    assert "/bb-EVA02-B-16@merged2b_s8b_b131k/seed1" in src[0].output_dir
    targets = [r for r in runs if r.role == "target" and r.trainer == "VPT"]
    assert {r.dataset for r in targets} == {"dtd", "imagenet_a"}
    assert all(r.depends_on == src[0].output_dir and "EVA02-B-16" in r.opts for r in targets)
    zs = [r for r in runs if r.trainer == "ZeroshotCLIP" and r.protocol == "few_shot"]
    assert len(zs) == 1 and zs[0].config_file == "configs/trainers/CoOp/vit_b16.yaml"  # no CoOp/eva02_b16.yaml
    assert zs[0].output_dir.endswith("/ZeroshotCLIP/vit_b16/bb-EVA02-B-16@merged2b_s8b_b131k/shots_0/seed1")


def test_backbone_axis_refuses_unsupported_methods_at_planning_time(tmp_path, capsys):
    out = str(tmp_path / "out")
    with pytest.raises(SweepError) as e:
        plan(["MaPLe", "CoOp", "MMRL"], ["base2new"], ["dtd"], [1], output_root=out,
             backbones=["RN50", "ViT-B-16-SigLIP@webli"], towers=_towers)
    lines = str(e.value).splitlines()
    assert lines[0] == ("MaPLe cannot run on RN50 (CLIP ResNet: its image tower is resnet); MaPLe supports: CLIP ViT, "
                        "SigLIP/SigLIP2, EVA02/PE-Core, causal text + timm ViT (e.g. MobileCLIP)")
    assert ("MMRL cannot run on ViT-B-16-SigLIP@webli (SigLIP/SigLIP2: its text tower is bidirectional); MMRL "
            "supports: CLIP ViT") in lines
    assert not any(x.startswith("CoOp") for x in lines) and len(lines) == 4  # 3 pairs + the hint
    notes = []
    runs = plan(["MaPLe", "CoOp"], ["base2new"], ["dtd"], [1], output_root=out, backbones=["RN50"], towers=_towers,
                skip_unsupported=True, notes=notes)
    assert {r.trainer for r in runs} == {"CoOp"} and runs[0].config_file.endswith("CoOp/rn50_ctxv1.yaml")
    assert notes == ["refused: " + lines[0]]
    # a backbone without configs of the method needs its tag (unless it is a CLIP name)
    with pytest.raises(SweepError, match=r"VPT on ViT-B-16-SigLIP: .* --backbones ViT-B-16-SigLIP@TAG"):
        plan(["VPT"], ["base2new"], ["dtd"], [1], output_root=out, backbones=["ViT-B-16-SigLIP"], towers=_towers)
    # the CLI: one line per pair, exit 2, nothing planned
    rc = sweep_main(["--methods", "MaPLe", "--protocol", "base2new", "--root", "/DATA", "--datasets", "dtd",
                     "--seeds", "1", "--output-root", out, "--dry-run", "--backbones", "RN50"])
    assert rc == 2 and "Error: MaPLe cannot run on RN50 (CLIP ResNet" in capsys.readouterr().err


def test_backbone_axis_dry_run_shows_the_backbone(tmp_path, capsys, monkeypatch):
    import vlprompt.sweep.protocols as sp

    monkeypatch.setattr(sp, "_default_towers", _towers)
    out = str(tmp_path / "out")
    rc = sweep_main(["--methods", "VPT", "--protocol", "base2new", "--root", "/DATA", "--datasets", "dtd", "--seeds",
                     "1", "--output-root", out, "--dry-run", "--backbones", "default", "EVA02-B-16@merged2b_s8b_b131k"])
    cap = capsys.readouterr()
    assert rc == 0 and "# plan: 4 runs" in cap.out
    assert "train base2new dtd 16-shot VPT/vit_b16_c2_ep5_batch4_4 on ViT-B/16 seed1" in cap.out
    assert "test  base2new dtd 16-shot VPT/vit_b16_c2_ep5_batch4_4 on EVA02-B-16@merged2b_s8b_b131k seed1" in cap.out
    assert "note: VPT vit_b16_c2_ep5_batch4_4 on EVA02-B-16@merged2b_s8b_b131k: TRAINER.VPT.PREC fp16 -> amp" in cap.err
    # resumable: a finished run is complete in the plan
    done = osp.join(out, "base2new/train_base/dtd/shots_16/VPT/vit_b16_c2_ep5_batch4_4/"
                         "bb-EVA02-B-16@merged2b_s8b_b131k/seed1")
    os.makedirs(done)
    open(osp.join(done, "results.json"), "w").write("{}")
    sweep_main(["--methods", "VPT", "--protocol", "base2new", "--root", "/DATA", "--datasets", "dtd", "--seeds", "1",
                "--output-root", out, "--dry-run", "--backbones", "EVA02-B-16@merged2b_s8b_b131k"])
    assert "[1] complete train base2new" in capsys.readouterr().out


def test_tower_info_reads_the_structure_and_caches_it(tmp_path, monkeypatch):
    """The planning-time tower check builds the open_clip config on the meta device (no weights) and reads
    it with the trainers' own tower_kinds; the answer is cached per open_clip/timm version."""
    import vlprompt.clip.families as sb

    monkeypatch.setenv("VLPROMPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sb, "_MEMO", {})
    info = sb.tower_info("ViT-B-16-SigLIP")
    assert (info.text, info.vision, info.clip_towers, info.fp16_weights) == ("bidirectional", "timm_vit", False, False)
    assert info.family == "SigLIP/SigLIP2"
    assert json.load(open(tmp_path / "cache" / "backbones.json"))["entries"]["ViT-B-16-SigLIP"]["text"] == "bidirectional"
    monkeypatch.setattr(sb, "_MEMO", {})
    monkeypatch.setattr(sb, "_compute", lambda name: (_ for _ in ()).throw(AssertionError("not cached")))
    assert sb.tower_info("ViT-B-16-SigLIP") == info
    assert sb.tower_info("hf-hub:timm/ViT-B-16-SigLIP") is None  # read at run time only
    monkeypatch.undo()
    monkeypatch.setenv("VLPROMPT_CACHE_DIR", "off")
    monkeypatch.setattr(sb, "_MEMO", {})
    tiny = sb.tower_info("test-eva02-tiny")
    assert (tiny.text, tiny.vision, tiny.builtin, tiny.family) == ("causal", "timm_eva", True, "EVA02/PE-Core")
    with pytest.raises(ValueError, match="Unknown backbone"):
        sb.tower_info("ViT-B-99")


def test_sweep_backbone_axis_end_to_end_on_a_tiny_siglip(tmp_path, capsys):
    """--backbones with a config written for another backbone: train.py runs it with MODEL.BACKBONE.NAME from
    the command line (in the bb- level), results.json records the backbone and its towers, and the tables
    name it."""
    from tests.dataset_fixtures import make_dtd
    from vlprompt.results import build_tables, collect

    repo_root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    repo = tmp_path / "repo"
    (repo / "configs" / "trainers" / "CoOp").mkdir(parents=True)
    (repo / "configs" / "datasets").mkdir()
    (repo / "configs" / "datasets" / "dtd.yaml").write_text(
        open(osp.join(repo_root, "configs", "datasets", "dtd.yaml")).read())
    (repo / "configs" / "trainers" / "CoOp" / "tiny.yaml").write_text(TINY_COOP)  # evaluated from the feature store
    data = tmp_path / "data"
    make_dtd(str(data))
    out = str(tmp_path / "out")
    cmd = shlex.join([*procs.command(), osp.join(repo_root, "train.py")])  # train.py, forked (tests/procs.py)
    rc = sweep_main(["--methods", "CoOp:tiny", "--protocol", "base2new", "--datasets", "dtd", "--seeds", "1",
                     "--root", str(data), "--output-root", out, "--repo-root", str(repo), "--command", cmd,
                     "--poll", "0.1", "--backbones", "test-siglip-tiny", "--only", "train"])  # the training run only (time)
    text = capsys.readouterr().out
    assert rc == 0, text
    train_dir = osp.join(out, "base2new/train_base/dtd/shots_16/CoOp/tiny/bb-test-siglip-tiny/seed1")
    res = json.load(open(osp.join(train_dir, "results.json")))
    assert res["backbone"] == "test-siglip-tiny" and res["backbone_label"] == "test-siglip-tiny"
    assert res["backbone_family"] == "SigLIP/SigLIP2" and res["backbone_towers"]["text"] == "bidirectional"
    assert res["run"]["backbone"] == "test-siglip-tiny" and res["config"]["MODEL"]["BACKBONE"]["NAME"] == "test-siglip-tiny"
    records, problems = collect(out)
    assert problems == [] and {r.backbone for r in records} == {"test-siglip-tiny"}
    table = build_tables(records, seeds=(1,))[0]
    assert table.name == "base2new" and table.title.endswith("; backbone test-siglip-tiny")


def test_backbone_support_comes_from_the_trainers_declaration():
    """The sweep checks a pair against the trainer's BACKBONE_SUPPORT (read into the sweep's spec); every
    shipped trainer declares it, and a trainer that does not is not checked."""
    from vlprompt.sweep.backbones import describe_support, method_support, support_problem
    from vlprompt.protocol.card import MethodCard

    spec = MethodCard(name="MaPLe", backbones={"text": ["causal"], "vision": ["clip_vit"]})
    support, where = method_support(spec)
    assert where == "the method card of trainer MaPLe" and describe_support(support) == "CLIP ViT"
    assert support_problem("MaPLe", "EVA02-B-16@x", _towers("EVA02-B-16"), support).startswith(
        "MaPLe cannot run on EVA02-B-16@x (EVA02/PE-Core: its image tower is timm_eva); MaPLe supports: CLIP ViT")
    assert method_support(MethodCard(name="NewMethod")) == (None, None)
    from vlprompt.engine import TRAINER_REGISTRY

    specs = {n: s for n, s in registry_specs().items() if TRAINER_REGISTRY.get(n).__module__.startswith("trainers.")}
    assert len(specs) > 15 and all(s.backbones for s in specs.values()), [
        n for n, s in specs.items() if not s.backbones]
    got = {n: describe_support(method_support(s)[0]) for n, s in specs.items()}
    assert got["MaPLe"] == got["VPT"] == got["APLe"] == "CLIP ViT, SigLIP/SigLIP2, EVA02/PE-Core, causal text + timm ViT (e.g. MobileCLIP)"
    assert got["MMRL"] == "CLIP ViT"
    assert "CLIP ResNet" in got["CoOp"] and "other timm trunks" in got["TipAdapterF"]
    assert support_problem("MaPLe", "EVA02-B-16", _towers("EVA02-B-16"), method_support(specs["MaPLe"])[0]) is None
    assert support_problem("UMuDPT", "RN50", _towers("RN50"), method_support(specs["UMuDPT"])[0]).startswith(
        "UMuDPT cannot run on RN50 (CLIP ResNet: its image tower is resnet)")


@pytest.mark.parametrize("src", ["caltech101", "imagenet"])
def test_the_sweep_notes_each_runs_protocol_and_role_for_the_engine(tmp_path, src):
    """Issue 26 item 4: results.json records what the engine reads with vlprompt.protocol.describe_run_dir;
    a transfer source run on caltech101 sits in a folder that alone reads as a CoOp-tree few-shot run. The
    sweep leaves each run's description in its folder before the run starts, so the record is right."""
    from vlprompt.protocol import RUN_NOTE, describe_run_dir, parse_run_dir
    from vlprompt.sweep.protocols import plan, repo_root

    runs = plan(["CoOp"], ["cross_dataset"], ["dtd"], [1], output_root=str(tmp_path), root=repo_root(), source=src)
    source, target = runs
    assert (source.role, target.role) == ("source", "target")
    if src != "imagenet":
        assert parse_run_dir(source.output_dir)["protocol"] == "few_shot"  # what the folder alone says
    for r in runs:
        r.write_note()
        assert osp.isfile(osp.join(r.output_dir, RUN_NOTE))
    got = describe_run_dir(source.output_dir)
    assert (got["protocol"], got["role"], got["dataset"], got["shots"], got["seed"]) == ("transfer", "source", src,
                                                                                         16, 1)
    assert describe_run_dir(target.output_dir)["protocol"] == "cross_dataset"
