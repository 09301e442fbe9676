"""Which method runs on which backbone family, for the prompt-learning methods (every registered
method outside ``families_matrix.FROZEN_TOWER_METHODS``, methods registered later included): trains one
step and evaluates on each small family backbone, or stops with the refusal of the table
(tests/families_matrix.py; the zero-shot, feature-based and LoRA methods: tests/test_families_methods_frozen.py).
"""
import pytest

from tests.families_matrix import KNOWN, REFUSED, SPECS, cases, check_case, data_root  # noqa: F401

CASES, IDS = cases(frozen_group=False)


@pytest.mark.parametrize("method,family,label,opts", CASES, ids=IDS)
def test_method_runs_or_is_refused_on_family(method, family, label, opts, data_root, tmp_path, capsys):  # noqa: F811
    check_case(method, family, label, opts, data_root, tmp_path, capsys)


def test_the_table_covers_the_methods_of_this_tree():
    # every method of the table is registered (a renamed trainer would silently leave the matrix)
    assert KNOWN <= set(SPECS), sorted(KNOWN - set(SPECS))
    assert {m for m, _ in REFUSED} <= KNOWN
