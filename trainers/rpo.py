"""RPO: Read-only Prompt Optimization for Vision-Language Few-shot Learning (Lee et al., ICCV 2023), on the
vlprompt engine.

Official code: https://github.com/mlvlab/RPO (``trainers/rpo.py``, ``configs/trainers/RPO/*.yaml``,
``scripts/rpo/*.sh``). RPO learns K prompt pairs (``prompt_learner.text_prompt`` (K, d_t),
``prompt_learner.img_prompt`` (K, d_v)) that **read** the frozen model's tokens but are never read by them:

* Text: the sentence ``DATASET.PROMPT`` with ``_`` replaced by the class name ('a photo of a {name}.') is
  embedded with its positional embedding; prompt k takes position ``eot + 1 + k`` of every class sequence
  (no positional embedding). Per-class attention mask: causal, and every column ``>= eot + 1`` is ``-inf``
  for every row, so no token attends to a prompt and prompt k attends to the sentence (SOS..EOT) only.
  ``txt_k = ln_final(x[eot + 1 + k]) @ text_projection``.
* Image: the K prompts are appended after the class token and the patches (after the positional embedding,
  before ``ln_pre``; no positional embedding), with the mask ``-inf`` on the last K columns for every row.
  ``img_k = ln_post(x[prompt k]) @ proj``.
* Logits: the mean over k of ``exp(logit_scale) img_k_n @ txt_k_n^T`` (pair k with pair k); loss CE.

So the original tokens' states, hence the class token and EOT features, are exactly the frozen CLIP's; only
the prompt rows change. The shared encoders take the masks through ``attn_mask`` (text: per class, the plain
path with per-block fast attention; image: every block, fast paths kept), the positions read through
``read_idx`` and the prompts' missing positional embedding through ``no_position`` (``vlprompt.clip.prompted``).

Init (official, global torch RNG): ``text_prompt = E[EOT] + 0.1 u_t``, then ``img_prompt = class_embedding
+ 0.1 u_v``, with ``u`` Gaussian rows scaled to unit norm. Class names are used **as the dataset gives them**
(``TRAINER.RPO.RAW_CLASSNAMES True``, official: an underscore stays in the sentence and is its own token);
``False`` reads ``_`` as a space like the other methods. Deviations (docs/METHODS.md, RPO): the stored
sentence embeddings are not mutated in place; ``torch.autograd.set_detect_anomaly(True)`` (set globally by the
official ``build_model``; slow) is not switched on; logits are computed in fp32 outside autocast; with
``PREC fp16`` the prompts keep fp32 master copies. ``CTX_INIT`` is kept as a key and unused, as officially.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import ArgError, PromptedCLIP, clean_classname, tokenize
from vlprompt.clip.backbone import tower_kinds
from vlprompt.clip.prompt_init import token_embeddings
from vlprompt.clip.tokenizer import model_tokenizer
from vlprompt.config import register_cfg_extension
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard

#: the official train.py default of ``DATASET.PROMPT`` (every official dataset yaml sets the same)
DEFAULT_PROMPT = "a photo of a _."


@register_cfg_extension
def extend_cfg_rpo_prompt(cfg):
    """The official ``DATASET.PROMPT`` key (train.py's ``extend_cfg``): RPO's sentence, ``_`` = the class name."""
    if "PROMPT" not in cfg.DATASET:
        cfg.DATASET.PROMPT = DEFAULT_PROMPT


def _unit_noise(k, d):
    noise = torch.randn(k, d)
    return noise / noise.norm(dim=-1, keepdim=True)


class ReadOnlyPrompts(nn.Module):
    """RPO's K prompt pairs (official ``PromptLearner``; keys ``text_prompt``, ``img_prompt``)."""

    def __init__(self, clip_model, k):
        super().__init__()
        k = int(k)
        if k < 1:
            raise ArgError("k", f"the number of prompt pairs must be >= 1, got {k}")
        self.K = k
        with torch.no_grad():
            eot = torch.tensor([model_tokenizer(clip_model).eot], device=clip_model.token_embedding.weight.device)
            text = clip_model.token_embedding(eot).float().cpu().repeat(k, 1)
            text += 0.1 * _unit_noise(k, text.shape[1])
            cls = clip_model.visual.class_embedding.detach().float().cpu()
            visual = cls.repeat(k, 1)
            visual += 0.1 * _unit_noise(k, visual.shape[1])
        self.text_prompt = nn.Parameter(text)
        self.img_prompt = nn.Parameter(visual)

    def forward(self):
        return self.text_prompt, self.img_prompt


def text_read_only_mask(eot_idx, k, length):
    """(C, length, length) additive masks: causal, and ``-inf`` in every column ``>= eot + 1`` (the official
    per-class text mask; ``eot_idx`` (C,))."""
    cols = torch.arange(length, device=eot_idx.device)
    mask = torch.full((length, length), float("-inf"), device=eot_idx.device).triu_(1)
    mask = mask.unsqueeze(0).repeat(eot_idx.shape[0], 1, 1)
    mask.masked_fill_((cols.unsqueeze(0) >= (eot_idx + 1).unsqueeze(1)).unsqueeze(1), float("-inf"))
    return mask


def vision_read_only_mask(n_tokens, k, device=None):
    """(n_tokens + k)^2 additive mask with ``-inf`` on the last ``k`` columns (the official visual mask)."""
    mask = torch.zeros(n_tokens + k, n_tokens + k, device=device)
    mask[:, -k:] = float("-inf")
    return mask


class RPOCLIP(PromptedCLIP):
    """Frozen CLIP with RPO's read-only prompts; ``forward(image)`` -> (B, C) fp32 logits.

    Args: ``clip_model`` (open_clip CLIP, ViT image tower), ``classnames``, ``k`` (prompt pairs),
    ``prompt`` (the sentence, ``_`` = the class name), ``raw_classnames`` (keep ``_`` in class names, official).
    """

    def __init__(self, clip_model, classnames, k=24, prompt=DEFAULT_PROMPT, raw_classnames=True):
        text_kind, vision_kind = tower_kinds(clip_model)
        if not hasattr(clip_model, "transformer") or vision_kind != "clip_vit":
            raise ArgError("backbone", "RPO masks the attention of open_clip's CLIP towers; this backbone's towers "
                                       f"(text {text_kind}, image {vision_kind}) are not supported; supported "
                                       "backbones: open_clip CLIP ViTs (OpenAI / LAION / DFN / MetaCLIP, e.g. ViT-B/16)")
        if "_" not in str(prompt):
            raise ArgError("prompt", f'the sentence must contain "_" (replaced by the class name), got "{prompt}"')
        learner = ReadOnlyPrompts(clip_model, k)
        super().__init__(clip_model, vision_prompts=(learner.K, 1))
        self.prompt_learner = learner
        self.prompt = str(prompt)
        self.raw_classnames = bool(raw_classnames)
        object.__setattr__(self, "_clip_model", clip_model)  # referenced, not a child
        for name in ("prompt_embeddings", "eot_idx", "read_idx", "no_position", "text_mask"):
            self.register_buffer(name, None, persistent=False)
        self.set_classnames(classnames)

    @torch.no_grad()
    def set_classnames(self, classnames):
        classnames = list(classnames)
        if not classnames:
            raise ArgError("classnames", "the class list is empty")
        names = [str(c) if self.raw_classnames else clean_classname(c) for c in classnames]
        self.classnames = names
        T = self.dims["context_length"]
        tokens = tokenize([self.prompt.replace("_", c) for c in names], T)
        eot = tokens.argmax(dim=-1)
        k = self.prompt_learner.K
        if int(eot.max()) + k >= T:
            worst = names[int(eot.argmax())]
            raise ArgError("k", f"{k} prompts after the sentence of class '{worst}' (EOT at position {int(eot.max())}) "
                                f"do not fit in the context length {T}; use fewer prompts or a shorter sentence")
        emb = token_embeddings(self._clip_model, tokens)
        device = emb.device
        eot = eot.to(device)
        self.prompt_embeddings = emb
        self.eot_idx = eot
        self.read_idx = eot.unsqueeze(1) + 1 + torch.arange(k, device=device)
        no_pos = torch.zeros(tokens.shape, dtype=torch.bool, device=device)
        no_pos.scatter_(1, self.read_idx, True)
        self.no_position = no_pos
        self.text_mask = text_read_only_mask(eot, k, T)
        self.text_cache.clear()

    def text_features(self):
        """(C, K, d_e) features of the K text prompts of every class (not normalised)."""
        text_prompt = self.prompt_learner.text_prompt
        C = self.prompt_embeddings.shape[0]
        x = self.prompt_embeddings.scatter(
            1, self.read_idx.unsqueeze(-1).expand(-1, -1, text_prompt.shape[1]),
            text_prompt.to(self.prompt_embeddings.dtype).unsqueeze(0).expand(C, -1, -1))
        return self.text_encoder(x, self.eot_idx, attn_mask=self.text_mask, read_idx=self.read_idx,
                                 no_position=self.no_position)

    def image_features(self, image):
        """``(cls (B, d_e), prompts (B, K, d_e))``: the class-token features (the frozen CLIP's) and those of the
        K image prompts (not normalised)."""
        v = self.image_encoder.visual
        k = self.prompt_learner.K
        n_tokens = 1 + v.positional_embedding.shape[0] - 1  # class token + patches
        mask = vision_read_only_mask(n_tokens, k, device=image.device)
        cls, tokens = self.image_encoder(image, self.prompt_learner.img_prompt, attn_mask=mask,
                                         return_prompt_tokens=True)
        return cls, tokens @ v.proj.to(tokens.dtype)

    def forward(self, image):
        text = self.cached_text_features(self.text_features)
        _, img = self.image_features(image)
        with torch.autocast(device_type=img.device.type, enabled=False):
            img_n = F.normalize(img.float(), dim=-1)
            txt_n = F.normalize(text.float(), dim=-1)
            scale = self.logit_scale.exp().float()
            logits = torch.zeros(img_n.shape[0], txt_n.shape[0], device=img_n.device)
            for i in range(self.prompt_learner.K):  # official order: a sum over the pairs, then / K
                logits = logits + scale * img_n[:, i] @ txt_n[:, i].t()
            return logits / self.prompt_learner.K


@TRAINER_REGISTRY.register()
class RPO(ClipPromptTrainer):
    """Read-only Prompt Optimization."""

    # official: scripts/rpo/base2new_generalization_main.sh (main_K24, all 11 datasets ImageNet included),
    # domain_generalization_main.sh / xd_train.sh (imagenet_k24_ep15 on ImageNet, evaluated on the targets),
    # efs_base2new_generalization_main.sh (main_K4 at 1..16 shots: the few-shot experiments)
    CARD = MethodCard(
        config="main_K24",
        recipes={"cross_dataset": "imagenet_k24_ep15", "few_shot": "main_K4"},
        order=145,
        # masks the attention of open_clip CLIP towers
        backbones=dict(text=("causal",), vision=("clip_vit",), clip_towers=True),
        cfg_node="RPO",
        # the official train.py defaults; RAW_CLASSNAMES (added) switches the official class-name handling
        cfg_defaults=dict(K=1, CTX_INIT="", PREC="fp16", RAW_CLASSNAMES=True),
        cfg_args={"k": "K"},
        model_name="prompt_learner",
    )

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.RPO
        print(f'RPO: {m.K} read-only prompt pairs; text "{cfg.DATASET.PROMPT}" (DATASET.PROMPT, "_" = the class name'
              + (", kept as given)" if m.RAW_CLASSNAMES else ", '_' in names read as a space)"))
        return RPOCLIP(clip_model, classnames, k=m.K, prompt=cfg.DATASET.PROMPT, raw_classnames=m.RAW_CLASSNAMES)


__all__ = ["RPO", "RPOCLIP", "ReadOnlyPrompts", "text_read_only_mask", "vision_read_only_mask", "DEFAULT_PROMPT"]
