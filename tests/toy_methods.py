"""The toy world's ToyShapes dataset, built once per process under a temporary root, for the tests that
train on it (the plug-in tests)."""
import tempfile

_STATE = {}


def toy_root():
    if "root" not in _STATE:
        from vlprompt.toy.data import ensure_toy_dataset

        root = tempfile.mkdtemp(prefix="vlprompt_toy_methods_")
        ensure_toy_dataset("ToyShapes", root, log=None)
        _STATE["root"] = root
    return _STATE["root"]
