"""TaskRes specifics: the raw template-mean base, zero-init residual (logits = zero-shot with that base), the
residual as the only tensor with gradients, the residual scale, class names as given, rows by class name."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from vlprompt.clip.tokenizer import tokenize
from vlprompt.engine import build_trainer
from vlprompt.engine.methods import load_plugins
from vlprompt.utils import restore_stdout

load_plugins()

from trainers.taskres import taskres_templates  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("taskres")
    make_image_folder(str(root / "four"), n_classes=4, n_per_class=4)
    return root


def _trainer(data_root, tmp_path, extra=()):
    opts = ["FEATURES.DIR", str(data_root / "store"), *extra]
    cfg = make_cfg(data_root, trainer="TaskRes", folder="four", output_dir=str(tmp_path / "out"), opts=opts)
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def test_templates():
    assert len(taskres_templates("ImageNet")) == 8 and taskres_templates("ImageNet")[-1] == "a photo of a {}."
    assert taskres_templates("DescribableTextures") == ["{} texture."]


def test_base_residual_logits_and_gradients(data_root, tmp_path):
    t = _trainer(data_root, tmp_path, extra=["TRAINER.TASKRES.RESIDUAL_SCALE", "0.5"])
    learner = t.model.prompt_learner
    clip = t.model._clip_model
    names = t.dm.dataset.classnames
    assert any("_" in n for n in names)  # class_0 ...: formatted as given (official), not 'class 0'
    tokens = tokenize([taskres_templates(t.cfg.DATASET.NAME)[0].format(n) for n in names], model=clip)
    with torch.no_grad():
        raw = clip.encode_text(tokens).float()
    assert torch.allclose(learner.base_text_features, raw, atol=1e-5)  # raw, not normalised
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(names)))
    assert torch.equal(learner.text_feature_residuals, torch.zeros_like(raw))
    x = torch.randn(3, raw.shape[1])
    zs = clip.logit_scale.exp() * F.normalize(x, dim=-1) @ F.normalize(raw, dim=-1).t()
    assert torch.allclose(t.model.logits_from_image_features(x), zs, atol=1e-4)
    # one step: only the residual gets a gradient, scaled by the residual scale at the zero init
    t.set_model_mode("train")
    t.epoch, t.batch_idx, t.num_batches = 0, 0, 1
    y = torch.tensor([0, 1, 2])
    loss = F.cross_entropy(t.model.logits_from_image_features(x), y)
    g_res = torch.autograd.grad(loss, learner.text_feature_residuals)[0]
    t_var = learner.base_text_features.clone().requires_grad_(True)
    f = F.normalize(x, dim=-1)
    loss_t = F.cross_entropy(clip.logit_scale.exp() * f @ F.normalize(t_var, dim=-1).t(), y)
    g_t = torch.autograd.grad(loss_t, t_var)[0]
    assert torch.allclose(g_res, 0.5 * g_t, atol=1e-6)
    trainable = [n for n, p in t.model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_learner.text_feature_residuals"]
    t.forward_backward({"feat": x, "label": y})
    assert learner.text_feature_residuals.abs().sum() > 0
    restore_stdout()


def test_rows_follow_class_names(data_root, tmp_path):
    t = _trainer(data_root, tmp_path)
    learner = t.model.prompt_learner
    with torch.no_grad():
        learner.text_feature_residuals.copy_(torch.arange(4.0)[:, None].expand_as(learner.text_feature_residuals))
    names = list(t.dm.dataset.classnames)
    t.set_classnames([names[2], "unknown class", names[1]])
    res = t.model.prompt_learner.text_feature_residuals
    assert res.shape[0] == 3 and t._models["prompt_learner"] is t.model.prompt_learner
    assert torch.all(res[0] == 2) and torch.all(res[1] == 0) and torch.all(res[2] == 1)
    restore_stdout()
