"""Every user mistake gets one ``Error: ...`` line and exit status 2 from ``train.py``, before any
environment dump, and a refused run leaves nothing in its output folder (issue 12, item 7)."""
import json
import os
import sys

import pytest

import train as train_mod
from tests import procs
from tests.helpers import METHOD_YAML, make_image_folder, register_linear_probe, write_method_yaml
from vlprompt.utils import restore_stdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
register_linear_probe()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_image_folder(str(root / "five"), n_classes=3, n_per_class=10)
    return root


@pytest.fixture(scope="module")
def dataset_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "five.yaml"
    p.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    return str(p)


@pytest.fixture(scope="module")
def method_yaml(tmp_path_factory):
    return write_method_yaml(tmp_path_factory.mktemp("cfgm") / "probe.yaml",
                             METHOD_YAML.replace("MAX_EPOCH: 3", "MAX_EPOCH: 1").replace("WARMUP_EPOCH: 1", "WARMUP_EPOCH: 0"))


def run_cli(argv):
    try:
        return train_mod.cli(argv)
    finally:
        restore_stdout()


def args_for(root, ds, m, out, trainer="TestLinearProbe"):
    a = ["--trainer", trainer, "--dataset-config-file", ds, "--config-file", m, "--output-dir", str(out)]
    return (["--root", str(root)] if root is not None else []) + a


def assert_refused(capsys, rc, out, *needles):
    """rc 2, exactly one Error message (its first line starts with ``Error:``; indented hint lines
    may follow) naming ``needles``, no traceback, no dump, nothing in ``out``."""
    cap = capsys.readouterr()
    assert rc == 2, cap
    assert cap.err.count("Error: ") == 1 and cap.err.startswith("Error: "), cap.err
    assert "Traceback" not in cap.err
    errors = [cap.err]
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    # no argument/config/environment dump before the refusal
    assert "** Config **" not in cap.out and "System info" not in cap.out
    assert not out.exists() or os.listdir(out) == [], os.listdir(out)
    return errors[0]


def test_unknown_trainer(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out, trainer="TestLinearProb"))
    assert_refused(capsys, rc, out, "TestLinearProb", "Did you mean 'TestLinearProbe'")


def test_unknown_dataset(tmp_path, data_root, method_yaml, capsys):
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "OxfordPet"\n')
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, str(ds), method_yaml, out))
    assert_refused(capsys, rc, out, "OxfordPet", "OxfordPets")


def test_missing_root(tmp_path, dataset_yaml, method_yaml, capsys):
    out = tmp_path / "o"
    rc = run_cli(args_for(None, dataset_yaml, method_yaml, out))
    assert_refused(capsys, rc, out, "--root")


def test_missing_dataset_folder_leaves_existing_output_folder_empty(tmp_path, dataset_yaml, method_yaml, capsys):
    out = tmp_path / "o"
    out.mkdir()  # an existing, empty output folder stays empty (no config.yaml, log.txt, lock)
    rc = run_cli(args_for(tmp_path / "nowhere", dataset_yaml, method_yaml, out))
    assert_refused(capsys, rc, out, tmp_path / "nowhere" / "five", "vlprompt.data.doctor")
    assert out.is_dir()


def test_nonexistent_yaml(tmp_path, data_root, dataset_yaml, capsys):
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, str(tmp_path / "nope.yaml"), out))
    assert_refused(capsys, rc, out, tmp_path / "nope.yaml", "not found")


def test_duplicate_yaml_key(tmp_path, data_root, dataset_yaml, capsys):
    m = tmp_path / "dup.yaml"
    m.write_text(METHOD_YAML + "OPTIM:\n  LR: 0.5\n")
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, str(m), out))
    assert_refused(capsys, rc, out, m, "Duplicate key OPTIM")


def test_image_listed_in_split_but_missing(tmp_path, method_yaml, capsys):
    root = tmp_path / "d"
    make_image_folder(str(root / "five"), n_classes=3, n_per_class=10)
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    assert run_cli(args_for(root, str(ds), method_yaml, tmp_path / "first") + ["--no-train"]) == 0
    capsys.readouterr()
    split_file = root / "five" / "split_vlprompt_ImageFolder.json"
    victim = root / "five" / json.loads(split_file.read_text())["train"][0][0]
    victim.unlink()
    out = tmp_path / "o"
    rc = run_cli(args_for(root, str(ds), method_yaml, out))
    assert_refused(capsys, rc, out, victim, split_file)


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_jpeg_during_training(tmp_path, method_yaml, capsys, workers):
    root = tmp_path / "d"
    make_image_folder(str(root / "five"), n_classes=3, n_per_class=10, size=64)
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    assert run_cli(args_for(root, str(ds), method_yaml, tmp_path / "first") + ["--no-train"]) == 0
    capsys.readouterr()
    split = json.loads((root / "five" / "split_vlprompt_ImageFolder.json").read_text())
    for rel, _, _ in split["train"]:  # every training image truncated to half its bytes
        p = root / "five" / rel
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    out = tmp_path / "o"
    rc = run_cli(args_for(root, str(ds), method_yaml, out) + ["DATALOADER.NUM_WORKERS", str(workers)])
    cap = capsys.readouterr()
    assert rc == 2
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in cap.err, cap.err
    assert "Cannot read image" in errors[0] and str(root / "five") in errors[0]
    assert "truncated" in errors[0]
    # the run had started: its log is kept and ends with the reason
    assert (out / "log.txt").read_text().rstrip().endswith(errors[0])


def test_corrupt_checkpoint_for_eval_only(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    run = tmp_path / "run"
    assert run_cli(args_for(data_root, dataset_yaml, method_yaml, run)) == 0
    ckpt = run / "head" / "model.pth.tar-1"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    capsys.readouterr()
    out = tmp_path / "eval"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out) +
                 ["--eval-only", "--model-dir", str(run), "--load-epoch", "1"])
    cap = capsys.readouterr()
    assert rc == 2 and "Traceback" not in cap.err
    line = [ln for ln in cap.err.splitlines() if ln.startswith("Error: ")]
    assert len(line) == 1 and str(ckpt) in line[0] and "truncated or corrupt" in line[0]
    assert "weights_only" not in cap.err


def test_finished_run_with_other_config_is_refused(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    run = tmp_path / "run"
    assert run_cli(args_for(data_root, dataset_yaml, method_yaml, run)) == 0
    before = sorted(os.listdir(run))
    results = (run / "results.json").read_text()
    capsys.readouterr()
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, run) + ["OPTIM.LR", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("Error: ") == 1
    old = json.loads(results)["config_digest"]
    assert "another config" in err and old in err and "OPTIM.LR: 0.05 -> 0.5" in err
    assert "TRAIN.OVERWRITE True" in err
    # the same config -> "already finished"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, run))
    err = capsys.readouterr().err
    assert rc == 2 and "already holds a finished run" in err
    assert sorted(os.listdir(run)) == before and (run / "results.json").read_text() == results


def test_debug_flag_shows_the_traceback(tmp_path, data_root, dataset_yaml, method_yaml, monkeypatch):
    with pytest.raises(ValueError, match="TestLinearProb"):
        run_cli(args_for(data_root, dataset_yaml, method_yaml, tmp_path / "o", trainer="TestLinearProb") + ["--debug"])
    monkeypatch.setenv("VLPROMPT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        run_cli(args_for(data_root, dataset_yaml, str(tmp_path / "nope.yaml"), tmp_path / "o"))


def test_real_command_line_prints_one_line(tmp_path, data_root, dataset_yaml, method_yaml):
    """The real ``python train.py``: exit 2 and a one-line stderr, nothing on stdout."""
    out = tmp_path / "o"
    p = procs.run([os.path.join(ROOT, "train.py"), "--root", str(data_root), "--trainer", "CoOpp",
                   "--dataset-config-file", dataset_yaml, "--config-file", method_yaml, "--output-dir", str(out)],
                  capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("Error: ") and "'CoOp'" in p.stderr
    assert not out.exists()


def test_output_folder_that_cannot_be_created(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, blocker / "out"))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("Error: ") and str(blocker / "out") in err and "Traceback" not in err


# --------------------------------------------------------------------------- issue 26, item 6: every user
# mistake is a vlprompt.errors.UserError raised by the library; train.py maps that type alone to exit 2.
def _image_folder(tmp_path, name="five"):
    root = tmp_path / "d"
    make_image_folder(str(root / name), n_classes=3, n_per_class=10)
    ds = tmp_path / f"{name}.yaml"
    ds.write_text(f'DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "{name}"\n')
    return root, str(ds)


def test_unknown_backbone_name(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out) + ["MODEL.BACKBONE.NAME", "ViT-B/17"])
    err = assert_refused(capsys, rc, out)
    assert err.startswith('Error: Unknown backbone "ViT-B/17". Did you mean ViT-B/16, ')
    assert err.count("\n") == 1


@pytest.mark.parametrize("key, value, message", [
    ("OPTIM.NAME", "sgdd", "Error: OPTIM.NAME must be one of ['adam', 'amsgrad', 'sgd', 'rmsprop', 'radam', "
                           "'adamw'], but got 'sgdd'\n"),
    ("OPTIM.LR_SCHEDULER", "cosin", "Error: OPTIM.LR_SCHEDULER must be one of ['single_step', 'multi_step', "
                                    "'cosine'], but got 'cosin'\n"),
    ("DATALOADER.TRAIN_X.SAMPLER", "Foo", "Error: Unknown sampler type 'Foo'; vlprompt supports RandomSampler, "
                                          "SequentialSampler, RandomClassSampler\n"),
])
def test_a_value_out_of_its_choices(tmp_path, data_root, dataset_yaml, method_yaml, capsys, key, value, message):
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out) + [key, value])
    assert assert_refused(capsys, rc, out) == message


def test_flag_after_the_key_value_options(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    out = tmp_path / "o"
    argv = args_for(data_root, dataset_yaml, method_yaml, out)
    argv = argv[:-2] + ["OPTIM.LR", "0.1", "--output-dir", str(out)]
    rc = run_cli(argv)
    assert assert_refused(capsys, rc, out) == (
        "Error: Unknown config key --output-dir in the command-line options. --output-dir is a flag: flags go "
        "before the KEY VALUE options (python train.py --root ... --output-dir ... KEY VALUE ...).\n")


def test_malformed_split_json(tmp_path, method_yaml, capsys):
    root, ds = _image_folder(tmp_path)
    split = root / "five" / "split_vlprompt_ImageFolder.json"
    split.write_text('{"train": [["class0/x.png", 0, ')
    out = tmp_path / "o"
    rc = run_cli(args_for(root, ds, method_yaml, out))
    assert assert_refused(capsys, rc, out) == f"Error: Malformed JSON in {split}, line 1 column 32: Expecting value\n"


def test_output_folder_that_is_not_writable(tmp_path, data_root, dataset_yaml, method_yaml, capsys, monkeypatch):
    """A read-only place (simulated: the tests may run as root, for whom chmod does not stop writes)."""
    import vlprompt.utils.lock as lock_mod

    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def read_only(path, flags, *a, **k):
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(lock_mod.os, "open", read_only)
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out))
    monkeypatch.undo()
    assert assert_refused(capsys, rc, out) == (
        f'Error: Cannot write into the output folder "{out}" (Permission denied: {out}/.vlprompt.lock). '
        "Choose a writable --output-dir.\n")


def test_resume_folder_that_does_not_exist(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out) + ["--resume", str(tmp_path / "nowhere")])
    assert assert_refused(capsys, rc, out).startswith(f'Error: --resume "{tmp_path / "nowhere"}" does not exist')


def test_model_dir_of_another_method(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    """CoCoOp evaluated from a CoOp run's folder: one message naming the file and what to check; the
    eval run's folder stays empty (the checkpoint is read before anything is written)."""
    import torch

    import trainers  # noqa: F401  (CoCoOp)

    model_dir = tmp_path / "coop_run"
    (model_dir / "prompt_learner").mkdir(parents=True)
    ckpt = model_dir / "prompt_learner" / "model.pth.tar-1"
    torch.save({"state_dict": {"ctx": torch.zeros(4, 32)}, "epoch": 1}, str(ckpt))
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out, trainer="CoCoOp") +
                 ["--eval-only", "--model-dir", str(model_dir), "--load-epoch", "1"])
    err = assert_refused(capsys, rc, out, "learnable keys missing from the checkpoint: ['meta_net.linear1.weight'")
    assert err.startswith(f'Error: Cannot load "{ckpt}" into prompt_learner:\n')
    assert "(is --model-dir the output folder of a CoCoOp run? its config.yaml names the trainer" in err


def _pickle_bomb(path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import torch

    torch.save({"state_dict": Evil(), "epoch": 1}, str(path))
    assert b"system" in path.read_bytes()
    return pickle  # keeps the import used


def test_checkpoint_that_is_a_malicious_pickle(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    model_dir = tmp_path / "evil"
    (model_dir / "head").mkdir(parents=True)
    ckpt = model_dir / "head" / "model.pth.tar-1"
    _pickle_bomb(ckpt)
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out) +
                 ["--eval-only", "--model-dir", str(model_dir), "--load-epoch", "1"])
    err = assert_refused(capsys, rc, out)
    assert err == (
        f'Error: Checkpoint "{ckpt}" is not a weights-only file: it holds pickled Python objects (e.g. posix.system) '
        "that only a full unpickler could load, and unpickling can run arbitrary code, so vlprompt refuses to load "
        "it. Use a file of plain tensors (a state dict saved with torch.save). A legacy Dassl checkpoint (which "
        "pickles its warmup scheduler) must be re-saved as plain tensors where it was written, or retrained.\n")
    assert "truncated" not in err and "Delete" not in err and "weights_only" not in err


@pytest.mark.parametrize("kind", ["pickle", "text"])
def test_bad_backbone_path(tmp_path, data_root, dataset_yaml, method_yaml, capsys, kind):
    weights = tmp_path / "weights.pt"
    if kind == "pickle":
        _pickle_bomb(weights)
    else:
        weights.write_text("not a weight file\n" * 10)
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out) +
                 ["MODEL.BACKBONE.NAME", "ViT-B/16", "MODEL.BACKBONE.PATH", str(weights)])
    err = assert_refused(capsys, rc, out, weights)
    assert err.count("\n") == 1 and "weights_only" not in err
    if kind == "pickle":
        assert err.startswith(f'Error: Weight file "{weights}" is not a weights-only file: it holds pickled Python '
                              "objects (e.g. posix.system)")
    else:
        assert err.startswith(f'Error: Cannot read weight file "{weights}" (')
        assert err.endswith("Check MODEL.BACKBONE.PATH (docs/ENGINE.md lists the formats).\n")


def test_a_bug_keeps_its_traceback(tmp_path, data_root, dataset_yaml, method_yaml, monkeypatch):
    """Only vlprompt.errors.UserError is a user mistake: a ValueError / FileNotFoundError from a bug
    propagates (the traceback is the report), whatever its message."""
    def broken(cfg):
        raise FileNotFoundError(2, "No such file or directory", "/internal/file")

    monkeypatch.setattr(train_mod, "build_trainer", broken)
    with pytest.raises(FileNotFoundError):
        run_cli(args_for(data_root, dataset_yaml, method_yaml, tmp_path / "o"))
    assert train_mod._user_error_code(ValueError("x")) is None
    from vlprompt.errors import InvalidValueError

    assert train_mod._user_error_code(InvalidValueError("x")) == 2


def test_every_command_line_spells_errors_the_same(tmp_path):
    """sweep, results, doctor and download: one ``Error:`` line, exit status 2."""
    cmds = [
        ["-m", "vlprompt.results", str(tmp_path / "nowhere")],
        ["-m", "vlprompt.data.doctor", "--root", str(tmp_path), "--dataset", "OxfordPet"],
        ["-m", "vlprompt.data.download", "OxfordPet", "--root", str(tmp_path)],
        ["-m", "vlprompt.sweep", "--methods", "CoOp", "--protocol", "base2novel", "--root", str(tmp_path),
         "--dry-run"],
    ]
    for c in cmds:
        p = procs.run(c, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert p.returncode == 2, (c, p.stderr)
        assert p.stderr.startswith("Error: ") and p.stderr.count("Error:") == 1, (c, p.stderr)
        assert "Traceback" not in p.stderr and "error:" not in p.stderr, (c, p.stderr)


def test_siglip_tokenizer_without_its_packages_names_the_install_command(monkeypatch):
    """SigLIP's Hugging Face tokenizer without `transformers` (the `siglip` extra): one message naming the
    exact command, raised as a user error (README, "Backbone families")."""
    from vlprompt.clip.tokenizer import OpenClipTokenizer
    from vlprompt.errors import UserError

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed (import raises ImportError)
    with pytest.raises(UserError) as e:
        OpenClipTokenizer("ViT-B-16-SigLIP")
    assert str(e.value) == (
        "The tokenizer of ViT-B-16-SigLIP needs the Python package `transformers`, which is not installed. "
        'SigLIP-family tokenizers are Hugging Face tokenizers: run pip install -e ".[siglip]" in the vlprompt '
        "checkout (or: pip install transformers sentencepiece)")
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert '"siglip": ["transformers>=4.38", "sentencepiece>=0.1.99"]' in f.read()


def test_a_refusal_after_the_log_started_leaves_nothing_either(tmp_path, data_root, dataset_yaml, method_yaml,
                                                               capsys, monkeypatch):
    """A slow start commits the log after LOG_PATIENCE_S seconds; a mistake found later (here: while the
    trainer is built) still leaves the output folder as it was."""
    import time

    from vlprompt.errors import InvalidValueError
    from vlprompt.utils.logger import Logger

    monkeypatch.setattr(train_mod, "LOG_PATIENCE_S", 0.0)
    real = train_mod.build_trainer

    def slow_then_refused(cfg):
        deadline = time.time() + 30
        while isinstance(sys.stdout, Logger) and sys.stdout.deferred and time.time() < deadline:
            time.sleep(0.01)
        assert isinstance(sys.stdout, Logger) and not sys.stdout.deferred  # the log file exists now
        assert os.listdir(cfg.OUTPUT_DIR)
        raise InvalidValueError("MODEL.BACKBONE.NAME is not what it should be")

    monkeypatch.setattr(train_mod, "build_trainer", slow_then_refused)
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out))
    monkeypatch.setattr(train_mod, "build_trainer", real)
    cap = capsys.readouterr()
    assert rc == 2 and cap.err.endswith("Error: MODEL.BACKBONE.NAME is not what it should be\n")
    assert not out.exists()


def test_building_block_refusals_are_user_errors():
    """Values a user sets (a prompt depth, N_CTX, Slurm options) reach the building blocks; their
    refusals are UserErrors, so every command line prints them as one ``Error:`` line."""
    from vlprompt.clip import check_prompt_config
    from vlprompt.errors import UserError
    from vlprompt.sweep.slurm import SlurmOptions

    with pytest.raises(UserError, match="vision prompt depth: prompt depth 13 is larger than the number of transformer layers "
                                        r"\(12\)"):
        check_prompt_config(2, 13, 12, "vision prompt depth")
    with pytest.raises(UserError, match="number of prompt tokens must be >= 1"):
        check_prompt_config(0, 3, 12, "TRAINER.MAPLE.PROMPT_DEPTH")
    with pytest.raises(UserError, match="--array-max must be at least 1, got 0"):
        SlurmOptions(array_max=0)
    with pytest.raises(UserError, match="--slurm-dependency must be afterany or afterok"):
        SlurmOptions(dependency="after")
