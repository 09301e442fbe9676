"""Which method runs on which backbone family, for zero-shot CLIP, the feature-based methods (linear
probe, CLIP-Adapter, Tip-Adapter(-F)) and CLIP-LoRA: trains one step and evaluates on each small family
backbone, or stops with the refusal of the table (tests/families_matrix.py).
"""
import pytest

from tests.families_matrix import cases, check_case, data_root  # noqa: F401

CASES, IDS = cases(frozen_group=True)


@pytest.mark.parametrize("method,family,label,opts", CASES, ids=IDS)
def test_method_runs_or_is_refused_on_family(method, family, label, opts, data_root, tmp_path, capsys):  # noqa: F811
    check_case(method, family, label, opts, data_root, tmp_path, capsys)
