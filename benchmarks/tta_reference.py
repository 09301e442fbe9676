"""The official TPT per-image computation, restated on an open_clip CLIP (github.com/azshue/TPT, commit 63ecbac:
``tpt_classification.py`` ``test_time_tuning`` / ``test_time_adapt_eval``, ``clip/custom_clip.py``
``ClipTestTimeTuning``, ``TextEncoder``), so that vlprompt's TPT can be compared with it on identical inputs (speed:
``benchmarks/bench_tta.py``; values: tests/test_tta.py).

What the official code computes per test image, and what this restatement does the same way:

* ``model.reset()`` (the initial context copied back) and ``optimizer.load_state_dict(optim_state)``;
* the tuning forward ``model(images)`` on all views: the image encoder on the views under ``no_grad``, the text
  encoder on every class prompt **padded to the full 77 tokens** (``TextEncoder``: ``x + positional_embedding``,
  the sequence-first transformer of OpenAI's ``clip/model.py`` with the causal mask, ``ln_final``, the EOT row
  ``x[arange, tokenized.argmax(-1)] @ text_projection``), text features normalised, ``logit_scale.exp() ·
  img_n @ txt_nᵀ``; selection, ``avg_entropy``, ``zero_grad``, backward, ``AdamW.step``;
* the prediction ``model(image)`` on view 0: the image encoder again on view 0 and the text encoder again.

The fp16 autocast and GradScaler of the official GPU run are left out (fp32 here, like vlprompt on CPU).
"""
import torch

from vlprompt.tta.objectives import avg_entropy, select_confident

from reference import official_block  # benchmarks/ on sys.path (the benchmarks and tests put it there)

__all__ = ["official_text_features", "official_tpt_image", "OfficialTPT"]


def official_text_features(clip_model, ctx, token_prefix, token_suffix, tokenized):
    """The official ``TextEncoder`` on ``[prefix | ctx | suffix]`` prompts padded to the full context length."""
    K = token_prefix.shape[0]
    prompts = torch.cat([token_prefix, ctx.unsqueeze(0).expand(K, -1, -1), token_suffix], dim=1)
    x = prompts + clip_model.positional_embedding.to(prompts.dtype)
    mask = clip_model.attn_mask
    for block in clip_model.transformer.resblocks:
        x = official_block(block, x, mask)
    x = clip_model.ln_final(x)
    return x[torch.arange(K), tokenized.argmax(dim=-1)] @ clip_model.text_projection


class OfficialTPT:
    """One TPT model as the official code holds it: the context, its initial state, AdamW and its pristine state.

    ``learner``: a vlprompt CoOp-style learner (its ``token_prefix``/``token_suffix`` full-length embeddings and
    ``tokenized_prompts`` are read; its own ``ctx`` is left alone: this arm tunes a copy).
    """

    def __init__(self, clip_model, learner, lr=5e-3, weight_decay=0.01, selection_p=0.1, steps=1):
        import copy

        self.clip_model = clip_model
        self.prefix = learner.token_prefix
        self.suffix = learner.token_suffix  # the full-length suffix (77 - 1 - N positions)
        self.tokenized = learner.tokenized_prompts
        self.ctx = torch.nn.Parameter(learner.ctx.detach().clone())
        self.ctx_init_state = self.ctx.detach().clone()
        self.optimizer = torch.optim.AdamW([self.ctx], lr=lr, weight_decay=weight_decay)
        self.optim_state = copy.deepcopy(self.optimizer.state_dict())
        self.p = selection_p
        self.steps = steps

    def logits(self, images):
        with torch.no_grad():
            image_features = self.clip_model.encode_image(images)
        text = official_text_features(self.clip_model, self.ctx, self.prefix, self.suffix, self.tokenized)
        text = text / text.norm(dim=-1, keepdim=True)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        return self.clip_model.logit_scale.exp() * image_features @ text.t()

    def __call__(self, views):
        """The official per-image computation on ``views`` (V, 3, H, W); returns (view-0 logits, selected, loss)."""
        with torch.no_grad():
            self.ctx.copy_(self.ctx_init_state)
        self.optimizer.load_state_dict(self.optim_state)
        selected = None
        for _ in range(self.steps):
            output = self.logits(views)
            if selected is not None:
                output = output[selected]
            else:
                output, selected = select_confident(output, self.p)
            loss = avg_entropy(output)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            out = self.logits(views[:1])
        return out[0], selected, float(loss.detach())


def official_tpt_image(clip_model, learner, views, **kw):
    """Convenience: one image through a fresh :class:`OfficialTPT`."""
    return OfficialTPT(clip_model, learner, **kw)(views)
