"""benchmarks/gpu_check.py (run on a GPU by benchmarks/gpu_check.sh): argument handling, the refusal
without CUDA, and a CPU dry run (--device cpu --tiny) of the same code path that writes the JSON."""
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, "benchmarks"))

import gpu_check  # noqa: E402


def test_arguments_defaults_and_errors(tmp_path):
    full = gpu_check.parse_args([])
    assert (full.device, full.classes, full.iters, full.eval_batch, full.eval_batches) == ("cuda", 100, 10, 100, 5)
    from bench_trainers import CASES  # every registered trainer with something to train

    assert full.precisions == ["fp32", "fp16", "amp", "bf16"] and full.trainers == list(CASES)
    assert full.out.endswith(osp.join("results", "gpu_check_cuda.json"))
    tiny = gpu_check.parse_args(["--device", "cpu", "--tiny", "--precisions", "bf16"])
    assert (tiny.classes, tiny.iters, tiny.warmup, tiny.eval_batch) == (5, 1, 0, 2)
    assert tiny.precisions == ["fp32", "bf16"]  # fp32 is the reference and is always run
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--iters", "0"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--precisions", "fp8"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_refuses_without_cuda(capsys, tmp_path):
    assert gpu_check.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_cpu_tiny_dry_run_writes_one_json(tmp_path):
    out = tmp_path / "check.json"
    r = subprocess.run(["bash", osp.join(ROOT, "benchmarks", "gpu_check.sh"), "--device", "cpu", "--tiny",
                        "--trainers", "CoOp", "--precisions", "bf16", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "all checks passed" in r.stdout
    d = json.loads(out.read_text())
    assert d["ok"] is True and d["tiny"] is True and d["environment"]["device"] == "cpu"
    rows = {row["requested"]: row for row in d["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    for row in rows.values():
        assert row["trainer"] == "CoOp" and row["finite"] and row["ok"]
        assert row["train_step_median_s"] > 0 and row["eval_images_per_s"] > 0
        assert "loss" in row["first_step"]
    bf = rows["bf16"]
    # compared with fp32 (same seed, same weights): within the stated tolerances
    assert set(bf["checks"]) == {"finite", "loss", "logits"}
    assert bf["logit_max_abs_diff"] <= gpu_check.LOGIT_TOL * 100
    assert bf["effective"] in ("bf16", "fp32")  # fp32 on a CPU without native bf16
    assert "loss" in d["tolerances"] and "logits" in d["tolerances"]
