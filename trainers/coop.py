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

from vlprompt.clip import ArgError, ClassPromptLearner, DeepPromptedCLIP, init_text_context, random_prompt
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.methods import MethodCard
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.errors import UserRuntimeError

POSITIONS = ("end", "middle", "front")


class CoOpPromptLearner(ClassPromptLearner):
    """CoOp's context: ``ctx`` (N, d_t), or (K, N, d_t) with CSC.

    ``text_prompts()`` -> ``(prompts (K, text_length, d_t) in the class-token position, [])``.
    """

    def __init__(self, clip_model, classnames, n_ctx=16, ctx_init="", csc=False, class_token_position="end"):
        if class_token_position not in POSITIONS:
            raise ArgError("class_token_position", f"must be one of {POSITIONS}, got '{class_token_position}'")
        init = init_text_context(clip_model, n_ctx, ctx_init, rule="coop")
        self.csc = bool(csc) and not init.from_phrase
        self.position = class_token_position
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
            raise UserRuntimeError(
                f"Class-specific contexts were learned for {self.ctx.shape[0]} classes but the current "
                f"label space has {self.n_cls}; CSC contexts do not transfer to another class list"
            )
        prompts = self.assemble(self.ctx)
        if self.position == "end":
            return prompts
        index = self.position_index.unsqueeze(-1).expand(-1, -1, prompts.shape[-1])
        return torch.gather(prompts, 1, index)

    @property
    def shared_prefix_length(self):
        """Leading positions that are one tensor for every class: SOS + the generic context before
        the class name (class-specific contexts: SOS only)."""
        if self.csc:
            return 1
        return {"end": 1 + self.n_ctx, "middle": 1 + self.n_ctx // 2, "front": 1}[self.position]

    def text_prompts(self):
        return self.forward(), []


@TRAINER_REGISTRY.register()
class CoOp(ClipPromptTrainer):
    """Context Optimization (CoOp)."""

    # ImageNet trains 50 epochs in every protocol; few-shot: 1 shot 50, 2/4 shots 100 epochs (CoOp's COOP.md)
    CARD = MethodCard(
        config="vit_b16_ctxv1",
        recipes={"base2new": {"per_dataset": {"imagenet": "vit_b16_ep50_ctxv1"}},
                 "cross_dataset": "vit_b16_ep50_ctxv1",
                 "few_shot": {"config": "vit_b16", "per_dataset": {"imagenet": "vit_b16_ep50"},
                              "per_shots": {"1": "vit_b16_ep50", "2": "vit_b16_ep100", "4": "vit_b16_ep100"}}},
        order=30,
        backbones=ANY_TOWERS,
        cfg_node="COOP",
        cfg_defaults=dict(N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end"),
        cfg_args={"n_ctx": "N_CTX", "ctx_init": "CTX_INIT", "class_token_position": "CLASS_TOKEN_POSITION"},
        model_name="prompt_learner",
    )
    LOG_ACC = True
    FROZEN_IMAGE_FEATURES = True  # the image tower is not prompted: evaluation uses the feature store

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.COOP
        learner = CoOpPromptLearner(clip_model, classnames, n_ctx=m.N_CTX, ctx_init=m.CTX_INIT, csc=m.CSC,
                                    class_token_position=m.CLASS_TOKEN_POSITION)
        return DeepPromptedCLIP(clip_model, learner)
