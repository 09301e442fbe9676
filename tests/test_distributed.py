"""torchrun/DDP path on CPU with gloo: 2 processes x batch 4 == 1 process x batch 8."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import METHOD_YAML, make_image_folder


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(root, ds, m, out, batch):
    return ["--root", str(root), "--seed", "1", "--trainer", "TestLinearProbe", "--dataset-config-file", ds,
            "--config-file", m, "--output-dir", str(out), "DATALOADER.TRAIN_X.SAMPLER", "SequentialSampler",
            "DATALOADER.TRAIN_X.BATCH_SIZE", str(batch), "INPUT.TRANSFORMS", "('normalize',)"]


def _worker(rank, world, port, argv):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), VLPROMPT_DIST_BACKEND="gloo")
    torch.set_num_threads(1)
    import train as train_mod
    from tests.helpers import register_linear_probe

    register_linear_probe()
    rc = train_mod.cli(argv)
    torch.distributed.destroy_process_group()
    assert rc == 0


def test_ddp_matches_single_process_with_same_global_batch(tmp_path):
    import train as train_mod
    from tests.helpers import register_linear_probe
    from vlprompt.utils import load_checkpoint, restore_stdout

    register_linear_probe()
    make_image_folder(str(tmp_path / "d" / "five"), n_classes=5, n_per_class=10)
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    m = tmp_path / "m.yaml"
    m.write_text(METHOD_YAML)
    single = tmp_path / "single"
    try:
        assert train_mod.cli(_args(tmp_path / "d", str(ds), str(m), single, 8)) == 0
    finally:
        restore_stdout()
    ddp = tmp_path / "ddp"
    # forked, not spawned: the two ranks start from this process's imports instead of importing torch, the
    # engine and open_clip again (~6 s each); gloo on CPU needs nothing that fork would break
    mp.start_processes(_worker, args=(2, _free_port(), _args(tmp_path / "d", str(ds), str(m), ddp, 4)), nprocs=2,
                       join=True, start_method="fork")

    a = load_checkpoint(str(single / "head" / "model.pth.tar-3"))["state_dict"]
    b = load_checkpoint(str(ddp / "head" / "model.pth.tar-3"))["state_dict"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    ra = json.loads((single / "results.json").read_text())
    rb = json.loads((ddp / "results.json").read_text())
    assert rb["world_size"] == 2 and ra["world_size"] == 1
    assert ra["metrics"]["accuracy"] == pytest.approx(rb["metrics"]["accuracy"])
    log = (ddp / "log.txt").read_text()
    assert "Distributed: world size 2" in log
    # rank 0 alone logs: each iteration line once
    assert log.count("epoch [1/3] batch [1/3]") == 1
