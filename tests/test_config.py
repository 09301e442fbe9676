"""Config tree, merge order and error messages."""
import pytest

from vlprompt.config import (
    ConfigError,
    clean_cfg,
    config_digest,
    extend_cfg,
    get_cfg_default,
    merge_from_file,
    merge_from_list,
    register_cfg_extension,
)
import train as train_mod


def test_dassl_defaults():
    cfg = get_cfg_default()
    assert cfg.OPTIM.NAME == "adam" and cfg.OPTIM.LR == 0.0003 and cfg.OPTIM.WEIGHT_DECAY == 5e-4
    assert cfg.OPTIM.SGD_DAMPNING == 0 and cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and cfg.OPTIM.WARMUP_RECOUNT
    assert cfg.INPUT.SIZE == (224, 224) and cfg.INPUT.RRCROP_SCALE == (0.08, 1.0)
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 32 and cfg.DATALOADER.NUM_WORKERS == 4
    assert cfg.DATASET.NUM_SHOTS == -1 and cfg.DATASET.SUBSAMPLE_CLASSES == "all"
    assert cfg.TEST.FINAL_MODEL == "last_step" and cfg.TRAIN.CHECKPOINT_FREQ == 0 and cfg.SEED == -1
    # a clone every time
    cfg.OPTIM.LR = 1.0
    assert get_cfg_default().OPTIM.LR == 0.0003


def test_merge_order_dataset_then_method_then_flags_then_opts(tmp_path):
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "OxfordPets"\nOPTIM:\n  LR: 0.1\n')
    m = tmp_path / "m.yaml"
    m.write_text('OPTIM:\n  LR: 0.2\n  MAX_EPOCH: 7\n  WARMUP_CONS_LR: 1e-5\nINPUT:\n  SIZE: (32, 32)\n'
                 'MODEL:\n  BACKBONE:\n    NAME: "RN50"\n')
    args = train_mod.build_parser().parse_args(
        ["--dataset-config-file", str(ds), "--config-file", str(m), "--backbone", "ViT-B/16", "--seed", "3",
         "--root", "/data", "--output-dir", "/out", "OPTIM.MAX_EPOCH", "9"])
    cfg = train_mod.setup_cfg(args)
    assert cfg.DATASET.NAME == "OxfordPets"
    assert cfg.OPTIM.LR == 0.2  # method yaml after dataset yaml
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16"  # CLI flag after yaml
    assert cfg.OPTIM.MAX_EPOCH == 9  # opts last
    assert cfg.SEED == 3 and cfg.DATASET.ROOT == "/data" and cfg.OUTPUT_DIR == "/out"
    assert cfg.INPUT.SIZE == (32, 32) and isinstance(cfg.OPTIM.WARMUP_CONS_LR, float)
    assert cfg.is_frozen()


def test_seed_zero_is_ignored_like_coop():
    args = train_mod.build_parser().parse_args(["--seed", "0"])
    cfg = train_mod.setup_cfg(args)
    assert cfg.SEED == -1


def test_unknown_key_in_yaml_names_key_file_and_closest(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text("OPTIM:\n  LR: 0.1\n  WARMUP_EPOCHS: 1\n")
    with pytest.raises(ConfigError) as e:
        merge_from_file(get_cfg_default(), str(m))
    msg = str(e.value)
    assert "OPTIM.WARMUP_EPOCHS" in msg and str(m) in msg and "OPTIM.WARMUP_EPOCH" in msg


def test_unknown_trainer_node_lists_known_nodes(tmp_path):
    cfg = get_cfg_default()
    with pytest.raises(ConfigError) as e:
        merge_from_list(cfg, ["TRAINER.NOPE.N_CTX", "4"])
    assert "TRAINER.NOPE.N_CTX" in str(e.value) and "command-line" in str(e.value)


def test_type_mismatch_and_odd_opts():
    cfg = get_cfg_default()
    with pytest.raises(ConfigError) as e:
        merge_from_list(cfg, ["OPTIM.LR", "1"])
    assert "OPTIM.LR" in str(e.value)
    with pytest.raises(ConfigError) as e:
        merge_from_list(cfg, ["OPTIM.LR"])
    assert "pairs" in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        merge_from_file(get_cfg_default(), str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in str(e.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM:\n  LR: 0.1\n   NAME: sgd\n")
    with pytest.raises(ConfigError) as e:
        merge_from_file(get_cfg_default(), str(bad))
    assert "bad.yaml" in str(e.value) and "line 3" in str(e.value)


def test_extension_hooks_and_clean_cfg():
    from yacs.config import CfgNode as CN

    @register_cfg_extension
    def _ext(cfg):
        if "TESTX" not in cfg.TRAINER:
            cfg.TRAINER.TESTX = CN()
            cfg.TRAINER.TESTX.N_CTX = 2

    cfg = extend_cfg(get_cfg_default())
    merge_from_list(cfg, ["TRAINER.TESTX.N_CTX", "5"])
    assert cfg.TRAINER.TESTX.N_CTX == 5
    extend_cfg(cfg)  # idempotent
    assert cfg.TRAINER.TESTX.N_CTX == 5
    clean_cfg(cfg, "OTHER")
    assert "TESTX" not in cfg.TRAINER and "NAME" in cfg.TRAINER


def test_digest_ignores_location_and_seed():
    a = get_cfg_default()
    b = get_cfg_default()
    b.OUTPUT_DIR = "/x"
    b.SEED = 3
    b.DATASET.ROOT = "/data"
    assert config_digest(a) == config_digest(b)
    b.OPTIM.LR = 0.5
    assert config_digest(a) != config_digest(b)


def test_duplicate_key_names_file_key_and_lines(tmp_path):
    cfg = get_cfg_default()
    top = tmp_path / "top.yaml"
    top.write_text("OPTIM:\n  LR: 0.1\nDATASET:\n  NAME: x\nOPTIM:\n  MAX_EPOCH: 3\n")
    with pytest.raises(ConfigError) as e:
        merge_from_file(cfg, str(top))
    msg = str(e.value)
    assert str(top) in msg and "Duplicate key OPTIM " in msg and "lines 1 and 5" in msg
    nested = tmp_path / "nested.yaml"
    nested.write_text("OPTIM:\n  LR: 0.1\n  MAX_EPOCH: 2\n  LR: 0.2\n")
    with pytest.raises(ConfigError, match=r"Duplicate key OPTIM\.LR .*lines 2 and 4"):
        merge_from_file(cfg, str(nested))
    assert cfg.OPTIM.LR == get_cfg_default().OPTIM.LR  # nothing was merged
    # the same key in two different sections is fine
    ok = tmp_path / "ok.yaml"
    ok.write_text("OPTIM:\n  NAME: sgd\nDATASET:\n  NAME: x\n")
    merge_from_file(cfg, str(ok))
    assert cfg.OPTIM.NAME == "sgd" and cfg.DATASET.NAME == "x"
