"""CoCoOp: Conditional Context Optimization (Zhou et al., CVPR 2022), on the vlprompt engine.

Learns a context ``ctx`` (N, d_t) (CoOp's init rule: "a photo of a" -> N = 4) and a Meta-Net
``Linear(d_e, d_e//16) -> ReLU -> Linear(d_e//16, d_t)`` that maps the L2-normalised image feature to
a bias ``pi`` added to every context token: image ``b`` uses ``ctx + pi_b`` for all K classes.

The official code encodes the K prompts of each image in a Python loop. Here the B x K conditioned
prompts of a batch are encoded in **one chunked pass** (at most ``TRAINER.COCOOP.CHUNK_SIZE`` prompt
sequences per text-encoder call, truncated after the longest EOT), at train and test time; the
result equals the per-image loop (tested; :meth:`CoCoOpCLIP.forward_loop` keeps the loop).

Config ``TRAINER.COCOOP.{N_CTX=16, CTX_INIT="", PREC="fp16"}`` (official) plus
``CHUNK_SIZE=2048`` (vlprompt). Registered model name ``prompt_learner`` (ctx + meta_net).
"""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import ArgError, ClassPromptLearner, PromptedCLIP, init_text_context
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.methods import MethodCard
from vlprompt.engine.clip_trainer import ClipPromptTrainer


class CoCoOpPromptLearner(ClassPromptLearner):
    """``ctx`` (N, d_t) and ``meta_net``; ``forward(image_features)`` -> conditioned contexts (B, N, d_t).

    ``image_features``: (B, d_e), already L2-normalised.
    """

    def __init__(self, clip_model, classnames, d_embed, n_ctx=16, ctx_init=""):
        init = init_text_context(clip_model, n_ctx, ctx_init, rule="coop")
        super().__init__(clip_model, classnames, init.prefix, init.n_ctx)
        print(f'Initial context: "{init.prefix}"')
        print(f"Number of context words (tokens): {init.n_ctx}")
        self.ctx = nn.Parameter(init.vectors)
        hidden = d_embed // 16
        if hidden < 1:
            raise ArgError("backbone", f"the embedding width {d_embed} is too small for CoCoOp's Meta-Net (width // 16 = 0)")
        self.meta_net = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(d_embed, hidden)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("linear2", nn.Linear(hidden, self.ctx_dim)),
                ]
            )
        )

    def forward(self, image_features):
        bias = self.meta_net(image_features.to(self.ctx.dtype))  # (B, d_t)
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # (B, N, d_t)


class CoCoOpCLIP(PromptedCLIP):
    """Frozen CLIP + CoCoOp prompt learner; ``forward(image)`` -> (B, K) logits."""

    #: a plug-in's prompt modifier (None: none), as :attr:`vlprompt.clip.DeepPromptedCLIP.prompt_modifier`:
    #: applied to every (image, class) prompt after the conditioned context is in place (ATPrompt)
    prompt_modifier = None

    def __init__(self, clip_model, classnames, n_ctx=16, ctx_init="", chunk_size=2048):
        super().__init__(clip_model)
        self.prompt_learner = CoCoOpPromptLearner(clip_model, classnames, self.dims["d_embed"], n_ctx, ctx_init)
        self.chunk_size = int(chunk_size)
        if self.chunk_size < 0:
            raise ArgError("chunk_size", f"must be >= 0 (0: no limit), got {self.chunk_size}")

    def conditioned_text_features(self, ctx_shifted):
        """Text features of every (image, class) prompt: ctx_shifted (B, N, d_t) -> (B, K, d_e).

        The B*K prompt sequences are built and encoded chunk by chunk, each truncated after the
        longest EOT, so memory is bounded by ``chunk_size`` sequences of ``text_length`` tokens.
        """
        pl = self.prompt_learner
        B, K = ctx_shifted.shape[0], pl.n_cls
        total = B * K
        chunk = self.chunk_size if self.chunk_size > 0 else total
        prefix = pl.token_prefix
        suffix = pl.suffix()
        eot = pl.eot_idx
        device = ctx_shifted.device
        out = []
        for start in range(0, total, chunk):
            ids = torch.arange(start, min(start + chunk, total), device=device)
            b, k = ids // K, ids % K
            prompts = torch.cat(
                [prefix[k].to(ctx_shifted.dtype), ctx_shifted[b], suffix[k].to(ctx_shifted.dtype)], dim=1
            )
            eot_k = eot[k]
            if self.prompt_modifier is not None:
                prompts, eot_k, _ = self.prompt_modifier(prompts, eot_k, None)
            out.append(self.text_encoder(prompts, eot_k))
        return torch.cat(out, dim=0).view(B, K, -1)

    def forward(self, image):
        return self.logits_from_image_features(self.image_encoder(image))

    def logits_from_image_features(self, raw_features):
        """Logits from the frozen tower's (unnormalised) features of a batch."""
        image_features = F.normalize(raw_features.float(), dim=-1)
        ctx_shifted = self.prompt_learner(image_features)
        text_features = self.conditioned_text_features(ctx_shifted)
        return self.logits(image_features, text_features, raw_image_features=raw_features)

    def forward_loop(self, image):
        """Reference: the official per-image loop (K prompts encoded per image). Same result."""
        pl = self.prompt_learner
        image_features = F.normalize(self.image_encoder(image).float(), dim=-1)
        ctx_shifted = pl(image_features)
        rows = []
        for f_b, ctx_b in zip(image_features, ctx_shifted):
            prompts, eot = pl.assemble(ctx_b), pl.eot_idx
            if self.prompt_modifier is not None:
                prompts, eot, _ = self.prompt_modifier(prompts, eot, None)
            text = self.text_encoder(prompts, eot)
            rows.append(self.logits(f_b.unsqueeze(0), text))
        return torch.cat(rows, dim=0)


@TRAINER_REGISTRY.register()
class CoCoOp(ClipPromptTrainer):
    """Conditional Context Optimization (CoCoOp)."""

    CARD = MethodCard(
        config="vit_b16_c4_ep10_batch1_ctxv1",  # every protocol
        order=40,
        backbones=ANY_TOWERS,
        cfg_node="COCOOP",
        # CHUNK_SIZE (vlprompt): max (image, class) prompt sequences per text-encoder call; 0 = no limit.
        cfg_defaults=dict(N_CTX=16, CTX_INIT="", PREC="fp16", CHUNK_SIZE=2048),
        cfg_args={"n_ctx": "N_CTX", "ctx_init": "CTX_INIT", "chunk_size": "CHUNK_SIZE"},
        model_name="prompt_learner",
    )
    FROZEN_IMAGE_FEATURES = True  # the Meta-Net reads the frozen tower's features: evaluation uses the store

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.COCOOP
        return CoCoOpCLIP(clip_model, classnames, n_ctx=m.N_CTX, ctx_init=m.CTX_INIT, chunk_size=m.CHUNK_SIZE)
