"""TrainerXU (labelled + unlabelled data) for ported Dassl trainers."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from vlprompt.data.datasets import DATASET_REGISTRY, DatasetBase, read_and_split_data
from vlprompt.engine import TRAINER_REGISTRY, TrainerXU, build_trainer
from vlprompt.optim import build_lr_scheduler, build_optimizer


if "FolderWithUnlabelled" not in DATASET_REGISTRY:
    @DATASET_REGISTRY.register()
    class FolderWithUnlabelled(DatasetBase):
        """ImageFolder-like: the train split is labelled; every image also serves as unlabelled data."""

        def __init__(self, cfg):
            import os.path as osp
            import random

            random.seed(0)
            train, val, test = read_and_split_data(osp.join(cfg.DATASET.ROOT, cfg.DATASET.FOLDER))
            super().__init__(train_x=train, train_u=train + val + test, val=val, test=test)


if "PseudoLabelXU" not in TRAINER_REGISTRY:
    @TRAINER_REGISTRY.register()
    class PseudoLabelXU(TrainerXU):
        seen = []

        def build_model(self):
            self.model = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, self.num_classes))
            self.optim = build_optimizer(self.model, self.cfg.OPTIM)
            self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
            self.register_model("model", self.model, self.optim, self.sched)

        def forward_backward(self, batch_x, batch_u):
            x, y, u = self.parse_batch_train(batch_x, batch_u)
            type(self).seen.append((x.shape[0], u.shape[0]))
            loss_x = F.cross_entropy(self.model(x), y)
            pseudo = self.model(u).argmax(1).detach()
            loss = loss_x + 0.1 * F.cross_entropy(self.model(u), pseudo)
            self.model_backward_and_update(loss)
            if self.batch_idx + 1 == self.num_batches:
                self.update_lr()
            return {"loss": loss.item(), "loss_x": loss_x.item()}


@pytest.mark.parametrize("count_iter,expected", [("train_x", 5), ("train_u", 10), ("smaller_one", 5)])
def test_trainer_xu_counts_iterations_and_trains(tmp_path, count_iter, expected, capsys):
    make_image_folder(str(tmp_path / "d"), n_classes=4, n_per_class=10)
    cfg = make_cfg(tmp_path, trainer="PseudoLabelXU", folder="d", output_dir=tmp_path / "out",
                   opts=["TRAIN.COUNT_ITER", count_iter, "OPTIM.MAX_EPOCH", "1", "INPUT.SIZE", "(16, 16)"])
    cfg.DATASET.NAME = "FolderWithUnlabelled"
    cfg.DATALOADER.TRAIN_U.SAME_AS_X = True
    PseudoLabelXU.seen = []
    tr = build_trainer(cfg)
    # 20 labelled images (batch 4 -> 5 batches); 40 unlabelled (all splits) -> 10 batches
    assert len(tr.train_loader_x) == 5 and tr.train_loader_u is not None
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train()
    assert tr.num_batches == expected and len(PseudoLabelXU.seen) == expected
    assert all(not torch.equal(p, q) for p, q in zip(before, tr.model.parameters()))  # every weight moved
    out = capsys.readouterr().out
    assert f"epoch [1/1] batch [{expected}/{expected}]" in out and "loss_x" in out


def test_trainer_xu_without_unlabelled_data_errors(tmp_path):
    make_image_folder(str(tmp_path / "d"), n_classes=3, n_per_class=10)
    cfg = make_cfg(tmp_path, trainer="PseudoLabelXU", folder="d", output_dir=tmp_path / "out",
                   opts=["OPTIM.MAX_EPOCH", "1", "INPUT.SIZE", "(16, 16)"])
    tr = build_trainer(cfg)
    with pytest.raises(ValueError, match="no train_u"):
        tr.train()
