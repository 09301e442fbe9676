"""The benchmarks' reference arm (benchmarks/reference.py: the official way of computing a step and an
evaluation) gives the same losses and logits as vlprompt's exact fast paths, and really runs the other
way (the full 77-token text pass, the official block, no text cache), on the tiny random backbone."""
import os.path as osp
import sys

import pytest
import torch

BENCH = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import bench_reference  # noqa: E402
import reference  # noqa: E402


@pytest.mark.parametrize("trainer", ["CoOp", "CoCoOp", "VPT", "IVLP", "MaPLe", "MuDPT", "APLe", "KgCoOp", "ProGrad",
                                     "PromptSRC", "TCP", "MMRL", "CLIPLoRA", "CLIP_Adapter", "TipAdapterF", "UMuDPT",
                                     "PromptKD", "LPPP", "TaskRes", "CLAP", "ProLIP", "TwoSFS"])
def test_reference_arm_agrees_with_vlprompt(trainer, tmp_path, monkeypatch):
    # a row samples the busy cores before it starts (3 s); a short window keeps that without the wait
    real_busy = bench_reference.busy_cores
    monkeypatch.setattr(bench_reference, "busy_cores", lambda: real_busy(window_s=0.05))
    row = bench_reference.bench_one(trainer, 3, "cpu", reps=1, eval_batches=1, eval_batch=2, data_root=str(tmp_path),
                                    log=lambda m: None, backbone="test-vit-tiny", small_batch=True)
    assert row["max_logit_diff"] < 1e-4
    assert row["busy_cores_before"] is not None and row["background"] == "none"
    # APLe's three stages update the weights within one step: a rounding difference of the first stage's
    # update reaches the later stages' losses (docs/BENCHMARKS.md)
    assert row["max_loss_diff"] is not None and row["max_loss_diff"] < (1e-3 if trainer == "APLe" else 1e-5)
    assert set(row["loss_ours"]) == set(row["loss_official"]) and row["loss_ours"]
    assert len(row["commit"].split("+")[0]) >= 7  # the commit measured (a git checkout)


def test_reference_arm_runs_the_full_text_pass_and_the_official_block(tmp_path, monkeypatch):
    from vlprompt.clip import prompted

    sys.path.insert(0, BENCH)
    from common import build

    tr = build("CoOp", bench_reference.CASES["CoOp"], 3, opts=["MODEL.BACKBONE.NAME", "test-vit-tiny"],
               data_root=str(tmp_path))
    lengths, blocks = [], []
    orig = prompted.PromptedTextEncoder._blocks_plain

    def spy(self, x, *a, **k):
        lengths.append(x.shape[1])
        return orig(self, x, *a, **k)

    monkeypatch.setattr(prompted.PromptedTextEncoder, "_blocks_plain", spy)
    official_block = reference.official_block
    monkeypatch.setattr(reference, "official_block", lambda *a, **k: blocks.append(1) or official_block(*a, **k))
    tr.set_model_mode("eval")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = tr.model_inference(x)
        assert lengths == [] and blocks == []  # vlprompt's fast path: no plain blocks, no official block
        with reference.official_way(tr):
            ref = tr.model_inference(x)
            tr.model_inference(x)
    assert lengths == [77, 77]  # every class padded to 77 positions, text recomputed per batch (no cache)
    assert len(blocks) > 0
    assert prompted.FAST_PATHS is True  # restored after the block
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)


def test_rows_record_their_batches_load_and_background(tmp_path, monkeypatch):
    loads = iter([0.3, 0.4])
    monkeypatch.setattr(bench_reference, "load_average", lambda: next(loads))
    monkeypatch.setattr(bench_reference, "busy_cores", lambda: 0.1)
    started = []
    real_enter = bench_reference.background.__enter__

    def enter(self):
        real_enter(self)
        started.append((self.kind, self.proc.poll()))  # the job runs while the row is timed
        return self

    monkeypatch.setattr(bench_reference.background, "__enter__", enter)
    row = bench_reference.bench_one("CoOp", 3, "cpu", reps=1, eval_batches=1, eval_batch=0, data_root=str(tmp_path),
                                    log=lambda m: None, backbone="test-vit-tiny", small_batch=True, bg="busy",
                                    max_load=1.0)
    assert started == [("busy", None)]
    assert row["background"] == "busy" and row["load_before"] == 0.3 and row["load_after"] == 0.4
    assert row["busy_cores_before"] == 0.1
    assert row["batch"] == 4 and row["batch_source"] == "small CPU batch"
    assert row["eval_batch"] == 100  # 0: the config's DATALOADER.TEST.BATCH_SIZE
    line = bench_reference.table([row]).splitlines()[2]
    assert line.startswith("| CoOp | 3 | 4 | 100 | busy | 0.10 | 0.3 / 0.4 |")


def test_a_loaded_machine_is_waited_for_and_then_refused(monkeypatch):
    monkeypatch.setattr(bench_reference, "busy_cores", lambda: 1.5)
    monkeypatch.setattr(bench_reference.time, "sleep", lambda s: None)
    said = []
    with pytest.raises(RuntimeError, match=r"stayed busy \(1.50 >= --max-load 0.5\)"):
        bench_reference.wait_for_load(0.5, 0.0, log=said.append)
    monkeypatch.setattr(bench_reference, "busy_cores", lambda: 0.2)
    assert bench_reference.wait_for_load(0.5, 0.0) == 0.2
    # where /proc/stat is missing, the 1-minute load average decides
    monkeypatch.setattr(bench_reference, "busy_cores", lambda: None)
    monkeypatch.setattr(bench_reference, "load_average", lambda: 0.3)
    assert bench_reference.wait_for_load(0.5, 0.0) == 0.3


def test_busy_cores_sees_a_spinning_process():
    import subprocess

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.5)
        assert bench_reference.busy_cores(window_s=1.0) >= 0.8
    finally:
        spin.kill()
        spin.wait()


def test_trainers_without_a_reference_arm_are_refused_with_the_reason(capsys):
    assert set(bench_reference.NO_REFERENCE_ARM) <= set(bench_reference.CASES)
    assert bench_reference.main(["--trainers", "CoOp", "RPO", "--classes", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: no reference arm for RPO: its text pass runs with an attention mask")
    assert err.count("\n") == 1
