"""2SFS: two-stage few-shot adaptation (Farina et al., "Rethinking Few-Shot Adaptation of Vision-Language Models
in Two Stages", CVPR 2025, arXiv:2503.11609; official code FarinaMatteo/rethinking_fewshot_vlms, ``fs/twostage.py``,
``fs/utils/model_utils.py``, ``main.py``).

A budget of ``N_ITERS x shots`` iterations (``M`` = 300), split in two stages:

1. **PEFT** (the first ``int(M * shots * ALPHA)`` iterations, ``ALPHA`` = 0.6): the LayerNorm affine
   parameters of the residual blocks of both encoders are trained (``LN_MODALITY both``, from block
   ``LN_VISION_START`` / ``LN_TEXT_START``), with CE on ``exp(logit_scale) * img_n @ txt_n^T`` and the text
   features of the template recomputed at every iteration. Official quirk kept: ``ln_pre``, ``ln_post`` and
   ``ln_final`` are frozen (the official module walk yields them twice, the second time with block index -1,
   which freezes them again; ``TRAINER.TWOSFS.OUTER_LN True`` trains them too).
2. **Classifier** (the remaining iterations): a linear classifier (K, d) initialised with the normalised text
   features of the template under the stage-1-adapted text encoder; the backbone frozen (no gradient);
   logits ``exp(logit_scale) * img_n @ normalise(classifier)^T``.

Each stage has its own AdamW (lr 2e-4, weight decay 0.01, betas 0.9/0.999) and cosine schedule to 1e-6 over
the stage's iterations, stepped every iteration. An iteration counts only when the gradient scaler did not
skip the step (official: fp16 autocast + GradScaler, ``PREC amp`` on CUDA). The data follow the official
sequence of passes over the few-shot loader: stage 1's last pass is cut at its last counted iteration and stage 2
starts a fresh pass. ``OPTIM.MAX_EPOCH`` only splits the budget into engine epochs (logs, checkpoints; epoch ``e``
runs ``floor((e+1) T / E) - floor(e T / E)`` iterations, a pass continuing across epochs).

Inference ("selective"): classes the classifier was trained on use their rows; other classes (novel ones)
the adapted text encoder's feature of the template; the stacked classifier is normalised.
"""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip.blocks import PromptedCLIP
from vlprompt.clip.templates import clean_classname
from vlprompt.clip.tokenizer import model_tokenizer
from vlprompt.config import ConfigError
from vlprompt.data.batch_sources import BatchSource
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard
from vlprompt.protocol.families import TEXT_ANY

MODALITIES = ("both", "vision", "text")
OUTER = ("ln_pre", "ln_post", "ln_final")


def twosfs_template(dataset_name):
    """``template[0]`` of the official datasets: 'a photo of a {}.' for every dataset (the dataset-specific
    templates are overridden by a second assignment in each ``datasets/*.py``)."""
    return "a photo of a {}."


def trainable_layernorms(clip_model, modality="both", vision_start=0, text_start=0, outer=False):
    """``{"vision": [(name, LayerNorm)], "text": [...]}``: the LayerNorms the official ``trainable_norm_params``
    leaves trainable (those inside ``resblocks.<i>`` with ``i >= start``; with ``outer`` also ln_pre/ln_post/
    ln_final)."""
    out = {"vision": [], "text": []}
    for name, module in clip_model.named_modules():
        if not isinstance(module, nn.LayerNorm):
            continue
        side = "vision" if "visual" in name else "text"
        if modality not in ("both", side):
            continue
        start = vision_start if side == "vision" else text_start
        parts = name.split("resblocks.")
        if len(parts) > 1:
            if int(parts[-1].split(".")[0]) >= start:
                out[side].append((name, module))
        elif outer and name.split(".")[-1] in OUTER:
            out[side].append((name, module))
    return out


class LayerNormSet(nn.Module):
    """The stage-1 parameters: the chosen LayerNorms (shared with the frozen CLIP), under ``vision`` / ``text``
    with keys ``<path with _ for .>``."""

    def __init__(self, chosen):
        super().__init__()
        self.vision = nn.ModuleDict({n.replace(".", "_"): m for n, m in chosen["vision"]})
        self.text = nn.ModuleDict({n.replace(".", "_"): m for n, m in chosen["text"]})


def _encode_names(names):
    return torch.tensor(list(json.dumps(list(names)).encode("utf-8")), dtype=torch.uint8)


class StageTwoClassifier(nn.Module):
    """The stage-2 classifier (official ``SingleStreamClassifier.classifier``), the class names it was built
    for and whether it was initialised from the adapted text encoder."""

    def __init__(self, k, d, classnames):
        super().__init__()
        self.classifier = nn.Parameter(torch.zeros(k, d))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("class_names", _encode_names(classnames))

    def classnames(self):
        return json.loads(bytes(self.class_names.tolist()).decode("utf-8"))

    def adapt_to_state_dict(self, state_dict):
        """A checkpoint trained on another class list: take its shapes (its rows are matched by name)."""
        w, names = state_dict.get("classifier"), state_dict.get("class_names")
        if w is not None and tuple(w.shape) != tuple(self.classifier.shape):
            self.classifier = nn.Parameter(torch.zeros_like(w, device=self.classifier.device))
        if names is not None and names.shape != self.class_names.shape:
            self.class_names = torch.zeros_like(names, device=self.class_names.device)


class TwoStageModel(nn.Module):
    """The learnable module: ``ln`` (stage 1) and ``head`` (stage 2)."""

    def __init__(self, ln, head):
        super().__init__()
        self.ln, self.head = ln, head
        self.register_buffer("iters", torch.zeros((), dtype=torch.long))  # counted iterations (resume)

    def adapt_to_state_dict(self, state_dict):
        self.head.adapt_to_state_dict({k[len("head."):]: v for k, v in state_dict.items() if k.startswith("head.")})


class TwoSFSModel(PromptedCLIP):
    """Frozen CLIP with trainable LayerNorms + the stage-2 classifier; ``stage`` selects the forward."""

    def __init__(self, clip_model, classnames, template, modality="both", vision_start=0, text_start=0, outer=False):
        v = clip_model.visual
        if not (hasattr(getattr(v, "transformer", None), "resblocks") and hasattr(clip_model, "transformer")):
            raise ConfigError("2SFS tunes the LayerNorms of the residual blocks of CLIP's two transformers (the "
                              "official code: 'RN not supported'); supported: CLIP ViT backbones with CLIP's text "
                              f"transformer (e.g. ViT-B/16); this backbone's image tower is "
                              f"{type(getattr(v, 'trunk', v)).__name__}")
        super().__init__(clip_model)
        chosen = trainable_layernorms(clip_model, modality, vision_start, text_start, outer)
        if not chosen["vision"] and not chosen["text"]:
            from vlprompt.clip import ArgError

            raise ArgError("modality", "no LayerNorm of the chosen encoders is trainable (check the start blocks)")
        self.template = template
        self.train_classnames = [str(c) for c in classnames]
        self.twostage = TwoStageModel(LayerNormSet(chosen), StageTwoClassifier(len(classnames), self.dims["d_embed"],
                                                                               self.train_classnames))
        self.stage = 1
        self._tokenizer = model_tokenizer(clip_model)
        self.register_buffer("token_ids", None, persistent=False)
        self.set_classnames(classnames)

    def learnable_modules(self):
        return [self.twostage]

    def set_classnames(self, classnames):
        self.classnames = [str(c) for c in classnames]
        self.token_ids = self._tokens(self.classnames)
        super().set_classnames(classnames)

    def _tokens(self, names):
        """Official ``tokenize_texts``: the template with ``_`` read as a space, the model's tokenizer."""
        ids = self._tokenizer([self.template.format(clean_classname(c)) for c in names])
        return ids.to(self.logit_scale.device)

    def text_features(self, ids=None):
        return self.text_encoder.encode_tokens(self.token_ids if ids is None else ids)

    @torch.no_grad()
    def init_classifier(self):
        """Stage 2's init: normalised text features of the training classes under the adapted encoder."""
        head = self.twostage.head
        t = self.text_features(self._tokens(head.classnames())).float()
        head.classifier.copy_(t / t.norm(dim=-1, keepdim=True))
        head.initialised.fill_(True)

    def inference_classifier(self):
        """Selective inference: trained rows for known classes, the adapted text feature for the others."""
        head = self.twostage.head
        # before stage 2 (no classifier yet) every class takes its text feature, which is the classifier's init
        known = {c: i for i, c in enumerate(head.classnames())} if bool(head.initialised) else {}
        text = self.text_features().float()
        rows = [head.classifier[known[c]].float() if c in known else text[j] for j, c in enumerate(self.classnames)]
        w = torch.stack(rows)
        return w / w.norm(dim=-1, keepdim=True)

    def forward(self, image):
        scale = self.logit_scale.exp().float()
        training = self.twostage.training  # the engine sets the learnable module's mode
        if training and self.stage == 1:
            text = self.text_features()
            img = self.image_encoder(image)
            with torch.autocast(device_type=img.device.type, enabled=False):
                img, text = img.float(), text.float()
                img = img / img.norm(dim=-1, keepdim=True)
                text = text / text.norm(dim=-1, keepdim=True)
                return scale * img @ text.t()
        if training:
            with torch.no_grad():
                img = self.image_encoder(image)
            w = self.twostage.head.classifier
            w = w / w.norm(dim=-1, keepdim=True)
        else:
            img = self.image_encoder(image)
            w = self.cached_text_features(self.inference_classifier, owner=self.twostage)
        with torch.autocast(device_type=img.device.type, enabled=False):
            img = img.float()
            img = img / img.norm(dim=-1, keepdim=True)
            return scale * img @ w.float().t()


class BudgetSource(BatchSource):
    """One engine epoch: ``n`` batches of the official sequence of passes (module docstring). The pass in
    progress continues into the next epoch; at the stage switch (the first batch after ``T1`` counted
    iterations) the stage-1 pass is dropped and stage 2 starts a fresh one, as the official second loop does.
    The run's last epoch goes on until the whole budget is counted (steps the gradient scaler skipped)."""

    def __init__(self, trainer, n, last):
        self.trainer, self.n, self.last = trainer, int(n), bool(last)

    def __len__(self):
        return self.n

    def __iter__(self):
        t = self.trainer
        produced = 0
        while produced < self.n or (self.last and t.count_iters < t.total_iters):
            if t.enter_stage():  # a new stage starts a new pass
                t._pass = None
            if t._pass is None:
                t._pass = iter(t.train_loader_x)
            batch = next(t._pass, None)
            if batch is None:  # the pass ended: a fresh one
                t._pass = None
                continue
            yield (batch,)
            produced += 1


@TRAINER_REGISTRY.register()
class TwoSFS(ClipPromptTrainer):
    """2SFS (see the module docstring)."""

    CARD = MethodCard(
        config="vit_b16", protocols=("few_shot", "base2new"), order=239,
        # the official code walks resblocks of both transformers (CLIP ViTs only: "RN not supported")
        backbones={"text": TEXT_ANY, "vision": ("clip_vit",), "clip_towers": True},
        lr_unit="iteration", cfg_node="TWOSFS",
        # official main.py argparse defaults (n_iters, n_iters_frac, ln_modality, ln_*_start; eta_min in
        # fs/twostage.py); PREC amp = fp16 autocast + GradScaler
        cfg_defaults=dict(N_ITERS=300, ALPHA=0.6, PEFT="ln", LN_MODALITY="both", LN_VISION_START=0,
                          LN_TEXT_START=0, OUTER_LN=False, ETA_MIN=1e-6, TEMPLATE="", PREC="amp"),
        cfg_args={"modality": "LN_MODALITY"}, model_name="twostage",
    )
    LOG_ACC = True

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        m = cfg.TRAINER.TWOSFS
        if m.PEFT != "ln":
            raise ConfigError(f"TRAINER.TWOSFS.PEFT: only 'ln' (the paper's 2SFS) is implemented, got '{m.PEFT}'")
        if m.LN_MODALITY not in MODALITIES:
            raise ConfigError(f"TRAINER.TWOSFS.LN_MODALITY must be one of {MODALITIES}, got '{m.LN_MODALITY}'")
        if not 0.0 <= float(m.ALPHA) <= 1.0:
            raise ConfigError(f"TRAINER.TWOSFS.ALPHA must be in [0, 1], got {m.ALPHA}")
        if int(m.N_ITERS) < 1:
            raise ConfigError(f"TRAINER.TWOSFS.N_ITERS (iterations per shot) must be >= 1, got {m.N_ITERS}")
        if m.TEMPLATE and "{}" not in m.TEMPLATE:
            raise ConfigError(f'TRAINER.TWOSFS.TEMPLATE must contain "{{}}", got "{m.TEMPLATE}"')

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.TWOSFS
        return TwoSFSModel(clip_model, classnames, m.TEMPLATE or twosfs_template(cfg.DATASET.NAME),
                           modality=m.LN_MODALITY, vision_start=int(m.LN_VISION_START),
                           text_start=int(m.LN_TEXT_START), outer=bool(m.OUTER_LN))

    def learnable_module(self):
        return self.model.twostage

    # ---- the budget ----------------------------------------------------------------------------
    def build_data_loader(self):
        super().build_data_loader()
        loader = self.train_loader_x
        if loader.drop_last and not isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler):
            # the official train loader keeps the last partial batch (drop_last=False), unlike Dassl's
            self.train_loader_x = torch.utils.data.DataLoader(
                loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler, num_workers=loader.num_workers,
                drop_last=False, pin_memory=loader.pin_memory)
        m, shots = self.cfg.TRAINER.TWOSFS, int(self.cfg.DATASET.NUM_SHOTS)
        if shots >= 1:
            self.total_iters = int(m.N_ITERS) * shots
        else:  # all images: no shot count to scale the budget with; OPTIM.MAX_EPOCH passes
            self.total_iters = int(self.cfg.OPTIM.MAX_EPOCH) * len(self.train_loader_x)
            print(f"2SFS: DATASET.NUM_SHOTS {shots} (all images): the budget is OPTIM.MAX_EPOCH passes")
        self.stage1_iters = int(self.total_iters * float(m.ALPHA))
        if self.total_iters < self.max_epoch:
            raise ConfigError(f"2SFS's budget of {self.total_iters} iterations (TRAINER.TWOSFS.N_ITERS x "
                              f"DATASET.NUM_SHOTS) cannot fill OPTIM.MAX_EPOCH = {self.max_epoch} epochs: lower "
                              "OPTIM.MAX_EPOCH")
        self._pass = None
        print(f"2SFS budget: {self.total_iters} iterations, stage 1 (LayerNorms) {self.stage1_iters}, stage 2 "
              f"(classifier) {self.total_iters - self.stage1_iters}, in {self.max_epoch} epochs (OPTIM.MAX_EPOCH only "
              f"splits the budget for logs and checkpoints; one pass over the few-shot set = "
              f"{len(self.train_loader_x)} batches)")

    @property
    def count_iters(self):
        return int(self.model.twostage.iters)

    @count_iters.setter
    def count_iters(self, value):
        self.model.twostage.iters.fill_(int(value))

    def epoch_iterations(self, epoch):
        t, n = self.total_iters, self.max_epoch
        return (epoch + 1) * t // n - epoch * t // n

    def enter_stage(self):
        """Stage 2 once ``T1`` iterations are counted (its classifier initialised from the adapted text encoder
        on entry); returns True when the stage changed."""
        if self.model.stage == 1 and self.count_iters >= self.stage1_iters:
            if not bool(self.model.twostage.head.initialised):
                with self.precision.autocast():  # official: encode_text under fp16 autocast
                    self.model.init_classifier()
                print("2SFS: stage 2: classifier initialised with the adapted text encoder's features")
            self.model.stage = 2
            return True
        return False

    def batch_source(self):
        return BudgetSource(self, self.epoch_iterations(self.epoch), self.epoch == self.max_epoch - 1)

    def build_optimizers(self, learnable):
        o, m = self.cfg.OPTIM, self.method_cfg
        wd, lr = float(o.WEIGHT_DECAY), float(o.LR)
        ln_params = [p for p in learnable.ln.parameters()]
        opt1 = torch.optim.AdamW(ln_params, lr=lr, weight_decay=wd, betas=(0.9, 0.999))
        opt2 = torch.optim.AdamW([learnable.head.classifier], lr=lr, weight_decay=wd, betas=(0.9, 0.999))
        eta = float(m.ETA_MIN)
        # torch's CosineAnnealingLR with T_max 0 divides by zero; a stage without iterations never steps
        s1 = torch.optim.lr_scheduler.CosineAnnealingLR(opt1, max(self.stage1_iters, 1), eta_min=eta)
        s2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, max(self.total_iters - self.stage1_iters, 1), eta_min=eta)
        return {"stage1": (opt1, s1), "stage2": (opt2, s2)}

    def update_lr(self, names=None):
        """Only the current stage's schedule, and only after a counted (not skipped) step."""
        if getattr(self, "_skipped", False):
            return
        name = "stage1" if self.model.stage == 1 else "stage2"
        self._optimizers[name][1].step()
        self._lr_stepped_epoch = self.epoch

    def get_current_lr(self, names=None):
        name = "stage1" if self.model.stage == 1 else "stage2"
        return self._optimizers[name][0].param_groups[0]["lr"]

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.precision.autocast():
            logits = self.model(image)
            terms = {"ce": F.cross_entropy(logits.float(), label)}
        scale = self.scaler.get_scale() if self.scaler is not None else None
        loss = self.step(terms, optimizers=["stage1" if self.model.stage == 1 else "stage2"])
        self._skipped = scale is not None and scale > self.scaler.get_scale()
        if not self._skipped:
            self.count_iters += 1
        return self.loss_summary(loss, terms, logits, label)

    def test(self, split=None):
        if not bool(self.model.twostage.head.initialised):  # a budget without stage-2 iterations
            with self.precision.autocast():
                self.model.init_classifier()
        return super().test(split)


__all__ = ["TwoSFS", "TwoSFSModel", "trainable_layernorms", "twosfs_template"]
