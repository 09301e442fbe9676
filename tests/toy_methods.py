"""The toy world's ToyShapes dataset, built once per process under a temporary root, for the tests that
train on it (the plug-in tests)."""

_STATE = {}


def toy_root():
    if "root" not in _STATE:
        from tests.helpers import shared_toy_root

        _STATE["root"] = shared_toy_root("ToyShapes")
    return _STATE["root"]
