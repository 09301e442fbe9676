"""ATPrompt: Advancing Textual Prompt Learning with Anchored Attributes (Li et al., ICCV 2025), a plug-in.

Official code: https://github.com/zhengli97/ATPrompt (``trainers/coop_atp.py``, ``trainers/dept_atp.py``,
``trainers/cocoop_atp.py``, ``trainers/maple_atp.py``, ``clip/model_atp.py``, ``train.py``; commit 86980a1).
Spelling: ``--trainer CoOp+ATPrompt``, ``CoOp+DePT+ATPrompt``, ``CoCoOp+ATPrompt``, ``MaPLe+ATPrompt``.
docs/METHODS.md, "ATPrompt".

The host's text prompt ``[SOS] ctx <class> . [EOT]`` becomes, for ``ATT_NUM`` = 1, 2 or 3 attributes,

    [SOS] A1 <attr1> A2 <attr2> ... ctx <class> . [EOT]

with ``A_k`` = ``ctx_att<k>`` (``N_ATT<k>`` learnable tokens, N(0, 0.01^2)) and ``<attr_k>`` the fixed token
embedding of the attribute word (one token: a word that the tokenizer splits is refused, where the official
code would silently misalign the prompt). The three blocks ``ctx_att1..3`` always exist (officially too, so
checkpoints always hold them; the unused ones get no gradient). The attribute words come from the
official per-dataset table (``train.py choose_attribute_for_atprompt``; it overrides the config there) for
the datasets it names, and from ``TRAINER.ATPROMPT.ATT_NUM`` / ``ATT<k>_TEXT`` for other datasets (and
for every dataset with ``USE_TABLE False``). The host's ``CTX_INIT`` is ignored officially (random context);
the shipped configs set ``CTX_INIT ""``.

CoCoOp: the block goes into every (image, class) prompt, ``[SOS] A1 <attr1> .. (ctx + pi_b) <class> . [EOT]``;
the Meta-Net bias ``pi_b`` shifts the context only, not the attribute blocks. MaPLe: the block goes into the
first-layer text prompts; the deep text prompts of the later layers replace the context slots behind it (the
attribute blocks pass through the deeper layers), and the image tower is MaPLe's, untouched. Officially the
deep slots start at ``1 + ATT_NUM * (N_CTX + 1)``, the same position when every ``N_ATTk`` equals ``N_CTX`` (the
official scripts' setting); here they start behind the actual block for any ``N_ATTk``. In every host the
blocks are drawn after the host's whole prompt learner (CoCoOp's Meta-Net, MaPLe's projections), as officially.
"""
import torch
import torch.nn as nn

from vlprompt.config import ConfigError
from vlprompt.engine.plugins import PLUGIN_REGISTRY, JointCacheOwner, Plugin

#: official ``train.py choose_attribute_for_atprompt``: DATASET.NAME -> attribute words
ATTRIBUTE_TABLE = {
    "ImageNet": ("color", "shape"),
    "ImageNetSketch": ("color", "shape"),
    "ImageNetA": ("color", "shape"),
    "ImageNetR": ("color", "shape"),
    "ImageNetV2": ("color", "shape"),
    "Caltech101": ("shape", "size"),
    "OxfordPets": ("playfulness", "energy"),
    "StanfordCars": ("luxury",),
    "OxfordFlowers": ("color", "habitat", "growth"),
    "Food101": ("flavor", "preparation"),
    "FGVCAircraft": ("design", "range"),
    "SUN397": ("function",),
    "DescribableTextures": ("pattern", "color", "design"),
    "EuroSAT": ("habitat",),
    "UCF101": ("precision",),
}


def attribute_words(cfg):
    """The attribute words of a run (see the module docstring); ConfigError when there are none."""
    m = cfg.TRAINER.ATPROMPT
    if bool(m.USE_TABLE) and cfg.DATASET.NAME in ATTRIBUTE_TABLE:
        return list(ATTRIBUTE_TABLE[cfg.DATASET.NAME])
    n = int(m.ATT_NUM)
    if n not in (1, 2, 3):
        raise ConfigError(
            f"TRAINER.ATPROMPT.ATT_NUM must be 1, 2 or 3 for dataset {cfg.DATASET.NAME!r} (not in ATPrompt's "
            f"attribute table), got {n}: set ATT_NUM and ATT1_TEXT.. (e.g. TRAINER.ATPROMPT.ATT_NUM 1 "
            "TRAINER.ATPROMPT.ATT1_TEXT color)"
        )
    return [str(m[f"ATT{k}_TEXT"]) for k in range(1, n + 1)]


class AttributePrompts(nn.Module):
    """``ctx_att1``, ``ctx_att2``, ``ctx_att3`` (N_ATTk, d_t) and the fixed attribute-word embeddings
    ``word_embeddings`` (ATT_NUM, d_t; not saved). :meth:`block` is the inserted sequence."""

    def __init__(self, d_t, n_att, word_embeddings):
        super().__init__()
        for k, n in enumerate(n_att, start=1):
            v = torch.empty(int(n), d_t)
            nn.init.normal_(v, std=0.01)
            setattr(self, f"ctx_att{k}", nn.Parameter(v))
        self.att_num = int(word_embeddings.shape[0])
        self.register_buffer("word_embeddings", word_embeddings.detach().clone(), persistent=False)

    def block_length(self):
        return sum(getattr(self, f"ctx_att{k + 1}").shape[0] + 1 for k in range(self.att_num))

    def block(self):
        parts = []
        for k in range(self.att_num):
            parts += [getattr(self, f"ctx_att{k + 1}"), self.word_embeddings[k : k + 1]]
        return torch.cat(parts, dim=0)


class PromptModifier:
    """Inserts the attribute block after the first slot of the host's prompts (the model's
    ``prompt_modifier``)."""

    def __init__(self, module, first_slot, context_length, cache_owner):
        self.module = module
        self.first_slot = int(first_slot)
        self.context_length = int(context_length)
        self.cache_owner = cache_owner

    def __call__(self, prompts, eot_idx, shared):
        block = self.module.block().to(prompts.dtype)
        n = block.shape[0]
        K, s = prompts.shape[0], self.first_slot
        if int(eot_idx.max()) + n >= self.context_length:
            raise ConfigError(
                f"ATPrompt: the prompts with the {n} attribute tokens exceed the context length "
                f"{self.context_length} (lower TRAINER.ATPROMPT.N_ATT1..3 or the host's N_CTX)"
            )
        out = torch.cat([prompts[:, :s], block.unsqueeze(0).expand(K, -1, -1), prompts[:, s:]], dim=1)
        # full-length prompts (SigLIP's bidirectional tower reads the padding too): the official string with the
        # attribute words is padded to the context length, so the last n padding tokens go
        out = out[:, : self.context_length]
        if shared is not None and shared >= s:
            shared = shared + n  # the block is one tensor for every class
        return out, eot_idx + n, shared

    def deep_prompt_slice(self, n_prompts):
        """The slots of the host's deep text prompts (MaPLe): its context, now behind the attribute block."""
        a = self.first_slot + self.module.block_length()
        return slice(a, a + int(n_prompts))


@PLUGIN_REGISTRY.register()
class ATPrompt(Plugin):
    """Attribute-anchored prompts: learnable attribute blocks and fixed attribute words before the context."""

    ORDER = 20  # CoOp+DePT+ATPrompt
    CFG_NODE = "ATPROMPT"
    # official train.py: N_ATT1..3 4, ATT_NUM 0, ATTk_TEXT "none" (USE_ATPROMPT: adding the plug-in is the switch);
    # USE_TABLE (vlprompt): the official per-dataset attribute table wins for the datasets it names
    CFG_DEFAULTS = dict(N_ATT1=4, N_ATT2=4, N_ATT3=4, ATT_NUM=0, ATT1_TEXT="none", ATT2_TEXT="none",
                        ATT3_TEXT="none", USE_TABLE=True)
    BUILD_WITH_PROMPTS = True  # officially its blocks are drawn right after the context, before DePT's head

    HOSTS = {
        # scripts/coop/atprompt_base2new_train.sh: CoOp/vit_b16.yaml, N_CTX 2, 100 epochs (ImageNet 10, DTD N_CTX 4)
        "CoOp": {"base2new": {"config": "vit_b16_nctx2_ep100",
                              "per_dataset": {"imagenet": "vit_b16_nctx2_ep10", "dtd": "vit_b16_nctx4_ep100"}}},
        # scripts/dept/atprompt_base2new_train.sh: DePT/vit_b16_ep10_bs4_lr35.yaml, N_CTX 2, WEIGHT 0.7
        "CoOp+DePT": {"base2new": {"config": "vit_b16_ep10_bs4_lr35_nctx2"}},
        # scripts/cocoop/atprompt_base2new_train.sh: CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml, N_CTX 2 (and 4), 10 epochs;
        # scripts/cocoop/atprompt_xd_train.sh: the same yaml, N_CTX 2 (and 4), 5 epochs
        "CoCoOp": {"base2new": {"config": "vit_b16_c4_ep10_batch1_ctxv1_nctx2"},
                   "cross_dataset": {"config": "vit_b16_c4_ep5_batch1_ctxv1_nctx2"}},
        # scripts/maple/atprompt_base2new_train.sh: MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml, N_CTX 2 (and 4), 5 (and 10)
        # epochs; scripts/maple/atprompt_xd_train.sh: the cross_datasets yaml, N_ATT 2 (and 4), 3 epochs
        "MaPLe": {"base2new": {"config": "vit_b16_c2_ep5_batch4_2ctx_nctx2"},
                  "cross_dataset": {"config": "vit_b16_c2_ep3_batch4_2ctx_cross_datasets_natt2"}},
    }

    def build(self, classnames):
        model = self.trainer.model
        learner = getattr(model, "prompt_learner", None)
        if learner is None or not hasattr(learner, "first_slot") or not hasattr(model, "prompt_modifier"):
            raise RuntimeError(f"{self.trainer.HOST} has no learned text prompts for ATPrompt to extend")
        words = attribute_words(self.cfg)
        tok = learner._tokenizer
        ids = []
        for k, w in enumerate(words, start=1):
            enc = tok.encode(w)
            if len(enc) != 1:
                raise ConfigError(f"TRAINER.ATPROMPT.ATT{k}_TEXT: the attribute word {w!r} is {len(enc)} tokens; "
                                  "ATPrompt needs one-token words")
            ids.append(enc[0])
        with torch.no_grad():
            emb = model.text_encoder.embed(torch.tensor([ids])).float()[0]
        m = self.plugin_cfg
        module = AttributePrompts(emb.shape[-1], [m.N_ATT1, m.N_ATT2, m.N_ATT3], emb)
        print(f"ATPrompt: attributes {words} (" + ("the official table for " + self.cfg.DATASET.NAME
              if bool(m.USE_TABLE) and self.cfg.DATASET.NAME in ATTRIBUTE_TABLE else "TRAINER.ATPROMPT") + ")")
        model.prompt_modifier = PromptModifier(module, learner.first_slot, learner.context_length,
                                               JointCacheOwner(learner, module))
        return module
