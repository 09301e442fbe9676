"""TCP: Textual-based Class-aware Prompt tuning (Yao, Zhang, Xu; CVPR 2024), on the vlprompt engine.

Official code: https://github.com/htyao89/Textual-based_Class-aware_prompt_tuning (``trainers/tcp.py``,
``trainers/clip_text/model.py``). TCP learns

* ``ctx`` (N, d_t): a shared context replacing tokens 1..N of the dataset's prompt text
  (:data:`TCP_PROMPT_TEMPLATES`, e.g. "X X X X {}, a type of pet."); random N(0, 0.02^2) with
  ``CTX_INIT False`` (the official config), the phrase "a photo of a" (N = 4) with any true value;
* ``meta_net`` (the "textual knowledge embedding"): ``linear1`` (d_e -> d_e/4) -> QuickGELU ->
  ``linear2`` (d_e/4 -> 4 d_t), applied to the normalised zero-shot class text features ``t_hat``
  (K, d_e) of :data:`TCP_TEACHER_TEMPLATES`; reshaped to (K, 4, d_t), these **class-aware tokens
  replace tokens 1..4 at the input of text block 8** (0-based; no positional embedding), so the
  prompts differ per class from that block on.

Logits ``s * img_n @ txt_n^T``; loss ``ce`` + ``kg`` with ``kg = KG_WEIGHT * (1 - mean_c cos(txt_n_c,
t_hat_c))`` (KgCoOp's regulariser, eps 1e-7). Official constants exposed as keys with the official
values: ``KG_WEIGHT`` 8.0 (hard-coded in ``CustomCLIP.forward``; the official ``TRAINER.COOP.W`` has no
effect) and ``CLASS_TOKEN_LAYER`` 8 (hard-coded ``layers=[8]``). The official block also has a blend
weight, hard-coded 1.0 (``1.0 * class_tokens + 0.0 * current tokens``): plain replacement, which is
what is implemented (no key). The meta-net always makes 4 tokens (officially ``4 * ctx_dim`` outputs
whatever N_CTX is).

Deliberate differences (docs/METHODS.md, TCP): ``t_hat`` comes from the same frozen CLIP in the run's
precision (officially a second copy that stays fp16 even with PREC fp32, and the meta-net is fp16
whenever ``TRAINER.COCOOP.PREC`` is, i.e. by default); the logits do not detach the (frozen) image
features and logit scale, which changes no gradient. Reproduced: Adam's eps is 1e-3 as in every
official run (``ADAM_EPS``; the official README patches Dassl's Adam, against fp16 NaNs), although
the fp32 master copies here would not need it.

Config ``TRAINER.TCP.{N_CTX=4, CTX_INIT=False, PREC="fp16", KG_WEIGHT=8.0, CLASS_TOKEN_LAYER=8,
ADAM_EPS=1e-3}`` (official train.py default N_CTX 16, but every official run passes 4).

Other backbone families (docs/METHODS.md, "Second-wave methods on the families"): the prompt text is
tokenized with the model's tokenizer and "tokens 1..N" are the first N word tokens wherever the
tokenizer puts them (1..N after CLIP's start token, 0..N-1 on SigLIP, which has none); the class-aware
tokens replace the same slots. On SigLIP's bidirectional text tower the pass runs the full 64 tokens.
"""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import CUSTOM_TEMPLATES, ArgError, ClassPromptLearner, DeepPromptedCLIP, ZeroShotHead, get_template
from vlprompt.clip import clean_classname, init_text_context, model_dims
from vlprompt.clip.prompt_init import token_embeddings
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.methods import MethodCard
from vlprompt.engine.clip_trainer import ClipPromptTrainer

from .kgcoop import KGCOOP_INIT_PHRASE, knowledge_gap

#: TCP's prompt texts (official ``CUSTOM_TEMPLATES``): tokens 1..N are replaced by ``ctx``.
TCP_PROMPT_TEMPLATES = {
    "OxfordPets": "X X X X {}, a type of pet.",
    "OxfordFlowers": "X X X X {}, a type of flower.",
    "FGVCAircraft": "X X X X {}, a type of aircraft.",
    "DescribableTextures": "X X X X {} texture.",
    "EuroSAT": "X X X X {}.",
    "StanfordCars": "X X X X {}, a type of car",  # sic: no final period in the official table
    "Food101": "X X X X {}, a type of food.",
    "SUN397": "X X X X {}.",
    "Caltech101": "X X X X {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
#: prompt text of datasets the official table does not list (its first 4 tokens are replaced)
TCP_DEFAULT_PROMPT_TEMPLATE = "X X X X {}."

#: TCP's zero-shot texts (official ``CUSTOM_TEMPLATES_ori``): meta-net input and regulariser target.
TCP_TEACHER_TEMPLATES = {
    **CUSTOM_TEMPLATES,  # CoOp's table, except these three
    "FGVCAircraft": "a photo of an aircraft {}.",
    "DescribableTextures": "a photo of a {}, a type of texture.",
    "Food101": "a photo of a {}, a type of food.",
}

#: number of class-aware tokens the meta-net makes (officially ``4 * ctx_dim`` outputs)
N_CLASS_TOKENS = 4


def tcp_templates(dataset_name):
    """``(prompt template, zero-shot template)`` of ``DATASET.NAME``."""
    prompt = TCP_PROMPT_TEMPLATES.get(dataset_name, TCP_DEFAULT_PROMPT_TEMPLATE)
    teacher = TCP_TEACHER_TEMPLATES.get(dataset_name) or get_template(dataset_name)
    return prompt, teacher


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's activation, used in the official meta-net)."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class TCPPromptLearner(ClassPromptLearner):
    """TCP's context ``ctx`` and class-aware token generator ``meta_net`` (see the module docstring).

    The prompt of class ``c`` is ``template.format(c)`` with tokens 1..N replaced by ``ctx``.
    :meth:`text_prompts` takes the zero-shot class features ``t_hat`` (K, d_e) and returns the
    prompts and the deep-prompt list for the text encoder (``None`` for every block except
    ``class_token_layer``, which gets the (K, 4, d_t) class-aware tokens).
    """

    def __init__(self, clip_model, classnames, template, n_ctx=4, ctx_init=False, class_token_layer=8):
        dims = model_dims(clip_model)
        layer = int(class_token_layer)
        if not 1 <= layer < dims["text_layers"]:
            raise ArgError("class_token_layer", f"must be a text block index between 1 and {dims['text_layers'] - 1} "
                                                f"(0-based; this backbone has {dims['text_layers']}), got {layer}")
        if "{}" not in template:
            raise ArgError("template", f'must contain "{{}}", got "{template}"')
        self.template = template
        self.class_token_layer = layer
        init = init_text_context(clip_model, n_ctx, KGCOOP_INIT_PHRASE if ctx_init else "", rule="coop")
        super().__init__(clip_model, classnames, "", init.n_ctx)
        print(f'Initial context: "{init.prefix}" over the prompt template "{template}"')
        print(f"Number of context words (tokens): {init.n_ctx}")
        self.ctx = nn.Parameter(init.vectors)
        d_e, d_t = dims["d_embed"], dims["d_text"]
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(d_e, d_e // 4, bias=True)),
            ("relu", QuickGELU()),  # the official name of this activation
            ("linear2", nn.Linear(d_e // 4, N_CLASS_TOKENS * d_t, bias=True)),
        ]))

    @torch.no_grad()
    def set_classnames(self, classnames):
        """Class-derived buffers for ``template.format(name)`` (tokens 1..N become the context)."""
        classnames = list(classnames)
        if not classnames:
            raise ValueError("The class list is empty")
        names = [clean_classname(c) for c in classnames]
        texts = [self.template.format(n) for n in names]
        tok = self._tokenizer  # the model's tokenizer: CLIP's BPE with its start token, or SigLIP's without
        head = self.template.split("{}")[0].strip()
        prefix_tokens = tok.count(head) if head else 0
        if prefix_tokens < self.n_ctx:
            raise ArgError("n_ctx", f'{self.n_ctx} context tokens but the prompt template "{self.template}" has only '
                                    f"{prefix_tokens} tokens before the class name")
        tokenized = tok(texts, self.context_length)
        emb = token_embeddings(self._clip_model, tokenized)
        s = self.first_slot  # the context replaces the first N word tokens (1..N after CLIP's SOS, 0..N-1 on SigLIP)
        self.classnames = names
        self.n_cls = len(names)
        self.name_lens = [tok.count(n) for n in names]
        self.token_prefix = emb[:, :s].contiguous()
        self.token_suffix = emb[:, s + self.n_ctx:].contiguous()
        self.tokenized_prompts = tokenized.to(emb.device)
        self.eot_idx = tok.eot_positions(tokenized).to(emb.device)
        # causal towers run up to the last EOT; bidirectional ones (SigLIP) the full context length
        self._text_length = int(self.eot_idx.max().item()) + 1 if self.truncatable else int(tokenized.shape[1])
        self._on_classnames_changed()

    def class_tokens(self, zero_shot_features):
        """(K, 4, d_t) class-aware tokens from the zero-shot class features (K, d_e)."""
        out = self.meta_net(zero_shot_features.to(self.meta_net[0].weight.dtype))
        return out.reshape(out.shape[0], N_CLASS_TOKENS, self.ctx_dim)

    def text_prompts(self, zero_shot_features):
        deep = [None] * self.class_token_layer
        deep[self.class_token_layer - 1] = self.class_tokens(zero_shot_features)
        return self.assemble(self.ctx), deep


class TCPCLIP(DeepPromptedCLIP):
    """Frozen CLIP with TCP's prompts; ``zero_shot`` holds the class features ``t_hat``."""

    def __init__(self, clip_model, learner, teacher_template):
        super().__init__(clip_model, learner, text=(N_CLASS_TOKENS, learner.class_token_layer + 1))
        self.zero_shot = ZeroShotHead(clip_model, learner.classnames, teacher_template)

    def text_features(self):
        learner = self.prompt_learner
        prompts, deep = learner.text_prompts(self.zero_shot.text_features())
        return self.text_encoder(prompts, learner.eot_idx, deep)


@TRAINER_REGISTRY.register()
class TCP(ClipPromptTrainer):
    """Textual-based Class-aware Prompt tuning."""

    FROZEN_IMAGE_FEATURES = True  # the image tower is not prompted: evaluation uses the feature store

    # official: configs/trainers/TCP/vit_b16_ep100_ctxv1.yaml + scripts/base2new_train.sh (N_CTX 4); the
    # official repo ships no other protocol scripts for ViT-B/16: cross-dataset, DG and few-shot use the
    # same config (docs/METHODS.md)
    CARD = MethodCard(
        config="vit_b16_ep100_ctxv1",
        order=130,
        backbones=ANY_TOWERS,
        cfg_node="TCP",
        # official train.py defaults (TRAINER.COOP there), except N_CTX: 16 there, but the meta-net makes 4
        # tokens and every official run passes N_CTX 4 (scripts/base2new_train.sh), so 4 here
        # ADAM_EPS: the official README patches Dassl's Adam to eps 1e-3 (every official run); applied
        # when OPTIM.NAME is "adam" (0 keeps the optimiser's own eps)
        cfg_defaults=dict(N_CTX=4, CTX_INIT=False, PREC="fp16", KG_WEIGHT=8.0, CLASS_TOKEN_LAYER=8, ADAM_EPS=1e-3),
        cfg_args={"n_ctx": "N_CTX", "ctx_init": "CTX_INIT", "class_token_layer": "CLASS_TOKEN_LAYER"},
        model_name="prompt_learner",
    )
    LOG_ACC = True

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.TCP
        prompt_template, teacher_template = tcp_templates(cfg.DATASET.NAME)
        learner = TCPPromptLearner(clip_model, classnames, prompt_template, n_ctx=m.N_CTX, ctx_init=bool(m.CTX_INIT),
                                   class_token_layer=m.CLASS_TOKEN_LAYER)
        print(f'Zero-shot template (meta-net input, regulariser): "{teacher_template}"')
        return TCPCLIP(clip_model, learner, teacher_template)

    def build_optimizers(self, learnable):
        optimizers = super().build_optimizers(learnable)
        eps = float(self.method_cfg.ADAM_EPS)
        if eps > 0 and str(self.cfg.OPTIM.NAME).lower() == "adam":
            for optim, _ in optimizers.values():
                for group in optim.param_groups:
                    group["eps"] = eps
        return optimizers

    def loss_terms(self, image, label):
        model = self.model
        text = model.text_features()
        logits = model.logits(model.image_features(image), text)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            kg = knowledge_gap(text, model.zero_shot.text_features())
            ce = F.cross_entropy(logits.float(), label)
        return {"ce": ce, "kg": float(self.method_cfg.KG_WEIGHT) * kg}, logits
