"""The frozen-feature store itself (vlprompt/features): format, keys, verification, atomic and
concurrent writes, full disk, size report, clear, CLI."""
import errno
import json
import multiprocessing as mp
import os

import pytest
import torch

from vlprompt.features import FeatureStore, FeatureStoreError, default_store_dir, feature_key, key_digest
from vlprompt.features import store as store_mod
from vlprompt.features.keys import file_list_digest, module_digest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _key(**kw):
    args = dict(arch="test-vit-tiny", weights="w0", precision="weights=torch.float32|autocast=none|device=cpu",
                dataset="ImageFolder", split="test", files="f0", n_files=4, transform="T", batch_size=16)
    args.update(kw)
    return feature_key(**args)


def _logs():
    lines = []
    return lines, lines.append


def test_roundtrip_is_exact_and_safetensors_without_pickle(tmp_path):
    store = FeatureStore(str(tmp_path))
    t = torch.randn(7, 5, dtype=torch.float16)
    path = store.save(_key(), t, info={"dataset": "ImageFolder"})
    assert path.endswith(".safetensors") and os.path.basename(path) == key_digest(_key()) + ".safetensors"
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:  # a plain safetensors file with the key in its header
        assert list(f.keys()) == ["features"]
        assert json.loads(f.metadata()["key"]) == _key()
    back = store.load(_key())
    assert back.dtype == torch.float16 and torch.equal(back, t)
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary file left


def test_every_key_field_changes_the_entry():
    base = _key()
    variants = [_key(weights="w1"), _key(arch="ViT-B/16"), _key(precision="weights=torch.float16|autocast=none|device=cuda"),
                _key(dataset="Other"), _key(split="val"), _key(files="f1"), _key(transform="T2"), _key(batch_size=32),
                _key(view=0, seed=1), _key(view=1, seed=1), _key(view=0, seed=2)]
    digests = {key_digest(k) for k in [base] + variants}
    assert len(digests) == len(variants) + 1


def test_file_list_digest_sees_order_size_and_mtime(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"1234")
    b.write_bytes(b"5678")
    d0 = file_list_digest([str(a), str(b)])
    assert file_list_digest([str(b), str(a)]) != d0
    a.write_bytes(b"12345")
    d1 = file_list_digest([str(a), str(b)])
    assert d1 != d0
    os.utime(a, ns=(1, 1))
    assert file_list_digest([str(a), str(b)]) != d1


def test_weights_digest_is_exact():
    m = torch.nn.Linear(3, 2)
    d = module_digest(m)
    assert module_digest(m) == d
    with torch.no_grad():
        m.weight[0, 0] += 1e-6
    assert module_digest(m) != d
    assert module_digest(m.half()) != module_digest(m.float())


def test_a_mismatching_key_is_never_used(tmp_path):
    lines, log = _logs()
    store = FeatureStore(str(tmp_path), log=log)
    store.save(_key(weights="other-weights"), torch.ones(2, 2))
    # the file of another key renamed onto this key's name: the header's key disagrees
    os.replace(store.path(_key(weights="other-weights")), store.path(_key()))
    assert store.load(_key()) is None
    assert store.load(_key()) is None
    assert len([m for m in lines if "another key" in m]) == 1  # reported once
    calls = []
    out, hit = store.get_or_compute(_key(), lambda: calls.append(1) or torch.zeros(2, 2))
    assert not hit and calls == [1] and torch.equal(store.load(_key()), torch.zeros(2, 2))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_entries_are_reported_once_and_recomputed(tmp_path, damage):
    lines, log = _logs()
    store = FeatureStore(str(tmp_path), log=log)
    t = torch.arange(64, dtype=torch.float32).view(8, 8)
    path = store.save(_key(), t)
    data = open(path, "rb").read()
    if damage == "truncate":
        data = data[: len(data) - 40]
    elif damage == "flip":
        data = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
    else:
        data = b"not a safetensors file"
    open(path, "wb").write(data)
    assert store.load(_key()) is None
    assert store.load(_key()) is None
    assert len([m for m in lines if "truncated or corrupt" in m]) == 1
    out, hit = store.get_or_compute(_key(), lambda: t.clone())
    assert not hit and torch.equal(out, t)
    assert torch.equal(store.load(_key()), t)  # rewritten, valid again
    assert store.info()["unreadable"] == 0


def test_full_disk_fails_clearly_and_leaves_no_partial_entry(tmp_path, monkeypatch):
    store = FeatureStore(str(tmp_path))

    def write_half_then_fail(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "_write_chunks", write_half_then_fail)
    with pytest.raises(FeatureStoreError, match="no space left on the device") as e:
        store.save(_key(), torch.ones(100, 10))
    assert "TEST.FEATURE_CACHE False" in str(e.value) and str(tmp_path) in str(e.value)
    assert os.listdir(tmp_path) == []
    assert store.load(_key()) is None


def _writer(root, value, n):
    store = FeatureStore(root, log=None)
    for _ in range(n):
        store.save(_key(), torch.full((256, 64), float(value)))


def test_two_processes_writing_the_same_entry_never_corrupt_it(tmp_path):
    root = str(tmp_path)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(root, v, 30)) for v in (1, 2)]
    for p in procs:
        p.start()
    store = FeatureStore(root, log=None)
    seen = set()
    while any(p.is_alive() for p in procs):
        t = store.load(_key())
        if t is not None:  # whatever a reader sees is one writer's complete tensor
            assert t.shape == (256, 64) and t.unique().numel() == 1
            seen.add(float(t[0, 0]))
    for p in procs:
        p.join()
        assert p.exitcode == 0
    final = store.load(_key())
    assert final is not None and float(final[0, 0]) in (1.0, 2.0)
    assert store.temporaries() == []
    assert [n for n in os.listdir(root)] == [os.path.basename(store.path(_key()))]


def test_default_location_env_and_config(tmp_path, monkeypatch):
    monkeypatch.delenv("VLPROMPT_FEATURE_CACHE", raising=False)
    assert default_store_dir("") == os.path.join(os.path.expanduser("~"), ".cache", "vlprompt", "features")
    monkeypatch.setenv("VLPROMPT_FEATURE_CACHE", str(tmp_path / "env"))
    assert default_store_dir("") == str(tmp_path / "env")
    assert default_store_dir(str(tmp_path / "cfg")) == str(tmp_path / "cfg")  # FEATURES.DIR wins


def test_info_clear_and_cli(tmp_path, capsys):
    store = FeatureStore(str(tmp_path))
    store.save(_key(), torch.ones(10, 4))
    store.save(_key(split="val"), torch.ones(3, 4))
    open(store.path(_key()) + ".tmp-123-abc", "wb").write(b"partial")  # an interrupted write
    info = store.info()
    assert info["entries"] == 2 and info["temporaries"] == 1
    assert set(info["by_dataset_split"]) == {"ImageFolder/test", "ImageFolder/val"}
    assert info["bytes"] == sum(os.path.getsize(store.path(k)) for k in (_key(), _key(split="val")))
    from vlprompt.features.__main__ import main

    assert main(["info", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and "ImageFolder/val: 1 entries" in out and "1 temporary files" in out
    assert main(["clear", "--dir", str(tmp_path)]) == 0
    assert "removed 3 files" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []
