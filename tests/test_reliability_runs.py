"""A run records only what happened (issue 26): a resume with another config is refused before anything
in the folder changes; keys that are safe to change on resume are applied and recorded. Kill tests use real
processes and signals (helpers shared with tests/test_reliability.py)."""
import json
import os

import pytest
import torch

from tests.helpers import METHOD_YAML, make_image_folder, write_method_yaml
from tests.test_reliability import (  # noqa: F401  (the module-scoped fixtures are shared with test_reliability)
    args_for, data_root, dataset_yaml, kill9, method_yaml, read_until, run_cli, spawn)


def _snapshot(folder):
    """{relative path: (size, mtime_ns, bytes)} of every file under ``folder`` (but the stale lock of the
    killed process, which the next run takes over and releases)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            if f == ".vlprompt.lock":
                continue
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns, open(p, "rb").read())
    return out


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, data_root, dataset_yaml, method_yaml):
    """A run killed (SIGKILL) after its first epoch: the folder holds head/model-last.pth.tar (epoch 1)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    proc = spawn(args_for(data_root, dataset_yaml, method_yaml, out), delay=0.3)
    try:
        read_until(proc, "model-last.pth.tar")
    finally:
        kill9(proc)
    assert (out / "head" / "model-last.pth.tar").is_file() and not (out / "results.json").exists()
    return out


@pytest.fixture()
def killed_copy(killed_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    return out


def test_checkpoint_records_the_config_it_was_made_with(killed_run):
    ckpt = torch.load(killed_run / "head" / "model-last.pth.tar", weights_only=True)
    assert ckpt["epoch"] == 1
    assert ckpt["run_config"] == (killed_run / "config.yaml").read_text()
    assert "MAX_EPOCH: 3" in ckpt["run_config"]


@pytest.mark.parametrize("opts,shown", [
    (["OPTIM.MAX_EPOCH", "5"], "OPTIM.MAX_EPOCH: 3 -> 5"),
    (["OPTIM.LR", "0.005"], "OPTIM.LR: 0.05 -> 0.005"),
    (["SEED", "2"], "SEED: 1 -> 2"),
    (["OPTIM.LR", "0.005", "TEST.FINAL_MODEL", "best_val"],
     "OPTIM.LR: 0.05 -> 0.005; TEST.FINAL_MODEL: 'last_step' -> 'best_val'"),
])
def test_resume_with_another_config_is_refused_before_anything_changes(killed_copy, data_root, dataset_yaml,
                                                                       method_yaml, capsys, opts, shown):
    before = _snapshot(killed_copy)
    argv = args_for(data_root, dataset_yaml, method_yaml, killed_copy, *opts)
    if opts[0] == "SEED":  # the --seed flag (SEED is a config key too)
        argv[argv.index("--seed") + 1] = opts[1]
        argv = argv[:-2]
    rc = run_cli(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("Error: Cannot resume from ") and err.count("\n") == 1, err
    assert "(head/model-last.pth.tar, epoch 1) with another config: " + shown + "." in err
    assert "Nothing was changed" in err and "another --output-dir" in err and "TRAIN.OVERWRITE True" in err
    assert "Traceback" not in err
    assert _snapshot(killed_copy) == before  # config.yaml, log.txt, checkpoints: all untouched


def test_resume_with_a_changed_prompt_shape_is_refused_not_a_state_dict_traceback(tmp_path, capsys):
    """The issue's N_CTX case on a real prompt learner (CoOp, tiny backbone): refused before config.yaml
    is overwritten, instead of a raw load_state_dict traceback after it."""
    root = tmp_path / "d"
    make_image_folder(str(root / "five"), n_classes=3, n_per_class=4)
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    out = tmp_path / "coop"
    base = ["--root", str(root), "--seed", "1", "--trainer", "CoOp", "--dataset-config-file", str(ds),
            "--config-file", write_method_yaml(tmp_path / "m.yaml", METHOD_YAML), "--output-dir", str(out),
            "TRAINER.COOP.N_CTX", "2", "TRAINER.COOP.CTX_INIT", "''",
            "OPTIM.MAX_EPOCH", "2", "OPTIM.WARMUP_EPOCH", "0", "TRAIN.CHECKPOINT_FREQ", "1"]
    assert run_cli(base + ["TEST.NO_TEST", "True"]) == 0
    capsys.readouterr()
    os.remove(out / "results.json") if (out / "results.json").exists() else None
    # an unfinished run: the resume point of epoch 1 only
    os.remove(out / "prompt_learner" / "model.pth.tar-2")
    before = _snapshot(out)
    rc = run_cli(base[:base.index("TRAINER.COOP.N_CTX") + 1] + ["4"] + base[base.index("TRAINER.COOP.N_CTX") + 2:]
                 + ["TEST.NO_TEST", "True"])
    err = capsys.readouterr().err
    assert rc == 2 and "(prompt_learner/model.pth.tar-1, epoch 1) with another config: TRAINER.COOP.N_CTX: 2 -> 4." in err and "Traceback" not in err, err
    assert _snapshot(out) == before


def test_safe_keys_are_applied_and_recorded_on_resume(killed_copy, data_root, dataset_yaml, method_yaml, capsys):
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, killed_copy, "TRAIN.PRINT_FREQ", "2",
                          "DATALOADER.TEST.BATCH_SIZE", "7"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "Previous epoch: 1" in out  # resumed, not restarted
    assert "with keys that are safe to change on resume changed" in out and "TRAIN.PRINT_FREQ: 1 -> 2" in out
    rec = json.loads((killed_copy / "results.json").read_text())
    assert rec["resume"]["from_epoch"] == 1 and rec["resume"]["checkpoint"] == "head/model-last.pth.tar"
    assert rec["resume"]["config_reference"] == "checkpoint"
    assert rec["resume"]["changed_keys"] == {"TRAIN.PRINT_FREQ": [1, 2], "DATALOADER.TEST.BATCH_SIZE": [16, 7]}
    assert rec["config"]["TRAIN"]["PRINT_FREQ"] == 2  # applied for real
    assert "epoch [2/3] batch [2/" in out and "epoch [2/3] batch [1/" not in out  # PRINT_FREQ 2 in effect


def test_overwrite_trains_from_scratch_with_the_new_config(killed_copy, data_root, dataset_yaml, method_yaml,
                                                           capsys):
    assert run_cli(args_for(data_root, dataset_yaml, method_yaml, killed_copy, "OPTIM.MAX_EPOCH", "2",
                            "TRAIN.OVERWRITE", "True")) == 0
    out = capsys.readouterr().out
    assert "Previous epoch" not in out and "epoch [1/2]" in out
    rec = json.loads((killed_copy / "results.json").read_text())
    assert rec["resume"] is None and rec["epochs"] == 2


def _strip_run_config(path):
    ckpt = torch.load(path, weights_only=True)
    del ckpt["run_config"]
    torch.save(ckpt, path)


def test_old_checkpoint_without_a_recorded_config_is_checked_against_config_yaml(
        killed_copy, data_root, dataset_yaml, method_yaml, capsys):
    _strip_run_config(killed_copy / "head" / "model-last.pth.tar")
    before = _snapshot(killed_copy)
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, killed_copy, "OPTIM.MAX_EPOCH", "5"))
    err = capsys.readouterr().err
    assert rc == 2 and "OPTIM.MAX_EPOCH: 3 -> 5" in err
    assert f"the checkpoint records no config; compared with {killed_copy / 'config.yaml'}" in err
    assert _snapshot(killed_copy) == before
    # the same config: resumes, and says what it was checked against
    assert run_cli(args_for(data_root, dataset_yaml, method_yaml, killed_copy)) == 0
    rec = json.loads((killed_copy / "results.json").read_text())
    assert rec["resume"]["config_reference"] == str(killed_copy / "config.yaml")


def test_old_checkpoint_without_any_known_config_is_refused(killed_copy, data_root, dataset_yaml, method_yaml,
                                                           capsys):
    _strip_run_config(killed_copy / "head" / "model-last.pth.tar")
    os.remove(killed_copy / "config.yaml")
    before = _snapshot(killed_copy)
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, killed_copy))
    err = capsys.readouterr().err
    assert rc == 2 and "the checkpoint records no config" in err and "no config.yaml beside it" in err
    assert _snapshot(killed_copy) == before


# ------------------------------------------------------------------------------------------------
# runs that cannot mean what their result would claim (vlprompt/config/run_checks.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opts,message", [
    (["OPTIM.MAX_EPOCH", "0"], "OPTIM.MAX_EPOCH is 0: TestLinearProbe would train for no epoch"),
    (["OPTIM.MAX_EPOCH", "1"], "OPTIM.MAX_EPOCH 1 <= OPTIM.WARMUP_EPOCH 1: every epoch of this run would be a "
                               "warm-up epoch (a constant LR of OPTIM.WARMUP_CONS_LR 1e-05)"),
    (["OPTIM.MAX_EPOCH", "2", "OPTIM.WARMUP_EPOCH", "3", "OPTIM.WARMUP_TYPE", "linear"],
     "OPTIM.MAX_EPOCH 2 <= OPTIM.WARMUP_EPOCH 3: every epoch of this run would be a warm-up epoch (an LR rising "
     "linearly from OPTIM.WARMUP_MIN_LR 1e-05 towards OPTIM.LR)"),
    (["OPTIM.LR", "0.0"], "OPTIM.LR is 0.0: TestLinearProbe would learn nothing"),
    (["TEST.FINAL_MODEL", "best-val"], "TEST.FINAL_MODEL is 'best-val': it must be one of"),
    (["TEST.SPLIT", "validation"], "TEST.SPLIT is 'validation': it must be one of"),
])
def test_runs_that_cannot_mean_their_result_are_refused_before_anything_is_written(
        tmp_path, data_root, dataset_yaml, method_yaml, capsys, opts, message):
    out = tmp_path / "out" / "run"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out, *opts))
    err = capsys.readouterr().err
    assert rc == 2 and err == f"Error: {err[7:]}" and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


def test_short_run_without_warm_up_and_more_shots_than_images_are_recorded_as_they_ran(
        tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    out = tmp_path / "run"
    # 10 images per class, a 50/20/30 split: 5 training images per class
    assert run_cli(args_for(data_root, dataset_yaml, method_yaml, out, "DATASET.NUM_SHOTS", "8",
                            "OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0")) == 0
    stdout = capsys.readouterr().out
    assert "lr 5.0000e-02" in stdout  # trained at OPTIM.LR, not at a warm-up LR
    assert "Warning: 8 shots per class requested, but 3 of 3 classes have fewer images, all of which are used: " \
           "class_0 (5), class_1 (5), class_2 (5)" in stdout
    rec = json.loads((out / "results.json").read_text())
    assert rec["shots"] == 8 and rec["shots_used"] == {"min": 5, "max": 5}


# ------------------------------------------------------------------------------------------------
# cost in every result (vlprompt/engine/results_record.py, cost_record)
# ------------------------------------------------------------------------------------------------


def _rate_fits(rate, images, seconds_rounded):
    """``rate`` (rounded to 2 decimals) is ``images`` per second for some time that rounds to ``seconds_rounded``."""
    return images / (seconds_rounded + 0.0005) - 0.005 <= rate <= images / max(seconds_rounded - 0.0005, 1e-9) + 0.005


def test_results_record_what_the_run_cost(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    # in the few-shot output tree, so that the results tool files it (a training run outside the tree is not)
    out = tmp_path / "few_shot" / "five" / "TestLinearProbe" / "probe" / "shots_16" / "seed1"
    assert run_cli(args_for(data_root, dataset_yaml, method_yaml, out, "OPTIM.MAX_EPOCH", "2")) == 0
    rec = json.loads((out / "results.json").read_text())
    cost = rec["cost"]
    # 3 classes x 5 training images, batch 4, the last partial batch dropped: 12 images per epoch
    assert cost["train_epochs_run"] == 2 and cost["train_images"] == 24
    assert cost["train_time_s"] > 0 and cost["eval_time_s"] > 0
    assert cost["train_time_s"] <= rec["wall_time_s"] and cost["eval_time_s"] == rec["eval_time_s"]
    # the rates come from the unrounded seconds, which results.json rounds to 3 decimals: a fast run (features
    # already in the session's store) can be a few hundredths of a second, so compare within that rounding
    assert _rate_fits(cost["train_images_per_s"], 24, cost["train_time_s"])
    assert cost["eval_images"] == rec["num_test"] == 9
    assert _rate_fits(cost["eval_images_per_s"], 9, cost["eval_time_s"])
    import resource

    assert 50 < cost["peak_rss_mib"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 1
    assert cost["cuda_max_allocated_mib"] is None  # a CPU run
    head = torch.load(out / "head" / "model.pth.tar-2", weights_only=True)["state_dict"]
    assert cost["trainable_params"] == sum(v.numel() for v in head.values())  # the linear head only
    assert cost["total_params"] > 100 * cost["trainable_params"]  # + the frozen CLIP

    # the cost table (python -m vlprompt.results ROOT --cost)
    from vlprompt.results.cli import main as results_main

    capsys.readouterr()
    assert results_main([str(tmp_path), "--cost"]) == 0
    table = capsys.readouterr().out
    head = next(ln for ln in table.splitlines() if ln.startswith("| Method | Config"))
    assert head.split(" | ")[-8:] == ["train s", "eval s", "train img/s", "eval img/s", "peak RSS MiB", "CUDA MiB",
                                      "trainable params", "total params |"]
    cost_part = table[table.index("### Cost per run"):]
    row = next(ln for ln in cost_part.splitlines() if ln.startswith("| TestLinearProbe"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[-8]) == pytest.approx(cost["train_time_s"], abs=0.01)
    assert cells[-1] == str(cost["total_params"]) and cells[-3] == "–"  # no CUDA on a CPU run
    assert cells[-2] == str(cost["trainable_params"])  # counts print as integers, not "123.00"

    # an evaluation-only run records no training cost
    ev = tmp_path / "eval"
    assert run_cli(args_for(data_root, dataset_yaml, method_yaml, ev) + [
        "--eval-only", "--model-dir", str(out), "--load-epoch", "2", "OPTIM.MAX_EPOCH", "2"]) == 0
    cost = json.loads((ev / "results.json").read_text())["cost"]
    assert cost["train_time_s"] is None and cost["train_images"] is None and cost["train_images_per_s"] is None
    assert cost["eval_time_s"] > 0 and cost["eval_images"] == 9 and cost["trainable_params"] > 0
