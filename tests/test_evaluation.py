"""Evaluator semantics (accuracy, macro-F1 like sklearn, per-class) and compute_accuracy."""
import torch

from vlprompt.config import get_cfg_default
from vlprompt.evaluation import Classification, macro_f1
from vlprompt.metrics import compute_accuracy


def _logits(preds, k):
    out = torch.zeros(len(preds), k)
    out[torch.arange(len(preds)), torch.tensor(preds)] = 1
    return out


def test_macro_f1_hand_computed():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 3]  # class 3 is not in y_true: a miss for class 2, not averaged
    # class 0: tp1 fp0 fn1 -> 2/3; class 1: tp2 fp1 fn0 -> 4/5; class 2: 0
    assert abs(macro_f1(y_true, y_pred) - 100 * (2 / 3 + 4 / 5 + 0) / 3) < 1e-9


def test_classification_block(capsys):
    cfg = get_cfg_default()
    cfg.TEST.PER_CLASS_RESULT = True
    ev = Classification(cfg, lab2cname={0: "a", 1: "b", 2: "c"})
    ev.process(_logits([0, 1, 1], 3), torch.tensor([0, 1, 2]))
    ev.process(_logits([2], 3), torch.tensor([2]))
    res = ev.evaluate()
    out = capsys.readouterr().out
    assert list(res)[:3] == ["accuracy", "error_rate", "macro_f1"]
    assert res["accuracy"] == 75.0 and res["error_rate"] == 25.0
    assert "=> result\n* total: 4\n* correct: 3\n* accuracy: 75.0%\n* error: 25.0%\n* macro_f1:" in out
    assert "* class: 2 (c)\ttotal: 2\tcorrect: 1\tacc: 50.0%" in out
    assert res["perclass_accuracy"] == (100 + 100 + 50) / 3
    ev.reset()
    ev.process(_logits([0], 3), torch.tensor([1]))
    assert ev.evaluate()["accuracy"] == 0.0


def test_compute_accuracy_topk():
    out = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05]])
    acc1, acc2 = compute_accuracy((out,), torch.tensor([1, 1]), topk=(1, 2))
    assert acc1.item() == 50.0 and acc2.item() == 100.0 and acc1.shape == (1,)
