"""Shared by the per-method tests of KgCoOp, ProGrad and TCP: base-class accuracy of a method's toy
recipe against zero-shot CLIP on the toy world (ToyShapes, base classes, 16 shots, seed 1).

The toy dataset is built once per process under a temporary root, and the zero-shot accuracy is
computed once per process (cached here).
"""
import os.path as osp
import tempfile

_STATE = {}


def toy_root():
    if "root" not in _STATE:
        from vlprompt.toy.data import ensure_toy_dataset

        root = tempfile.mkdtemp(prefix="vlprompt_toy_methods_")
        ensure_toy_dataset("ToyShapes", root, log=None)
        _STATE["root"] = root
    return _STATE["root"]


def _accuracy(trainer, out, opts):
    from tests.test_toy import _run_trainer
    from vlprompt.utils import restore_stdout

    try:
        acc, _ = _run_trainer(trainer, toy_root(), out, opts=opts)
    finally:
        restore_stdout()
    return acc


def base_accuracy_gain(trainer, tmp_path, opts=()):
    """``(accuracy - zero-shot accuracy, accuracy, zero-shot accuracy)`` on the ToyShapes base classes."""
    common = ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]
    if "zs" not in _STATE:
        _STATE["zs"] = _accuracy("ZeroshotCLIP", osp.join(toy_root(), "_zs_out"), common)
    acc = _accuracy(trainer, str(tmp_path / trainer), common + list(opts))
    return acc - _STATE["zs"], acc, _STATE["zs"]
