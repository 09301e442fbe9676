"""CoOp: Context Optimization (Zhou et al., IJCV 2022), on the vlprompt engine.

Learns ``N`` context vectors ``ctx`` (N, d_t), or class-specific contexts (K, N, d_t) with ``CSC``,
placed around the class-name tokens of every prompt; the CLIP encoders stay frozen.

* ``CTX_INIT`` given (e.g. "a photo of a"): ``N`` = number of words (``N_CTX`` is ignored), ``ctx``
  starts from the phrase's token embeddings and ``CSC`` is not used (as in the official code).
* otherwise N(0, 0.02^2) with a generic (N, d_t) or class-specific (K, N, d_t) context.
* ``CLASS_TOKEN_POSITION``: ``end`` ``[SOS ctx CLS . EOT]``, ``middle``
  ``[SOS ctx[:N//2] CLS ctx[N//2:] . EOT]`` or ``front`` ``[SOS CLS ctx . EOT]``.

Config ``TRAINER.COOP.{N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end"}``.
Registered model name ``prompt_learner`` (checkpoints hold only ``ctx``). Works with ResNet (RN50) and
ViT backbones.
"""
import torch
import torch.nn as nn

from vlprompt.clip import ClassPromptLearner, PromptedCLIP, init_text_context, random_prompt
from vlprompt.config import register_cfg_extension
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer, add_trainer_cfg

POSITIONS = ("end", "middle", "front")


@register_cfg_extension
def extend_cfg_coop(cfg):
    add_trainer_cfg(cfg, "COOP", dict(N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end"))


class CoOpPromptLearner(ClassPromptLearner):
    """CoOp's context: ``ctx`` (N, d_t), or (K, N, d_t) with CSC.

    ``forward()`` -> prompts (K, text_length, d_t) in the configured class-token position.
    """

    def __init__(self, mcfg, classnames, clip_model):
        init = init_text_context(clip_model, mcfg.N_CTX, mcfg.CTX_INIT, rule="coop", where="TRAINER.COOP.N_CTX")
        self.csc = bool(mcfg.CSC) and not init.from_phrase
        self.position = mcfg.CLASS_TOKEN_POSITION
        super().__init__(clip_model, classnames, init.prefix, init.n_ctx)
        if init.from_phrase:
            vectors = init.vectors
        elif self.csc:
            print("Initializing class-specific contexts")
            vectors = random_prompt(self.n_cls * init.n_ctx, self.ctx_dim).view(self.n_cls, init.n_ctx, self.ctx_dim)
        else:
            print("Initializing a generic context")
            vectors = init.vectors
        print(f'Initial context: "{init.prefix}"')
        print(f"Number of context words (tokens): {init.n_ctx}")
        self.ctx = nn.Parameter(vectors)

    def _on_classnames_changed(self):
        # A permutation of token positions per class realises the middle/front layouts from
        # [SOS | ctx | class tokens, ".", EOT, ...]; EOT keeps its position.
        L, N = self.text_length, self.n_ctx
        perms = []
        for nl in self.name_lens:
            idx = list(range(L))
            ctx = list(range(1, 1 + N))
            name = list(range(1 + N, 1 + N + nl))
            rest = list(range(1 + N + nl, L))
            if self.position == "middle":
                half = N // 2
                idx = [0] + ctx[:half] + name + ctx[half:] + rest
            elif self.position == "front":
                idx = [0] + name + ctx + rest
            perms.append(idx)
        self.register_buffer("position_index", torch.tensor(perms, device=self.token_prefix.device), persistent=False)

    def forward(self):
        if self.csc and self.ctx.shape[0] != self.n_cls:
            raise RuntimeError(
                f"Class-specific contexts were learned for {self.ctx.shape[0]} classes but the current "
                f"label space has {self.n_cls}; CSC contexts do not transfer to another class list"
            )
        prompts = self.assemble(self.ctx)
        if self.position == "end":
            return prompts
        index = self.position_index.unsqueeze(-1).expand(-1, -1, prompts.shape[-1])
        return torch.gather(prompts, 1, index)


class CoOpCLIP(PromptedCLIP):
    """Frozen CLIP + CoOp prompt learner; ``forward(image)`` -> (B, K) logits."""

    def __init__(self, mcfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = CoOpPromptLearner(mcfg, classnames, clip_model)

    def text_features(self):
        pl = self.prompt_learner
        return self.text_encoder(pl(), pl.eot_idx)

    def forward(self, image):
        text = self.cached_text_features(self.text_features)
        return self.logits(self.image_encoder(image), text)


@TRAINER_REGISTRY.register()
class CoOp(ClipPromptTrainer):
    """Context Optimization (CoOp)."""

    RECIPES = {
        "base2new": {"config": "vit_b16_ctxv1", "per_dataset": {"imagenet": "vit_b16_ep50_ctxv1"}},
        "cross_dataset": {"config": "vit_b16_ep50_ctxv1"},
        "domain_generalization": {"config": "vit_b16_ep50_ctxv1"},
        "few_shot": {"config": "vit_b16", "per_shots": {"1": "vit_b16_ep50", "2": "vit_b16_ep100", "4": "vit_b16_ep100"}, "per_dataset": {"imagenet": "vit_b16_ep50"}},
    }
    TABLE_ORDER = 30

    CFG_NODE = "COOP"
    MODEL_NAME = "prompt_learner"
    LOG_ACC = True

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        if cfg.TRAINER.COOP.CLASS_TOKEN_POSITION not in POSITIONS:
            raise ValueError(
                f"TRAINER.COOP.CLASS_TOKEN_POSITION must be one of {POSITIONS}, "
                f"got '{cfg.TRAINER.COOP.CLASS_TOKEN_POSITION}'"
            )

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CoOpCLIP(cfg.TRAINER.COOP, classnames, clip_model)
