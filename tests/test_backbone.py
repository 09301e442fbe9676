"""Backbones: names, weight files, missing-weights message, built-in random models, zero-shot CLIP."""
import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from vlprompt.clip import (
    MissingWeightsError,
    build_clip_from_cfg,
    build_clip_model,
    encode_class_texts,
    model_dims,
    normalize_backbone_name,
    tokenize,
)


@pytest.fixture(scope="module")
def tiny():
    return build_clip_model("test-vit-tiny")


def test_names():
    assert normalize_backbone_name("ViT-B/16") == ("ViT-B/16", "ViT-B-16-quickgelu")
    assert normalize_backbone_name("ViT-B-16") == ("ViT-B/16", "ViT-B-16")
    assert normalize_backbone_name("RN50") == ("RN50", "RN50-quickgelu")
    with pytest.raises(ValueError) as e:
        normalize_backbone_name("ViT-B/61")
    assert "Did you mean" in str(e.value)


def test_tiny_is_deterministic_and_small(tiny):
    again = build_clip_model("test-vit-tiny")
    for (k, a), (_, b) in zip(tiny.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    d = model_dims(tiny)
    assert d["image_size"] == 224 and d["d_text"] != d["d_vision"] and d["vision_layers"] == 12
    assert not tiny.training and all(p.dtype == torch.float32 for p in tiny.parameters())


def test_missing_weights_message(monkeypatch, tmp_path):
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError) as e:
        build_clip_model("ViT-B/16")
    msg = str(e.value)
    assert str(tmp_path / ".cache" / "clip" / "ViT-B-16.pt") in msg
    assert "MODEL.BACKBONE.PATH" in msg and "pretrained='openai'" in msg and "RANDOM_INIT" in msg
    with pytest.raises(MissingWeightsError) as e:
        build_clip_model("ViT-B/16", path=str(tmp_path / "w.pt"))
    assert str(tmp_path / "w.pt") in str(e.value)


def test_weight_file_in_cache_dir_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    src = build_clip_model("ViT-B/32", random_init=True)
    torch.save(src.state_dict(), tmp_path / "ViT-B-32.pt")
    model = build_clip_model("ViT-B/32", cache_dir=str(tmp_path))
    assert model.vlprompt_backbone["source"] == str(tmp_path / "ViT-B-32.pt")
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(model.encode_image(x), src.encode_image(x))
    torch.save({"not": "weights"}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="bad.pt"):
        build_clip_model("ViT-B/32", path=str(tmp_path / "bad.pt"))


def test_input_size_must_match(tmp_path):
    cfg = make_cfg(tmp_path, opts=["INPUT.SIZE", "(64, 64)"])
    with pytest.raises(ValueError, match="INPUT.SIZE"):
        build_clip_from_cfg(cfg)


def test_zero_shot_text_features(tiny):
    feats = encode_class_texts(tiny, ["red_car", "dog"], ["a photo of a {}.", "art of the {}."])
    assert feats.shape == (2, model_dims(tiny)["d_embed"])
    single = [F.normalize(tiny.encode_text(tokenize([t.format(n) for n in ["red car", "dog"]])), dim=-1)
              for t in ["a photo of a {}.", "art of the {}."]]
    assert torch.allclose(feats, F.normalize(single[0] + single[1], dim=-1), atol=1e-6)


def test_zeroshot_clip_eval_only_run(tmp_path):
    import trainers.zsclip  # noqa: F401
    import train as train_mod
    from vlprompt.utils import restore_stdout

    make_image_folder(str(tmp_path / "d" / "five"), n_classes=4, n_per_class=10)
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    from tests.helpers import METHOD_YAML

    m = tmp_path / "m.yaml"
    m.write_text(METHOD_YAML)
    for trainer in ["ZeroshotCLIP", "ZeroshotCLIP2"]:
        out = tmp_path / trainer
        try:
            rc = train_mod.cli(["--root", str(tmp_path / "d"), "--trainer", trainer, "--dataset-config-file", str(ds),
                                "--config-file", str(m), "--output-dir", str(out), "--eval-only"])
        finally:
            restore_stdout()
        assert rc == 0
        res = json.loads((out / "results.json").read_text())
        assert res["trainer"] == trainer and res["phase"] == "eval" and res["num_test"] == 12
        log = (out / "log.txt").read_text()
        assert "Note that load_model() is skipped" in log
        n_templates = 1 if trainer == "ZeroshotCLIP" else 8
        assert f"Prompts ({n_templates} template(s))" in log
