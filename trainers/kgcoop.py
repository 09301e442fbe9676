"""KgCoOp: Knowledge-guided Context Optimization (Yao, Zhang, Xu; CVPR 2023), on the vlprompt engine.

Official code: https://github.com/htyao89/KgCoOp (``KgCoOp/trainers/kgcoop.py``). KgCoOp learns
CoOp's context (:class:`trainers.coop.CoOpPromptLearner`) and adds a regulariser that keeps the
learned class text features close to zero-shot CLIP's:

    loss = CE(s * img_n @ txt_n^T, y) + W * (1 - mean_c cos(txt_n[c], t_hat[c]))

with ``t_hat`` the L2-normalised zero-shot text features of the dataset's hand-crafted template
(:data:`KGCOOP_TEMPLATES`: CoOp's table, except DescribableTextures), ``cos`` with eps 1e-7 and
``W = TRAINER.KGCOOP.W`` (8.0 in every official run, passed by ``scripts/run.sh``). Loss terms
``ce`` and ``kg`` (weighted).

Official behaviour reproduced:

* ``CTX_INIT`` is a switch: any true value gives the hard-coded phrase "a photo of a" (N = 4,
  ``N_CTX`` ignored); false gives ``N_CTX`` random N(0, 0.02^2) vectors (class-specific with ``CSC``).
* The class token is always at the end (the official forward ignores CLASS_TOKEN_POSITION, so the
  key is not offered).
* Parameter name ``ctx`` under the model name ``prompt_learner``, so official checkpoints load (their
  unused ``bias_vectors`` / ``meta_net.*`` entries are ignored with a note).

Deliberate differences (docs/METHODS.md, KgCoOp): the zero-shot target is computed with the same
frozen CLIP in the run's precision (officially a second CLIP copy that stays fp16 even with PREC fp32);
the unused ``bias_vectors``, ``meta_net`` and ``adapter`` of the official constructor are not built;
the official ``amp`` branch is broken (it unpacks the model's tuple output as logits), ours runs.

Config ``TRAINER.KGCOOP.{N_CTX=16, CSC=False, CTX_INIT=False, W=1.0, PREC="fp16"}`` (the official
``TRAINER.COOP`` keys and train.py defaults of this method).
"""
import torch
import torch.nn.functional as F

from vlprompt.clip import CUSTOM_TEMPLATES, DeepPromptedCLIP, ZeroShotHead, get_template
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.methods import MethodCard
from vlprompt.engine.clip_trainer import ClipPromptTrainer

from .coop import CoOpPromptLearner

#: KgCoOp's CUSTOM_TEMPLATES: CoOp's table with its own DescribableTextures entry.
KGCOOP_TEMPLATES = dict(CUSTOM_TEMPLATES, DescribableTextures="a photo of a {}, a type of texture.")

#: the phrase every true CTX_INIT stands for in the official code
KGCOOP_INIT_PHRASE = "a photo of a"

#: eps of the official ``nn.CosineSimilarity(dim=1, eps=1e-07)``
COSINE_EPS = 1e-7


def kgcoop_template(dataset_name):
    """KgCoOp's zero-shot template for ``DATASET.NAME`` (other datasets: the project's table)."""
    return KGCOOP_TEMPLATES.get(dataset_name) or get_template(dataset_name)


def knowledge_gap(text_features, zero_shot_features, eps=COSINE_EPS):
    """``1 - mean_c cos(t_c / |t_c|, t_hat_c)``: KgCoOp's (unweighted) regulariser, fp32.

    ``text_features`` (K, d) are the learned class text features (not normalised),
    ``zero_shot_features`` (K, d) the zero-shot ones (normalised again here, as officially).
    """
    t = text_features.float()
    t = t / t.norm(dim=-1, keepdim=True)
    z = zero_shot_features.float()
    z = z / z.norm(dim=-1, keepdim=True)
    return 1.0 - F.cosine_similarity(t, z, dim=1, eps=eps).mean()


def build_kgcoop_clip(clip_model, classnames, template, n_ctx=16, ctx_init=False, csc=False):
    """CoOp's prompts + a frozen :class:`ZeroShotHead` (``model.zero_shot``) with ``template``."""
    phrase = KGCOOP_INIT_PHRASE if ctx_init else ""
    learner = CoOpPromptLearner(clip_model, classnames, n_ctx=n_ctx, ctx_init=phrase, csc=csc,
                                class_token_position="end")
    model = DeepPromptedCLIP(clip_model, learner)
    model.zero_shot = ZeroShotHead(clip_model, classnames, template)
    return model


@TRAINER_REGISTRY.register()
class KgCoOp(ClipPromptTrainer):
    """Knowledge-guided Context Optimization."""

    FROZEN_IMAGE_FEATURES = True  # the image tower is not prompted: evaluation uses the feature store

    # official: configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml + scripts/base2new_train.sh (W 8.0); the
    # official repo ships no other protocol scripts for ViT-B/16: cross-dataset, DG and few-shot use the
    # same config (docs/METHODS.md)
    CARD = MethodCard(
        config="vit_b16_ep100_ctxv1",
        order=100,
        backbones=ANY_TOWERS,
        cfg_node="KGCOOP",
        # official train.py defaults of the keys KgCoOp reads (TRAINER.COOP there)
        cfg_defaults=dict(N_CTX=16, CSC=False, CTX_INIT=False, W=1.0, PREC="fp16"),
        cfg_args={"n_ctx": "N_CTX", "ctx_init": "CTX_INIT", "csc": "CSC"},
        model_name="prompt_learner",
    )
    LOG_ACC = True  # the official trainer logs the training accuracy

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.KGCOOP
        template = kgcoop_template(cfg.DATASET.NAME)
        print(f'Zero-shot template of the regulariser: "{template}"')
        return build_kgcoop_clip(clip_model, classnames, template, n_ctx=m.N_CTX, ctx_init=bool(m.CTX_INIT),
                                 csc=m.CSC)

    def loss_terms(self, image, label):
        model = self.model
        text = model.text_features()  # computed once: logits and regulariser
        logits = model.logits(model.image_features(image), text)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            kg = knowledge_gap(text, model.zero_shot.text_features())
        return {"ce": F.cross_entropy(logits, label), "kg": float(self.method_cfg.W) * kg}, logits
