"""Shared test setup: run from the repository root so ``trainers``/``datasets`` import, keep torch
to one thread (CI has 2 cores), and restore stdout after runs that install the log tee."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)
# ... and so do the processes the tests start (``python train.py``, the sweep's jobs): with two xdist workers,
# a 2-thread child beside the other worker puts 3-4 busy threads on 2 cores, and a run of many small kernels
# then waits at every parallel region for the thread that lost its core
os.environ["OMP_NUM_THREADS"] = "1"
# Bytecode caches on, here and in those processes, even where PYTHONDONTWRITEBYTECODE is set (as on the
# development and CI machines): otherwise every worker re-rewrites every test module's asserts on each run
# (~10 s of a worker's collection) and every started process compiles the project's modules again. The
# caches go to the __pycache__ folders git ignores.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.fixture(autouse=True, scope="session")
def _feature_store_in_a_temp_dir(tmp_path_factory):
    """The feature store of every run of the suite lives in a session temp folder, never in ~/.cache."""
    old = os.environ.get("VLPROMPT_FEATURE_CACHE")
    os.environ["VLPROMPT_FEATURE_CACHE"] = str(tmp_path_factory.mktemp("feature_store"))
    yield
    if old is None:
        os.environ.pop("VLPROMPT_FEATURE_CACHE", None)
    else:
        os.environ["VLPROMPT_FEATURE_CACHE"] = old


@pytest.fixture(autouse=True, scope="session")
def _shared_toy_root(tmp_path_factory):
    """Where tests.helpers.shared_toy_root builds the toy datasets once for the whole run: beside the workers'
    own temp folders under xdist (one folder per run, removed with pytest's old temp folders)."""
    base = tmp_path_factory.getbasetemp()
    os.environ["VLPROMPT_TEST_TOY_ROOT"] = str((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)
                                               / "toydata_shared")
    yield


@pytest.fixture(autouse=True)
def _restore_stdout():
    yield
    from vlprompt.utils import restore_stdout
    restore_stdout()
