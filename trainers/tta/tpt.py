"""TPT: Test-time Prompt Tuning (Shu et al., NeurIPS 2022; official code github.com/azshue/TPT), as a test-time
procedure that wraps zero-shot CLIP or a finished CoOp run.

Per test image (episodic), as ``tpt_classification.py`` / ``clip/custom_clip.py`` do:

1. ``reset()``: the context goes back to its initial value and the AdamW state to the pristine state saved at
   the start (fresh moments, step 0);
2. the logits of all ``V`` views (64) with the current context; the ``int(V·p)`` lowest-entropy views are
   selected (p = 0.1 -> 6); loss = entropy of their marginal distribution (:func:`vlprompt.tta.objectives.avg_entropy`);
   ``zero_grad``, backward, one ``AdamW(lr 5e-3, weight decay 0.01)`` step on the context only; with
   ``TTA.TPT.STEPS > 1`` the later steps reuse the views selected at the first step;
3. the prediction: the logits of view 0 with the updated context (no gradient).

**Context.** On zero-shot CLIP: a CoOp-style shared context initialised from the token embeddings of
``TTA.TPT.CTX_INIT`` ('a photo of a', so N = 4), prompts ``[SOS] ctx <class> . [EOS]`` (the official
``--ctx_init a_photo_of_a``; the dataset's hand-crafted template of the zero-shot trainer is not used, as in the
official code). On a finished CoOp run: CoOp's learned generic context is the initial context (the official
``--load`` of a CoOp checkpoint), in CoOp's own class-token position. Refused with one line: class-specific
contexts (CSC), learners with other trainable tensors, deep or vision prompts (MaPLe, IVLP, VPT, ...), per-image
text (CoCoOp) and non-prompt models.

**Speed.** The image tower runs once per image over the 64 views (the runner's batched pass; the official code
runs it again for view 0's prediction, here view 0's features are reused: the tower is frozen, so the values are
the same); the text pass is vlprompt's truncated (up to the longest EOT) and prefix-shared (SOS + context computed
once for all classes, with gradients) encoder; the final text pass runs without gradients.

**Kept / changed** (docs/METHODS.md, "TPT"): selection only at the first step (kept); weight decay 0.01 of torch's
AdamW default (kept, ``TTA.TPT.WEIGHT_DECAY``); the optimiser reloaded from the pristine state per image (kept);
fp16 autocast + ``GradScaler(init_scale=1000)`` on GPU: here the run's precision (fp32 on CPU), no loss scaling,
so a step is never skipped (the scaler unscales before stepping, so the step is the same otherwise); the views'
randomness is per-image seeded (:mod:`vlprompt.tta.views`).
"""
import copy

import torch

from vlprompt.clip import DeepPromptedCLIP
from vlprompt.tta import TTA_REGISTRY, TestTimeProcedure, TTAError
from vlprompt.tta.objectives import avg_entropy, select_confident

from ..coop import CoOpPromptLearner

__all__ = ["TPT", "tpt_context_refusal"]


def tpt_context_refusal(base):
    """Why the TPT family cannot tune ``base``'s text context (one line), or None."""
    if base.kind == "zero_shot":
        return None
    model, learner = base.prompted, base.prompt_learner
    if not isinstance(learner, CoOpPromptLearner):
        return (f"TPT tunes a CoOp-style shared text context; {base.name}'s learner "
                f"({type(learner).__name__}) has none (supported: zero-shot CLIP and CoOp)")
    if learner.csc:
        return "TPT tunes one shared context; this CoOp run learned class-specific contexts (CSC)"
    others = sorted(n for n, _ in learner.named_parameters() if n != "ctx")
    if others:
        return f"TPT tunes only the shared context; {base.name}'s learner has other trainable tensors {others}"
    if getattr(model, "prompts_vision", False) or model.text_encoder.depth > 1:
        return f"TPT tunes a shallow text context; {base.name} has deep or vision prompts"
    return None


@TTA_REGISTRY.register()
class TPT(TestTimeProcedure):
    """Test-time prompt tuning (see the module docstring)."""

    EPISODIC = True
    CFG_NODE = "TPT"
    CFG_DEFAULTS = dict(
        LR=5e-3,  # --lr
        SELECTION_P=0.1,  # --selection_p: the fraction of confident views kept (int(V*p))
        STEPS=1,  # --tta_steps
        CTX_INIT="a photo of a",  # --ctx_init a_photo_of_a (zero-shot CLIP only; a CoOp run starts from its ctx)
        WEIGHT_DECAY=0.01,  # torch AdamW's default, as the official optimiser
    )

    @classmethod
    def refusal(cls, base):
        return tpt_context_refusal(base)

    def __init__(self, cfg, base):
        super().__init__(cfg, base)
        node = self.node
        n_views = self.n_views(cfg)
        if int(n_views * float(node.SELECTION_P)) < 1:
            raise TTAError(f"TTA.{self.CFG_NODE}.SELECTION_P {node.SELECTION_P} of {n_views} views selects no view "
                           "(int(N_VIEWS * SELECTION_P) must be >= 1)")
        if int(node.STEPS) < 1:
            raise TTAError(f"TTA.{self.CFG_NODE}.STEPS must be >= 1, got {node.STEPS}")
        if base.kind == "zero_shot":
            learner = CoOpPromptLearner(base.clip_model, base.classnames, ctx_init=str(node.CTX_INIT))
            self.model = DeepPromptedCLIP(base.clip_model, learner).to(base.device)
        else:
            self.model = base.prompted
        self.ctx = self.model.prompt_learner.ctx
        self.ctx.requires_grad_(True)
        self.ctx_init = self.ctx.detach().clone()
        self.optim = torch.optim.AdamW([self.ctx], lr=float(node.LR), weight_decay=float(node.WEIGHT_DECAY))
        self.optim_state = copy.deepcopy(self.optim.state_dict())
        self.p = float(node.SELECTION_P)
        self.steps = int(node.STEPS)
        self.last = {}  # the last image's selected views and loss terms (tests, diagnostics)

    def reset(self):
        with torch.no_grad():
            self.ctx.copy_(self.ctx_init)
        self.optim.load_state_dict(self.optim_state)

    def text_features(self):
        """(K, D) raw text features of the current context (with gradients when enabled)."""
        with self.base.autocast():
            return self.model.text_features().float()

    def loss_terms(self, view_logits, text_features):
        """The named loss terms of one tuning step: ``{"entropy": avg_entropy(selected views)}``."""
        return {"entropy": avg_entropy(view_logits)}

    def step(self, sample):
        feats = sample.image_features
        selected = None
        for _ in range(self.steps):
            text = self.text_features()
            logits = self.base.logits(feats, text)
            if selected is None:
                out, selected = select_confident(logits, self.p)
            else:
                out = logits[selected]
            terms = self.loss_terms(out, text)
            loss = sum(terms.values())
            self.optim.zero_grad()
            loss.backward()
            self.optim.step()
        self.last = {"selected": selected.detach().cpu(), **{k: float(v.detach()) for k, v in terms.items()}}
        with torch.no_grad():
            return self.base.logits(feats[:1], self.text_features())[0]
