"""APLe: Token-wise Adaptive for Multi-modal Prompt Learning (arXiv 2401.06827), on the vlprompt engine.

The method, its sources and the project's decisions (what was reconstructed): docs/METHODS.md (## APLe).

**Prompts** (decoupled, no coupling layers; MaPLe's insertion rules, ``N = N_CTX``, ``J = PROMPT_DEPTH``):

* ``compound_prompts_text_ctx`` (N, d_t): shallow text context in slots 1..N. With ``CTX_INIT`` and
  ``N <= 4`` it starts from the first N tokens of the phrase and the prompt keeps the whole phrase, so
  for N=2 "of a" stay frozen tokens (MaPLe's rule); otherwise N(0, 0.02^2) with an "X X ..." prefix;
* ``compound_prompts_text[i-1]`` (N, d_t), i = 1..J-1: deep text prompts (slots 1..N of text block i);
* ``compound_prompts_vision_shareI`` (N, d_v): shallow vision prompts appended after the patch tokens,
  before ``ln_pre``;
* ``compound_prompts_vision[i-1]`` (N, d_v): deep vision prompts (last N tokens of vision block i).

(The parameter names are the public code's, so its whole-model checkpoints load too.) Trainable
parameters: ``N * J * (d_t + d_v)``, 23,040 at ViT-B/16 with N=2, J=9. Widths come from the model.

**Image adapter** (:class:`vlprompt.clip.adapters.FrequencyAdapter`) on the normalised input, at
training and test time: ``alpha * x + (1 - alpha) * real(IFFT(G * FFT(x)))``, G a peak-1 Gaussian
(sigma in cycles/pixel). ``ADAPTER paper`` (default) is that low-pass; ``reference_code`` reproduces
the public code's quirks (which make it ~0.9 x).

**Teacher**: the same frozen CLIP without prompts or adapter (the student's frozen weights are
shared, no second copy), APLe's per-dataset template (``get_template(name, family="aple")`` or
``TEACHER_TEMPLATE``), fed the *un-adapted* image. Its text features are computed once per class list
(lazily, at the first training step: eval-only runs never compute them), live in a non-persistent
buffer of the model (never in a checkpoint) and are dropped when the class list changes.

**Token-wise schedule** (``STAGE_SCHEDULE iteration``, the public code's): per mini-batch, with the
teacher's probabilities computed once,

1. text step:   ``CE + LAMBDA_TEXT * KD``,   only the text optimiser steps;
2. vision step: ``CE + LAMBDA_VISION * KD``, only the vision optimiser steps;
3. joint step:  ``CE (+ LAMBDA_JOINT * KD, default 0)``, both step.

``KD = mean_batch sum_k -p_zs,k log softmax(z / tau)_k * tau^2`` (tau = ``KD_TEMPERATURE``). Two SGD
optimisers (text prompts / vision prompts). ``TEXT_LR_SCHEDULE same_as_vision`` (default) schedules
both with warm-up + cosine; ``constant`` keeps the text LR at ``OPTIM.LR`` (the public code).
``STAGE_ORDER`` may permute or subset the stages; ``STAGE_SCHEDULE epoch`` runs one stage per epoch
instead (``STAGE_EPOCHS`` epochs each, in ``STAGE_ORDER``).

**What the passes of one batch share** (exactly; the values are identical to a recomputation): the
adapted image and the teacher's probabilities (once per batch); text features are recomputed only
after the text prompts changed and image features only after the vision prompts changed. A stage
uses the features of the modality it does not update detached (no backward through that encoder),
and features are built with an autograd graph only if a remaining stage of the batch will update
that modality, so one forward serves several stages. With the default order: image features of
step 1 (graph kept) are reused with gradient by step 2; text features of step 2 (graph kept) are
reused with gradient by step 3. Per batch: 2 text and 2 image forwards, 2 backward passes through
each encoder, 1 teacher image forward (the naive schedule needs 3 + 3 forwards and backwards).

**Checkpoints** (``MultiModalPromptLearner/``): the learned prompts only (class-derived buffers are
non-persistent; no frozen CLIP, no teacher features); the engine saves and resumes both named optimisers
("vision" in Dassl's slots, "text" under ``optimizers``). Loading onto another class list (base ->
novel, ImageNet -> other datasets) rebuilds the class-derived buffers.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import (
    ClassPromptLearner,
    DeepPromptedCLIP,
    ZeroShotHead,
    get_template,
    init_text_context,
    model_dims,
    prompt_geometry,
    random_deep_prompts,
    random_prompt,
)
from vlprompt.clip.adapters import ADAPTER_MODES, FrequencyAdapter
from vlprompt.config import ConfigError
from vlprompt.clip.families import PROMPTABLE_VISION
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.methods import MethodCard
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.optim import build_lr_scheduler, build_optimizer

STAGES = ("text", "vision", "joint")
#: which prompt sets each stage updates
STAGE_UPDATES = {"text": ("text",), "vision": ("vision",), "joint": ("text", "vision")}
STAGE_SCHEDULES = ("iteration", "epoch")
TEXT_LR_SCHEDULES = ("same_as_vision", "constant")


def kd_loss(student_logits, teacher_probs, temperature=1.0):
    """``mean_batch sum_k -p_k * log_softmax(z / T)_k * T^2`` (soft cross-entropy; the gradient of
    ``KL(p || softmax(z / T))``). With ``softmax(z / T) == p`` its value is the teacher's entropy
    (times T^2) and its gradient is zero."""
    t = float(temperature)
    logp = F.log_softmax(student_logits.float() / t, dim=-1)
    return -(teacher_probs.float() * logp).sum(dim=-1).mean() * (t * t)


def stage_epochs(order, max_epoch, counts=()):
    """The stage of every epoch for ``STAGE_SCHEDULE epoch``: ``counts[i]`` epochs of ``order[i]``.

    Empty ``counts``: ``max_epoch`` split as evenly as possible, earlier stages taking the extra
    epochs (5 epochs, 3 stages -> 2, 2, 1).
    """
    order = list(order)
    if counts:
        counts = [int(c) for c in counts]
        if len(counts) != len(order) or any(c < 0 for c in counts) or sum(counts) != max_epoch:
            raise ConfigError(
                f"TRAINER.APLE.STAGE_EPOCHS={tuple(counts)} must give one non-negative epoch count per stage of "
                f"STAGE_ORDER={tuple(order)}, summing to OPTIM.MAX_EPOCH={max_epoch}"
            )
    else:
        base, extra = divmod(max_epoch, len(order))
        counts = [base + (1 if i < extra else 0) for i in range(len(order))]
        if 0 in counts:
            raise ConfigError(
                f"OPTIM.MAX_EPOCH={max_epoch} is too short for one epoch per stage of {tuple(order)} with "
                "STAGE_SCHEDULE epoch; set TRAINER.APLE.STAGE_EPOCHS explicitly or train longer"
            )
    plan = []
    for stage, c in zip(order, counts):
        plan += [stage] * c
    return plan


class MultiModalPromptLearner(ClassPromptLearner):
    """APLe's independent text and vision prompts (see the module docstring for the names).

    ``text_prompts()`` -> ``(prompts (K, text_length, d_t), deep_text [J-1 x (N, d_t)])``;
    ``vision_prompts()`` -> ``(vision_ctx (N, d_v), deep_vision [J-1 x (N, d_v)])``.
    """

    def __init__(self, clip_model, classnames, n_ctx=2, depth=9, ctx_init="a photo of a"):
        n_ctx, depth = prompt_geometry(clip_model, n_ctx, depth)
        init = init_text_context(clip_model, n_ctx, ctx_init, rule="maple")
        super().__init__(clip_model, classnames, init.prefix, init.n_ctx)
        print("APLe design: decoupled multi-modal prompts (no coupling layers)")
        print(f'Initial context: "{init.prefix}"')
        print(f"Number of APLe context words (tokens): {n_ctx}; prompt depth: {depth}")
        self.depth = depth
        self.shared_prefix_length = 1 + n_ctx  # SOS + the generic context
        dims = model_dims(clip_model)
        d_t, d_v = dims["d_text"], dims["d_vision"]
        self.compound_prompts_text_ctx = nn.Parameter(init.vectors)
        self.compound_prompts_text = random_deep_prompts(depth - 1, n_ctx, d_t)
        self.compound_prompts_vision_shareI = nn.Parameter(random_prompt(n_ctx, d_v))
        self.compound_prompts_vision = random_deep_prompts(depth - 1, n_ctx, d_v)

    def text_parameters(self):
        return [self.compound_prompts_text_ctx, *self.compound_prompts_text]

    def vision_parameters(self):
        return [self.compound_prompts_vision_shareI, *self.compound_prompts_vision]

    def text_prompts(self):
        return self.assemble(self.compound_prompts_text_ctx), list(self.compound_prompts_text)

    def vision_prompts(self):
        return self.compound_prompts_vision_shareI, list(self.compound_prompts_vision)


class APLeCLIP(DeepPromptedCLIP):
    """Frozen CLIP + APLe prompts + image adapter + zero-shot teacher; ``forward(image)`` -> logits.

    ``teacher_template``: the teacher's template (with ``{}``); the teacher shares the frozen CLIP.
    """

    def __init__(self, clip_model, classnames, n_ctx=2, depth=9, ctx_init="a photo of a", adapter="paper",
                 adapter_sigma=0.05, adapter_alpha=0.9, teacher_template="a photo of a {}."):
        learner = MultiModalPromptLearner(clip_model, classnames, n_ctx=n_ctx, depth=depth, ctx_init=ctx_init)
        geometry = (learner.n_ctx, learner.depth)
        super().__init__(clip_model, learner, text=geometry, vision=geometry)
        self.adapter = FrequencyAdapter(sigma=adapter_sigma, alpha=adapter_alpha, mode=adapter)
        self.teacher = ZeroShotHead(clip_model, classnames, teacher_template)
        self.teacher_template = teacher_template

    def forward(self, image):
        return self.logits(self.image_features(self.adapter(image)), self.class_text_features())

    def teacher_logits(self, image):
        """Zero-shot CLIP logits of the *un-adapted* image."""
        return self.teacher.logits(image)


@TRAINER_REGISTRY.register()
class APLe(ClipPromptTrainer):
    """APLe: decoupled text/vision prompts trained token-wise, with an image adapter and a zero-shot teacher."""

    CARD = MethodCard(
        config="vit_b16_c2_ep5_batch4_2ctx",
        recipes={"cross_dataset": "vit_b16_c2_ep5_batch4_2ctx_cross_datasets",
                 "few_shot": "vit_b16_c2_ep5_batch4_2ctx_fewshot"},
        order=90,
        backbones=PROMPTABLE_VISION,  # vision prompts: transformer image towers only
        cfg_node="APLE",
        cfg_defaults=dict(
        N_CTX=2,
        CTX_INIT="a photo of a",
        PREC="fp16",
        PROMPT_DEPTH=9,
        ADAPTER="paper",
        ADAPTER_SIGMA=0.05,
        ADAPTER_ALPHA=0.9,
        LAMBDA_TEXT=0.5,
        LAMBDA_VISION=0.4,
        LAMBDA_JOINT=0.0,
        KD_TEMPERATURE=1.0,
        STAGE_ORDER=("text", "vision", "joint"),
        STAGE_SCHEDULE="iteration",
        STAGE_EPOCHS=(),
        TEXT_LR_SCHEDULE="same_as_vision",
        TEACHER_TEMPLATE="",
        ),
        cfg_args={"n_ctx": "N_CTX", "depth": "PROMPT_DEPTH", "ctx_init": "CTX_INIT", "mode": "ADAPTER",
                  "sigma": "ADAPTER_SIGMA", "alpha": "ADAPTER_ALPHA", "templates": "TEACHER_TEMPLATE"},
        model_name="MultiModalPromptLearner",
    )

    # ---- config -----------------------------------------------------------------------------

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        m = cfg.TRAINER.APLE
        if m.ADAPTER not in ADAPTER_MODES:
            raise ConfigError(f"TRAINER.APLE.ADAPTER must be one of {ADAPTER_MODES}, got '{m.ADAPTER}'")
        if m.TEXT_LR_SCHEDULE not in TEXT_LR_SCHEDULES:
            raise ConfigError(
                f"TRAINER.APLE.TEXT_LR_SCHEDULE must be one of {TEXT_LR_SCHEDULES}, got '{m.TEXT_LR_SCHEDULE}'"
            )
        if m.STAGE_SCHEDULE not in STAGE_SCHEDULES:
            raise ConfigError(f"TRAINER.APLE.STAGE_SCHEDULE must be one of {STAGE_SCHEDULES}, got '{m.STAGE_SCHEDULE}'")
        order = list(m.STAGE_ORDER)
        if not order or any(s not in STAGES for s in order):
            raise ConfigError(f"TRAINER.APLE.STAGE_ORDER must be a non-empty list of {STAGES}, got {tuple(order)}")
        for key in ("LAMBDA_TEXT", "LAMBDA_VISION", "LAMBDA_JOINT"):
            if float(m[key]) < 0:
                raise ConfigError(f"TRAINER.APLE.{key} must be >= 0, got {m[key]}")
        if not float(m.KD_TEMPERATURE) > 0:
            raise ConfigError(f"TRAINER.APLE.KD_TEMPERATURE must be > 0, got {m.KD_TEMPERATURE}")
        if m.STAGE_SCHEDULE == "epoch":
            stage_epochs(order, int(cfg.OPTIM.MAX_EPOCH), tuple(m.STAGE_EPOCHS))
        elif tuple(m.STAGE_EPOCHS):
            raise ConfigError("TRAINER.APLE.STAGE_EPOCHS is only used with STAGE_SCHEDULE epoch")

    # ---- model and optimisers -----------------------------------------------------------------

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.APLE
        return APLeCLIP(clip_model, classnames, n_ctx=m.N_CTX, depth=m.PROMPT_DEPTH, ctx_init=m.CTX_INIT,
                        adapter=m.ADAPTER, adapter_sigma=m.ADAPTER_SIGMA, adapter_alpha=m.ADAPTER_ALPHA,
                        teacher_template=m.TEACHER_TEMPLATE or get_template(cfg.DATASET.NAME, family="aple"))

    def build_optimizers(self, learnable):
        # Two named optimisers; "vision" is the first (Dassl's checkpoint slots, the LR shown in the log).
        cfg = self.cfg
        optim_vision = build_optimizer(learnable.vision_parameters(), cfg.OPTIM)
        optim_text = build_optimizer(learnable.text_parameters(), cfg.OPTIM)
        sched_text = None
        if cfg.TRAINER.APLE.TEXT_LR_SCHEDULE == "same_as_vision":
            sched_text = build_lr_scheduler(optim_text, cfg.OPTIM)
        return {"vision": (optim_vision, build_lr_scheduler(optim_vision, cfg.OPTIM)), "text": (optim_text, sched_text)}

    def build_model(self):
        super().build_model()
        cfg, m = self.cfg, self.cfg.TRAINER.APLE
        pl = self.model.prompt_learner
        n_text = sum(p.numel() for p in pl.text_parameters())
        n_vision = sum(p.numel() for p in pl.vision_parameters())
        assert n_text + n_vision == self.num_trainable_params, "text/vision split misses a learnable parameter"
        self.lambdas = {"text": float(m.LAMBDA_TEXT), "vision": float(m.LAMBDA_VISION), "joint": float(m.LAMBDA_JOINT)}
        self.kd_temperature = float(m.KD_TEMPERATURE)
        self.stage_order = list(m.STAGE_ORDER)
        self.epoch_stages = None
        if m.STAGE_SCHEDULE == "epoch":
            self.epoch_stages = stage_epochs(self.stage_order, int(cfg.OPTIM.MAX_EPOCH), tuple(m.STAGE_EPOCHS))
        ad = self.model.adapter
        print(f"Text prompts: {n_text:,} parameters; vision prompts: {n_vision:,} parameters")
        print(f"Image adapter: {ad.mode} (sigma {ad.sigma} cycles/pixel, alpha {ad.alpha}), at train and test time")
        print(f'Teacher: frozen zero-shot CLIP (shared weights), template "{self.model.teacher_template}"')
        desc = " -> ".join(
            f"{s} (CE" + (f" + {self.lambdas[s]:g} KD)" if self.lambdas[s] > 0 else ")") for s in self.stage_order
        )
        if self.epoch_stages is None:
            print(f"Token-wise schedule per iteration: {desc}")
        else:
            print(f"Token-wise schedule per epoch: {desc}; epochs: {self.epoch_stages}")
        print(f"Text LR schedule: {m.TEXT_LR_SCHEDULE}")

    # ---- training step --------------------------------------------------------------------------

    def stages_for_epoch(self, epoch):
        if self.epoch_stages is None:
            return self.stage_order
        return [self.epoch_stages[min(epoch, len(self.epoch_stages) - 1)]]

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        return self.run_stages(image, label, self.stages_for_epoch(self.epoch))

    def run_stages(self, image, label, stages):
        """Run ``stages`` (e.g. ``["text", "vision", "joint"]``) on one batch; returns the loss summary.

        ``loss`` is the cross-entropy of the last stage (step 3 by default); ``kd_<stage>`` the KD
        term of every stage that uses one.
        """
        model = self.model
        need_kd = any(self.lambdas[s] > 0 for s in stages)
        with self.precision.autocast(), torch.no_grad():
            adapted = model.adapter(image)  # the input is fixed for the batch: adapt once
            teacher_probs = None
            if need_kd:
                teacher_probs = F.softmax(model.teacher_logits(image).float() / self.kd_temperature, dim=-1)
        compute = {"text": model.text_features, "vision": lambda: model.image_features(adapted)}
        feats = {"text": None, "vision": None}  # valid for the current prompts; with a graph if needed
        summary = {}
        for i, stage in enumerate(stages):
            updates = STAGE_UPDATES[stage]
            used = {}
            with self.precision.autocast():
                for mod in ("text", "vision"):
                    if feats[mod] is None:
                        # keep an autograd graph only if some remaining stage of this batch updates `mod`
                        # (the features stay valid until then: `mod` does not change before it)
                        graph = any(mod in STAGE_UPDATES[s] for s in stages[i:])
                        with torch.set_grad_enabled(graph):
                            feats[mod] = compute[mod]()
                    if mod in updates:
                        if not feats[mod].requires_grad:
                            raise RuntimeError(f"internal: {mod} features have no graph in the {stage} step")
                        used[mod] = feats[mod]
                    else:
                        used[mod] = feats[mod].detach()
                logits = model.logits(used["vision"], used["text"])
                ce = F.cross_entropy(logits, label)
                loss = ce
                if self.lambdas[stage] > 0:
                    kd = kd_loss(logits, teacher_probs, self.kd_temperature)
                    loss = ce + self.lambdas[stage] * kd
                    summary[f"kd_{stage}"] = kd.item()
            self.step(loss, optimizers=updates)
            for mod in updates:
                feats[mod] = None  # those prompts changed
            summary["loss"] = ce.item()
        # "loss" last, as in the other trainers' log lines: "loss ... kd_text ... kd_vision ..." reads better
        return {"loss": summary.pop("loss"), **summary}

    def extra_results(self):
        out = dict(super().extra_results() or {})
        pl = self.model.prompt_learner
        out["trainable_params_text"] = int(sum(p.numel() for p in pl.text_parameters()))
        out["trainable_params_vision"] = int(sum(p.numel() for p in pl.vision_parameters()))
        return out
