"""ProGrad: Prompt-aligned Gradient for Prompt Tuning (Zhu, Niu, Han, Wu, Zhang; ICCV 2023).

Official code: https://github.com/BeierZhu/Prompt-align (``ProGrad.public/trainers/prograd.py`` and
``TrainerBase.prograd_backward_and_update`` in its ``Dassl.ProGrad.pytorch``). ProGrad learns CoOp's
context and changes only the *update*: per parameter tensor, with ``a`` the gradient of the
cross-entropy and ``b`` the gradient of the distillation term towards zero-shot CLIP,

    g = a - LAMBDA * <a, b/|b|> b/|b|   if <a/|a|, b/|b|> < 0      else   g = a

so the component of ``a`` that conflicts with the zero-shot knowledge is removed (LAMBDA 1). The
distillation term never adds to the update otherwise. Terms (logged): ``ce`` = CE(logits, y) and
``kd`` = mean_i sum_c -softmax(zs_i / T)_c * log_softmax(logits_i / T)_c * T^2 (a soft-target
cross-entropy, as officially, not a KL), with ``zs`` the zero-shot logits of the dataset's template
(:data:`PROGRAD_TEMPLATES`). The logged ``loss`` is ``ce``, the objective whose (projected)
gradient is applied.

Prompt (official init rule, :class:`ProGradPromptLearner`): with ``CTX_INIT`` true the init phrase is
the dataset's template without " {}." (e.g. "a photo of a"), ``N_CTX`` (16) slots hold
``N_CTX - w`` **zero** vectors followed by the phrase's first ``w`` token embeddings, ``w`` = its
number of space-separated words; the prompt text is "X ... X <phrase> <class>.", so a phrase with
more tokens than words (punctuation: "a type of pet, a photo of a") keeps its last tokens as frozen
words after the context. Without ``CTX_INIT``: N(0, 0.02^2), class-specific with ``CSC``.

Deliberate differences (docs/METHODS.md, ProGrad): the zero-shot teacher shares the frozen CLIP and
the image features of the student (the image tower is not prompted, so they are the same features;
officially a second fp32 copy recomputes them); ``CLASS_TOKEN_POSITION middle`` works (officially a
NameError); under ``amp`` the same projection runs (officially that branch is broken).

Config ``TRAINER.PROGRAD.{N_CTX=16, CSC=False, CTX_INIT=False, PREC="fp16", CLASS_TOKEN_POSITION="end",
T=1.0, LAMBDA=1.0}`` (official ``TRAINER.COOP.*`` and ``LOSS.T`` / ``LOSS.LAMBDA``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import APLE_TEMPLATES, ArgError, ClassPromptLearner, DeepPromptedCLIP, ZeroShotHead, get_template
from vlprompt.clip import clean_classname, count_tokens, random_prompt
from vlprompt.clip.towers.text import phrase_vectors
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard

from .coop import POSITIONS, CoOpPromptLearner

#: ProGrad's CUSTOM_TEMPLATES (the same table APLe's teacher uses).
PROGRAD_TEMPLATES = dict(APLE_TEMPLATES)


def prograd_template(dataset_name):
    """ProGrad's template for ``DATASET.NAME`` (other datasets: the project's table)."""
    return PROGRAD_TEMPLATES.get(dataset_name) or get_template(dataset_name, family="aple")


def init_phrase_of(template):
    """The init phrase of a template, as officially: ``template.replace(" {}.", "")``."""
    if not template.endswith(" {}."):
        raise ArgError("ctx_init", f'ProGrad initialises from a template ending in " {{}}.", got "{template}"')
    return clean_classname(template.replace(" {}.", ""))


class ProGradPromptLearner(CoOpPromptLearner):
    """CoOp's context with ProGrad's init rule (see the module docstring). Parameter ``ctx``."""

    def __init__(self, clip_model, classnames, n_ctx=16, init_phrase="", csc=False, class_token_position="end"):
        if class_token_position not in POSITIONS:
            raise ArgError("class_token_position", f"must be one of {POSITIONS}, got '{class_token_position}'")
        n_ctx = int(n_ctx)
        if n_ctx < 1:
            raise ArgError("n_ctx", f"must be >= 1, got {n_ctx}")
        d_t = clip_model.token_embedding.weight.shape[1]
        self.position = class_token_position
        if init_phrase:
            n_words = len(init_phrase.split(" "))
            if n_ctx < n_words:
                raise ArgError("n_ctx", f'{n_ctx} context tokens are fewer than the {n_words} words of the init '
                                        f'phrase "{init_phrase}"')
            if count_tokens(init_phrase, model=clip_model) < n_words:
                raise ArgError("ctx_init", f'the init phrase "{init_phrase}" has fewer tokens than words')
            # the phrase's first w token embeddings under the model's own tokenizer (every family)
            vectors = torch.zeros(n_ctx, d_t)
            vectors[n_ctx - n_words:] = phrase_vectors(clip_model, init_phrase, n_words)
            prefix = " ".join(["X"] * (n_ctx - n_words) + [init_phrase])
            self.csc = False
        else:
            self.csc = bool(csc)
            prefix = " ".join(["X"] * n_ctx)
            if self.csc:
                print("Initializing class-specific contexts")
                vectors = random_prompt(len(classnames) * n_ctx, d_t).view(len(classnames), n_ctx, d_t)
            else:
                print("Initializing a generic context")
                vectors = random_prompt(n_ctx, d_t)
        ClassPromptLearner.__init__(self, clip_model, classnames, prefix, n_ctx)
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(vectors)


def distillation_term(logits, zs_logits, T=1.0):
    """``mean_i sum_c -softmax(zs/T) * log_softmax(logits/T) * T^2`` (official ProGradLoss), fp32."""
    tea = F.softmax(zs_logits.detach().float() / T, dim=-1)
    return (-tea * F.log_softmax(logits.float() / T, dim=-1) * T * T).sum(1).mean()


@torch.no_grad()
def project_conflicting(grads, kd_grads, lambda_=1.0):
    """ProGrad's update, in place, per tensor: where ``<a, b> < 0`` (a = CE gradient, b = KD gradient)
    ``a <- a - lambda * <a, b/|b|> b/|b|``; unchanged otherwise (also when either is zero or missing).

    Returns the list of booleans "projected" (one per tensor)."""
    projected = []
    for a, b in zip(grads, kd_grads):
        if a is None or b is None:
            projected.append(False)
            continue
        b_norm = torch.linalg.norm(b)
        a_norm = torch.linalg.norm(a)
        if not (b_norm > 0 and a_norm > 0):
            projected.append(False)  # officially a NaN cosine, so no projection
            continue
        b_unit = b / b_norm
        if torch.dot((a / a_norm).flatten(), b_unit.flatten()) < 0:
            a.sub_(lambda_ * torch.dot(a.flatten(), b_unit.flatten()) * b_unit)
            projected.append(True)
        else:
            projected.append(False)
    return projected


@TRAINER_REGISTRY.register()
class ProGrad(ClipPromptTrainer):
    """Prompt-aligned Gradient (CoOp + ProGrad's gradient projection)."""

    FROZEN_IMAGE_FEATURES = True  # the image tower is not prompted: evaluation uses the feature store

    # The official repository ships RN50 configs only (rn50 = 200 epochs, rn50_ep50, rn50_ep100). The
    # ViT-B/16 configs are reconstructions (marked in the files): the RN50 files with the backbone
    # changed; base-to-novel uses ep100 like scripts/base2new_train_prograd.sh.
    CARD = MethodCard(
        config="vit_b16_ep100",
        # README: 1 shot rn50_ep50, 2/4 shots rn50_ep100, 8/16 shots rn50 (200 epochs)
        recipes={"few_shot": {"config": "vit_b16", "per_shots": {"1": "vit_b16_ep50", "2": "vit_b16_ep100",
                                                                 "4": "vit_b16_ep100"}}},
        order=110,
        backbones=ANY_TOWERS,
        cfg_node="PROGRAD",
        # official train.py defaults: TRAINER.COOP.{N_CTX, CSC, CTX_INIT, PREC, CLASS_TOKEN_POSITION}, LOSS.{T, LAMBDA}
        cfg_defaults=dict(N_CTX=16, CSC=False, CTX_INIT=False, PREC="fp16", CLASS_TOKEN_POSITION="end", T=1.0,
                          LAMBDA=1.0),
        cfg_args={"n_ctx": "N_CTX", "ctx_init": "CTX_INIT", "class_token_position": "CLASS_TOKEN_POSITION"},
        model_name="prompt_learner",
    )
    LOG_ACC = True

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.PROGRAD
        template = prograd_template(cfg.DATASET.NAME)
        phrase = init_phrase_of(template) if m.CTX_INIT else ""
        learner = ProGradPromptLearner(clip_model, classnames, n_ctx=m.N_CTX, init_phrase=phrase, csc=m.CSC,
                                       class_token_position=m.CLASS_TOKEN_POSITION)
        model = DeepPromptedCLIP(clip_model, learner)
        print(f'Zero-shot teacher template: "{template}"')
        model.zero_shot = ZeroShotHead(clip_model, classnames, template)
        return model

    def loss_terms(self, image, label):
        model = self.model
        image_features = model.image_features(image)  # the teacher's too: the image tower is not prompted
        logits = model.logits(image_features, model.class_text_features())
        with torch.no_grad():
            zs_logits = model.logits(image_features.detach(), model.zero_shot.text_features())
        with torch.autocast(device_type=logits.device.type, enabled=False):
            kd = distillation_term(logits, zs_logits, float(self.method_cfg.T))
            ce = F.cross_entropy(logits.float(), label)
        return {"ce": ce, "kd": kd}, logits

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.precision.autocast():
            terms, logits = self.loss_terms(image, label)
        params = [p for p in self.learnable_module().parameters() if p.requires_grad]
        kd = terms["kd"]
        self.detect_anomaly(kd)
        # Only the direction of the KD gradient is used; under amp it is scaled like the CE's.
        kd_scaled = self.scaler.scale(kd) if self.scaler is not None else kd
        kd_grads = torch.autograd.grad(kd_scaled, params, retain_graph=True, allow_unused=True)
        lam = float(self.method_cfg.LAMBDA)

        def project():
            self.last_projected = project_conflicting([p.grad for p in params], kd_grads, lam)

        loss = self.step(terms["ce"], before_step=project)
        return self.loss_summary(loss, terms, logits, label)
