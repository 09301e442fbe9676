"""LP++: a linear probe blended with the zero-shot classifier (Huang, Shakeri, Dolz, Boudiaf, Bahig, Ben Ayed,
"LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024, arXiv:2404.02285; official code
FereshteShakeri/FewShot-CLIP-Strong-Baseline, ``methods/linear_probe_p2.py``), on the engine's one loop.

With ``f`` the L2-normalised image features of ONE augmented pass over the few-shot training set (N = K S rows)
and ``T`` (D, K) the normalised zero-shot weights (template ensemble, ImageNet: CLIP's 7 selected templates)::

    logits(f) = classifier(f) + alpha_k (f T)_k             classifier = nn.Linear(D, K) with bias; no logit scale

Everything is derived from the data, as officially (``calculate_*`` in the official file):

* ``classifier.weight`` = per-class **sum** of the training features (``one_hot^T F``; the official division by
  the count is commented out); the bias keeps ``nn.Linear``'s random init ``U(-1/sqrt(D), 1/sqrt(D))`` (the
  Linear is built, weight then bias drawn from the global RNG, then the weight is overwritten);
* ``alpha`` (1, K), every entry ``alpha0 = mean_k(250 / S * (S * m_k))`` with ``m_k`` the mean over class k's rows
  of their own-class text logit ``f . t_k`` (float64, as the official ``.double()``);
* ``lr_w = 4 N / lambda_max(F^T F)`` (``scipy.linalg.eigh``), ``lr_alpha = N / (4 max_c sum_i (f_i . t_c)^2)``.

Training: ``OPTIM.MAX_EPOCH`` (300) epochs of ONE full-batch step each (rows in order): ``CE(logits, y)``
(mean), ``SGD(classifier, lr_w, momentum 0.9)``; ``alpha`` is not in the optimiser: every 10th epoch
(``(epoch + 1) % 10 == 0``) ``alpha -= lr_alpha * alpha.grad``, where the official ``alpha.grad`` is never
zeroed, so it holds the gradients of ALL epochs so far (kept: ``ALPHA_GRAD accumulated``; ``current`` uses the
current epoch's gradient only). The accumulated gradient lives in the buffer ``alpha_grad`` (so checkpoints and
resume keep it).

Selection: after every epoch the accuracy on the selection split (:mod:`vlprompt.features.selection`: the run's
validation split by default, ``TEST.SELECTION_SPLIT test`` reads the test split and marks the run); the
parameters of the **last** epoch reaching the best accuracy (``>=``, official) are restored for the final test.

Deviations (docs/METHODS.md, ## LP++): fp32 instead of the official fp16 end to end (``PREC``); the official
val set has S shots per class (ImageNet: S further training images), vlprompt's few-shot val split has
``min(S, 4)`` (CoOp's rule; ImageNet's val split is its test split: rn50_imagenet.yaml selects on test, marked).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import IMAGENET_TEMPLATES_SELECT, ArgError, PromptedCLIP, ZeroShotHead, get_template
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.clip.templates import classnames_from_tensor, classnames_tensor, reindex_by_classname
from vlprompt.config import ConfigError
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard
from vlprompt.errors import UserRuntimeError
from vlprompt.engine.selection_hook import make_epoch_selection_hook
from vlprompt.features.selection import selection_loader
from vlprompt.features.training import FeatureEpochs, FeatureViewSource

ALPHA_GRADS = ("accumulated", "current")


def lp_templates(dataset_name):
    """The official ``dataset.template``: CLIP's 7 selected templates for ImageNet, else the dataset's one."""
    return list(IMAGENET_TEMPLATES_SELECT) if dataset_name == "ImageNet" else [get_template(dataset_name)]


def class_sums(feats, labels, num_classes):
    """(K, D) per-class sums of ``feats`` (the official ``compute_centroids``: ``one_hot^T @ F``)."""
    one_hot = F.one_hot(labels, num_classes).to(feats.dtype)
    return one_hot.t() @ feats


def init_alpha(feats, labels, shots, text_weights, num_classes):
    """``alpha0`` (float64 scalar): ``mean_k(250 / shots * (shots * m_k))``, ``m_k`` = mean over class k's rows of
    ``(F T)[i, k]`` (the official ``calculate_init_alpha`` / ``compute_centroids_alpha``)."""
    z = feats @ text_weights  # (N, K)
    one_hot = F.one_hot(labels, num_classes).to(z.dtype)
    m = (one_hot * z / one_hot.sum(0, keepdim=True)).sum(0)  # (K,)
    alpha_tilde = m.double() * shots
    return torch.mean(250 / shots * alpha_tilde)


def lr_alpha(feats, text_weights):
    """``N / (4 max_c sum_i (f_i . t_c)^2)`` (the official ``calculate_lr_alpha``)."""
    temp = torch.sum(torch.pow(feats @ text_weights, 2), dim=0)
    return feats.shape[0] / (max(temp) * 4)


def lr_w(feats):
    """``4 N / lambda_max(F^T F)`` with ``scipy.linalg.eigh`` (the official ``calculate_lr_w``)."""
    from scipy.linalg import eigh

    w, _ = eigh((feats.T @ feats).cpu().numpy())
    return (4 * feats.shape[0]) / max(w)


class LPPPHead(nn.Module):
    """``classifier`` (nn.Linear(D, K)), ``alpha_vec`` (1, K), the buffers ``alpha_grad`` (the accumulated
    gradient of ``alpha_vec``) and ``class_names`` (the class of each row, for loading onto another class list); ``forward(f, text_logits)`` -> ``classifier(f) + alpha_vec * text_logits``."""

    def __init__(self, d, classnames):
        super().__init__()
        k = len(classnames)
        self.classifier = nn.Linear(d, k, bias=True)  # weight, then bias drawn from the global RNG
        self.alpha_vec = nn.Parameter(torch.zeros(1, k))
        self.register_buffer("alpha_grad", torch.zeros(1, k))
        self.register_buffer("class_names", classnames_tensor(classnames))

    def forward(self, f, text_logits):
        return self.classifier(f) + torch.ones(f.shape[0], 1, dtype=f.dtype, device=f.device) @ self.alpha_vec * text_logits


class LPPPModel(PromptedCLIP):
    """Frozen CLIP + the LP++ head; ``forward(image)`` -> (B, K) logits."""

    def __init__(self, clip_model, classnames, templates):
        super().__init__(clip_model)
        self.zero_shot = ZeroShotHead(clip_model, classnames, templates)
        self.head = LPPPHead(self.dims["d_embed"], list(classnames))

    def learnable_modules(self):
        return [self.head]

    def text_weights(self):
        """(D, K) normalised zero-shot weights (columns = classes)."""
        return self.zero_shot.text_features().float().t()

    def logits_from_image_features(self, features):
        with torch.autocast(device_type=features.device.type, enabled=False):
            f = F.normalize(features.float(), dim=-1)
            return self.head(f, f @ self.text_weights())

    def forward(self, image):
        return self.logits_from_image_features(self.image_encoder(image))


@TRAINER_REGISTRY.register()
class LPPP(FeatureEpochs, ClipPromptTrainer):
    """LP++ (``LinearProbe_P2``): linear probe + class-wise blending with the zero-shot weights."""

    # few-shot only: the probe scores the classes it was trained on
    CARD = MethodCard(
        config="rn50",  # the official configs/base.yaml (RN50); vit_b16.yaml ships beside it
        # ImageNet: no validation split of its own; its config selects on test, marked (docs/METHODS.md)
        recipes={"few_shot": {"per_dataset": {"imagenet": "rn50_imagenet"}}},
        protocols=("few_shot",),
        order=225,
        backbones=ANY_TOWERS,
        cfg_node="LPPP",
        # ALPHA_UPDATE_EVERY: the official `(epoch + 1) % 10`; ALPHA_GRAD: the official never-zeroed alpha.grad
        cfg_defaults=dict(ALPHA_UPDATE_EVERY=10, ALPHA_GRAD="accumulated", PREC="fp32"),
        cfg_args={"alpha_grad": "ALPHA_GRAD"},
        model_name="lp_pp",
    )
    LOG_ACC = True
    FROZEN_IMAGE_FEATURES = True

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER[cls.CFG_NODE]
        if str(m.ALPHA_GRAD) not in ALPHA_GRADS:
            raise ArgError("alpha_grad", f"must be one of {ALPHA_GRADS}, got '{m.ALPHA_GRAD}'")
        return LPPPModel(clip_model, classnames, lp_templates(cfg.DATASET.NAME))

    def custom_clip(self, cfg, classnames, clip_model):
        model = super().custom_clip(cfg, classnames, clip_model)
        self.model = model.to(self.device)  # the tower gives the training features before the optimiser
        clip_model.to(self.device)
        self._init_from_data(model)
        return model

    def _init_from_data(self, model):
        if int(self.method_cfg.ALPHA_UPDATE_EVERY) < 1:
            raise ConfigError(f"TRAINER.LPPP.ALPHA_UPDATE_EVERY must be >= 1, got {self.method_cfg.ALPHA_UPDATE_EVERY}")
        shots = int(self.cfg.DATASET.NUM_SHOTS)
        items = self.dm.dataset.train_x
        feats, _ = self._train_view()
        labels = self._train_labels
        if shots <= 0:  # all images: the official S is the (balanced) count per class
            shots = int(round(len(items) / self.num_classes))
        missing = sorted(set(range(self.num_classes)) - set(labels.tolist()))
        if missing:
            raise UserRuntimeError(f"LP++: classes {missing[:5]} have no training image; every class needs one")
        with torch.no_grad():
            f = F.normalize(feats.float(), dim=-1).to(self.device)
            T = model.text_weights()
            y = labels.to(self.device)
            k = self.num_classes
            model.head.classifier.weight.data = class_sums(f, y, k)
            a0 = init_alpha(f, y, shots, T, k)  # float64 0-dim: the product keeps the head's dtype
            model.head.alpha_vec.data = a0 * torch.ones(1, k, device=self.device)
            self.lr_w = float(lr_w(f))
            self.lr_alpha = float(lr_alpha(f, T))
        self.alpha0 = float(a0)
        print(f"LP++: init alpha {self.alpha0:.6g}, lr_w {self.lr_w:.6g}, lr_alpha {self.lr_alpha:.6g} "
              f"({f.shape[0]} training features)")

    def _train_view(self):
        """Raw features of ONE augmented pass over ``train_x`` (view 0 of this seed; cached in memory)."""
        if getattr(self, "_train_feats", None) is None:
            self._train_feats = self.train_view_features(0)
            self._train_labels = torch.tensor([int(it.label) for it in self.dm.dataset.train_x], dtype=torch.long)
        return self._train_feats, self._train_labels

    def learnable_module(self):
        return self.model.head

    def build_optimizers(self, learnable):
        optim = torch.optim.SGD(learnable.classifier.parameters(), lr=self.lr_w, momentum=0.9)
        return {self.MODEL_NAME: (optim, None)}  # constant LR; alpha is updated by hand (module docstring)

    def build_model(self):
        selection_loader(self, "LP++")  # a refused selection split fails before any feature is computed
        super().build_model()
        self.register_hook("lp_pp_selection", make_epoch_selection_hook(lambda: self.model.head, strict=False,
                                                                        who="LP++"))

    def batch_source(self):
        if not self.train_from_store():
            raise UserRuntimeError("LP++ trains on one stored pass of training features: set FEATURES.TRAIN_CACHE True")
        feats, labels = self._train_view()
        return FeatureViewSource(feats, labels, feats.shape[0], False, self.device, shuffle=False)

    def parse_batch_train(self, batch):
        return self.image_features_of(batch), batch["label"].to(self.device)

    def loss_terms(self, features, label):
        logits = self.model.logits_from_image_features(features)
        return {"ce": F.cross_entropy(logits, label)}, logits

    def forward_backward(self, batch):
        summary = super().forward_backward(batch)
        head, m = self.model.head, self.method_cfg
        with torch.no_grad():
            grad = head.alpha_vec.grad
            if grad is not None:
                if str(m.ALPHA_GRAD) == "accumulated":
                    head.alpha_grad += grad  # the official never-zeroed .grad
                else:
                    head.alpha_grad.copy_(grad)
                head.alpha_vec.grad = None
            if (self.epoch + 1) % int(m.ALPHA_UPDATE_EVERY) == 0:
                head.alpha_vec.data -= self.lr_alpha * head.alpha_grad
        return summary

    def selection_logits(self, features):
        return self.model.logits_from_image_features(features)

    def extra_results(self):
        extra = dict(super().extra_results() or {})
        extra.update(lr_w=self.lr_w, lr_alpha=self.lr_alpha, init_alpha=self.alpha0)
        return extra

    def _load_learned_state(self, name, module, state_dict, path):
        """A head trained on another class list: its rows are loaded by class name; classes it does not know keep
        this run's data-derived initialisation."""
        if "class_names" not in state_dict or "classifier.weight" not in state_dict:
            return super()._load_learned_state(name, module, state_dict, path)
        saved, current = classnames_from_tensor(state_dict["class_names"]), classnames_from_tensor(module.class_names)
        if saved == current:
            return super()._load_learned_state(name, module, state_dict, path)
        with torch.no_grad():
            hit = 0
            for key, target, dim in (("classifier.weight", module.classifier.weight, 0),
                                     ("classifier.bias", module.classifier.bias, 0),
                                     ("alpha_vec", module.alpha_vec, 1), ("alpha_grad", module.alpha_grad, 1)):
                if key in state_dict:
                    hit = reindex_by_classname(target, state_dict[key].to(target.device, target.dtype), current,
                                               saved, dim=dim)
        print(f"LP++: rows of {hit} of the {len(current)} current classes loaded (by class name)")
