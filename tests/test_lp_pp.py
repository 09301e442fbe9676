"""LP++ specifics: the data-derived initialisation and learning rates against hand computations, the random
bias, the optimiser, and the alpha step every 10th epoch with the official never-zeroed gradient (and the
``current`` switch). Selection policy: tests/test_selection.py."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from vlprompt.engine import build_trainer
from vlprompt.engine.methods import load_plugins
from vlprompt.utils import restore_stdout

load_plugins()

from trainers.lp_pp import class_sums, init_alpha, lr_alpha, lr_w  # noqa: E402


def test_formulas_match_hand_computation():
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(8, 5, generator=g), dim=-1)
    T = F.normalize(torch.randn(5, 4, generator=g), dim=0)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    z = (f @ T).double().numpy()
    m = np.array([z[y.numpy() == k, k].mean() for k in range(4)])  # own-class text logit per class
    assert math.isclose(float(init_alpha(f, y, 2, T, 4)), 250.0 * m.mean(), rel_tol=1e-6)
    assert init_alpha(f, y, 2, T, 4).dtype == torch.float64
    lam = np.linalg.eigvalsh((f.T @ f).double().numpy()).max()
    assert math.isclose(float(lr_w(f)), 4 * 8 / lam, rel_tol=1e-5)
    assert math.isclose(float(lr_alpha(f, T)), 8 / (4 * (z ** 2).sum(0).max()), rel_tol=1e-5)
    sums = class_sums(f, y, 4)
    assert torch.allclose(sums[1], f[2] + f[3])  # the sum, not the mean (official)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lppp")
    make_image_folder(str(root / "four"), n_classes=4, n_per_class=6)
    return root


def _trainer(data_root, tmp_path, extra=()):
    opts = ["FEATURES.DIR", str(data_root / "store"), "OPTIM.MAX_EPOCH", "10", "DATASET.NUM_SHOTS", "2", *extra]
    cfg = make_cfg(data_root, trainer="LPPP", folder="four", output_dir=str(tmp_path / "out"), opts=opts)
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def test_initialisation_and_optimiser(data_root, tmp_path):
    t = _trainer(data_root, tmp_path)
    head = t.model.head
    feats, labels = t._train_view()
    f = F.normalize(feats.float(), dim=-1)
    T = t.model.text_weights()
    assert torch.allclose(head.classifier.weight, class_sums(f, labels, 4))
    bound = 1 / math.sqrt(f.shape[1])  # nn.Linear's default bias init, never reset (official)
    assert (head.classifier.bias.abs() <= bound).all() and head.classifier.bias.abs().sum() > 0
    a0 = init_alpha(f, labels, 2, T, 4)
    assert torch.allclose(head.alpha_vec, a0.float() * torch.ones(1, 4))
    assert math.isclose(t.lr_w, float(lr_w(f)), rel_tol=1e-6)
    group = t.optim.param_groups[0]
    assert group["lr"] == t.lr_w and group["momentum"] == 0.9 and group["weight_decay"] == 0
    in_optim = {id(p) for p in group["params"]}
    assert id(head.alpha_vec) not in in_optim and id(head.classifier.weight) in in_optim
    # logits: classifier(f) + alpha * (f T), no logit scale
    assert torch.allclose(t.model.logits_from_image_features(feats), head.classifier(f) + head.alpha_vec * (f @ T),
                          atol=1e-5)


@pytest.mark.parametrize("mode", ["accumulated", "current"])
def test_alpha_step_every_10th_epoch(mode, data_root, tmp_path):
    t = _trainer(data_root, tmp_path, extra=["TRAINER.LPPP.ALPHA_GRAD", mode])
    head = t.model.head
    feats, labels = t._train_view()
    batch = {"feat": feats, "label": labels}
    a0 = head.alpha_vec.detach().clone()
    grads = []
    t.set_model_mode("train")
    for e in range(10):
        t.epoch, t.batch_idx, t.num_batches = e, 0, 1
        loss = F.cross_entropy(t.model.logits_from_image_features(feats), labels)
        grads.append(torch.autograd.grad(loss, head.alpha_vec)[0])
        t.forward_backward(batch)
        if e < 9:
            assert torch.equal(head.alpha_vec.detach(), a0)  # no alpha step before the 10th epoch
    used = torch.stack(grads).sum(0) if mode == "accumulated" else grads[-1]
    assert torch.allclose(head.alpha_vec.detach(), a0 - t.lr_alpha * used, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(head.alpha_vec.detach(), a0)
    restore_stdout()


def test_training_equals_the_official_loop(data_root, tmp_path):
    """12 epochs through the engine's loop and the selection hook = the official ``LinearProbe_P2.forward`` loop
    (written out here on the same features and the same initial bias) at the epoch it selects on val."""
    from vlprompt.features.extract import loader_features

    t = _trainer(data_root, tmp_path, extra=["OPTIM.MAX_EPOCH", "12", "TEST.NO_TEST", "True"])
    head = t.model.head
    feats, y = t._train_view()
    f = F.normalize(feats.float(), dim=-1)
    T = t.model.text_weights()
    vf, _ = loader_features(t, t.val_loader, "val")
    vf = F.normalize(vf.float(), dim=-1)
    vy = torch.tensor([int(it.label) for it in t.val_loader.dataset.data_source])
    classifier = torch.nn.Linear(f.shape[1], 4)
    classifier.load_state_dict(head.classifier.state_dict())
    alpha = head.alpha_vec.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD(classifier.parameters(), t.lr_w, momentum=0.9)
    best, best_state = 0.0, None
    for epoch in range(12):
        logits = classifier(f) + torch.ones(f.shape[0], 1) @ alpha * (f @ T)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha.data -= t.lr_alpha * alpha.grad.data
        with torch.no_grad():
            acc = 100.0 * float(((classifier(vf) + alpha * (vf @ T)).argmax(1) == vy).float().mean())
        if acc >= best:
            best, best_state = acc, (classifier.weight.detach().clone(), classifier.bias.detach().clone(),
                                     alpha.detach().clone(), epoch + 1)
    t.train()
    restore_stdout()
    assert t.hp_selection["epoch"] == best_state[3] and t.hp_selection["accuracy"] == pytest.approx(best)
    assert torch.allclose(head.classifier.weight, best_state[0], atol=1e-5)
    assert torch.allclose(head.classifier.bias, best_state[1], atol=1e-5)
    assert torch.allclose(head.alpha_vec, best_state[2], rtol=1e-5, atol=1e-5)
