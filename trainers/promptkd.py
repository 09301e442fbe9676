"""PromptKD: Unsupervised Prompt Distillation for Vision-Language Models (Li et al., CVPR 2024, arXiv 2403.02781;
official code github.com/zhengli97/PromptKD), on the vlprompt engine. **Transductive**: the student trains on
the unlabelled training images of *every* class of the dataset, the classes it is then tested on included.

What is learned (the student; names as in the official code, so its checkpoints map onto them): deep **vision**
prompts in the student's image tower (``vision_ctx`` (N_v, d_v) appended after the patch tokens, and
``deep_vision_prompts[i-1]`` replacing them at vision blocks 1..J_v-1, all N(0, 0.02^2): the official IVLP
``VPT`` / ``VPT_shallow``) and ``VPT_image_trans``, the projector from the student's feature width to the
teacher's: ``Conv2d(d_s, d_t, 1) -> BatchNorm2d(d_t) -> ReLU -> Conv2d(d_t, d_t, 1)`` on the feature seen as
1x1 (official ``Feature_Trans_Module_two_layer``, 512 -> 768 for a ViT-B/16 student and a ViT-L/14 teacher).
The student has no text side: its classifier is the **teacher's** normalised text features of the classes.

The teacher is any finished vlprompt run whose model gives text and image features (``TRAINER.PROMPTKD.
TEACHER_DIR``: its output folder, loaded as ``--eval-only --model-dir`` would, by
:mod:`vlprompt.engine.finished`; e.g. PromptSRC on ViT-L/14), or an official PromptKD teacher file
(``TEACHER_CKPT``: the whole-model PromptSRC checkpoint the official README links, built as PromptSRC with the
official teacher's fixed 4+4 tokens and depth 9/9 on ``TEACHER_NAME``). It is frozen and in eval mode.

Loss (official ``forward_backward``; the only term, ``kd``): with ``T = TEMPERATURE``,
``KD_WEIGHT * T^2 * KL(softmax(tea/T) || log_softmax(stu/T))`` summed (``F.kl_div(..., reduction="sum")``)
and divided by ``stu.numel()`` (= B x C), where ``tea = s_t * img_t_n @ txt_t_n^T`` (the teacher's logits with
its own logit scale) and ``stu = s_s * proj(img_s)_n @ txt_t_n^T`` (the student's logit scale), over **all**
classes of the training split. The batches come from :class:`vlprompt.data.batch_sources.UnlabelledSource`:
no label reaches the loss (``CE_WEIGHT`` is kept for the official configs and, as officially, unused).

Evaluation: ``s_s * proj(img_s)_n @ txt_t_n^T`` for the classes of the split under test: in a base-to-novel
run the base half, in the eval-only novel run the novel half (the official code slices the all-class teacher
features ``[:ceil(C/2)]`` / ``[ceil(C/2):]``, which are the same rows: the teacher's text prompts do not
depend on the class list).

Deviations from the official code, and the official quirks (docs/METHODS.md, "PromptKD"): the projector is an
fp32 master copy under PREC fp16 (officially fp16 weights); ``amp`` works (the official amp branch crashes);
the teacher's text features are computed once per class list (officially in every batch: equal values);
best-val selection uses the dataset's validation split (officially the base-class *test* set); the class
subset, not a ``TRAINER.MODAL`` key, decides what is evaluated.
"""
import os
import os.path as osp

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import PromptedCLIP, normalized_logits, prompt_geometry
from vlprompt.clip.backbone import model_dims
from vlprompt.clip.errors import ArgError
from vlprompt.clip.families import PROMPTABLE_VISION
from vlprompt.clip.prompt_init import random_deep_prompts, random_prompt
from vlprompt.config import ConfigError
from vlprompt.data.batch_sources import UnlabelledSource
from vlprompt.data.data_manager import build_data_loader
from vlprompt.data.datasets import DatasetBase
from vlprompt.data.transforms import build_transform
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.finished import frozen_model, run_checkpoint, run_config
from vlprompt.engine.methods import MethodCard
from vlprompt.errors import UserError, UserRuntimeError

__all__ = ["PromptKD", "FeatureProjector", "StudentPrompts", "PromptKDCLIP", "kd_loss", "OFFICIAL_TEACHER"]

#: the official teacher's prompts (``load_clip_to_cpu_teacher``'s fixed ``design_details``: IVLP 4+4, depth 9/9)
OFFICIAL_TEACHER = dict(N_CTX_TEXT=4, PROMPT_DEPTH_TEXT=9, N_CTX_VISION=4, PROMPT_DEPTH_VISION=9)


def kd_loss(stu_logits, tea_logits, temperature):
    """PromptKD's distillation term (before ``KD_WEIGHT``): ``T^2 * sum KL(softmax(tea/T) || log_softmax(stu/T))
    / stu_logits.numel()``, as the official ``F.kl_div(..., reduction='sum')`` with probabilities as target."""
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(stu_logits / t, dim=1), F.softmax(tea_logits / t, dim=1), reduction="sum")
    return kl * (t * t) / stu_logits.numel()


class FeatureProjector(nn.Module):
    """The official ``Feature_Trans_Module_two_layer``: ``Conv2d(d_in, d_out, 1) -> BatchNorm2d -> ReLU ->
    Conv2d(d_out, d_out, 1)`` on a (B, d_in) feature seen as (B, d_in, 1, 1); returns (B, d_out)."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(d_in, d_out, 1), nn.BatchNorm2d(d_out), nn.ReLU(inplace=True),
                                   nn.Conv2d(d_out, d_out, 1))

    def forward(self, x):
        return self.conv1(x.unsqueeze(-1).unsqueeze(-1)).squeeze(-1).squeeze(-1)


class StudentPrompts(nn.Module):
    """The student's learned state: deep vision prompts (``vision_ctx``, ``deep_vision_prompts``; drawn in that
    order from the global torch RNG) and ``VPT_image_trans`` (:class:`FeatureProjector`, built after them)."""

    def __init__(self, clip_model, n_ctx=4, depth=9, d_teacher=None):
        super().__init__()
        n, j = prompt_geometry(clip_model, n_ctx, depth, towers=("vision",))
        dims = model_dims(clip_model)
        self.vision_geometry = (n, j)
        self.vision_ctx = nn.Parameter(random_prompt(n, dims["d_vision"]))
        self.deep_vision_prompts = random_deep_prompts(j - 1, n, dims["d_vision"])
        self.VPT_image_trans = FeatureProjector(dims["d_embed"], int(d_teacher or dims["d_embed"]))

    def vision_prompts(self):
        return self.vision_ctx, list(self.deep_vision_prompts)


class PromptKDCLIP(PromptedCLIP):
    """The student (prompted image tower + projector) and the frozen teacher (a child module, in eval mode,
    never saved: the trainer registers the student's learner only).

    ``teacher_text(classnames)``: the teacher's normalised text features (C, d_t) of a class list, computed
    once per list; ``student_features(image)``: ``proj(img_s)`` (B, d_t), not normalised; ``forward(image)``:
    the evaluation logits over the current class list (:meth:`set_classnames`)."""

    def __init__(self, clip_model, learner, teacher, classnames):
        super().__init__(clip_model, vision_prompts=learner.vision_geometry)
        self.prompt_learner = learner
        self.teacher = teacher
        self.classnames = list(classnames)
        self._teacher_text = {}

    @torch.no_grad()
    def teacher_text(self, classnames):
        key = tuple(classnames)
        if key not in self._teacher_text:
            self.teacher.set_classnames(list(classnames))
            self.teacher.eval()
            self._teacher_text[key] = F.normalize(self.teacher.text_features().float(), dim=-1)
        return self._teacher_text[key]

    @torch.no_grad()
    def teacher_logits(self, image, classnames):
        """The teacher's logits (its own logit scale) over ``classnames``."""
        return normalized_logits(self.teacher.image_features(image), self.teacher_text(classnames),
                                 self.teacher.logit_scale)

    def student_features(self, image):
        ctx, deep = self.prompt_learner.vision_prompts()
        img = self.image_encoder(image, ctx, deep)
        # the projector is an fp32 master copy (under autocast its convolutions run in the autocast dtype)
        return self.prompt_learner.VPT_image_trans(img.float())

    def logits_over(self, image, classnames):
        return normalized_logits(self.student_features(image), self.teacher_text(classnames), self.logit_scale)

    def forward(self, image):
        return self.logits_over(image, self.classnames)

    def set_classnames(self, classnames):
        self.classnames = list(classnames)

    def _apply(self, fn, *args, **kwargs):  # a move (``.to(device)``) drops the cached teacher features
        self._teacher_text = {}
        return super()._apply(fn, *args, **kwargs)


@TRAINER_REGISTRY.register()
class PromptKD(ClipPromptTrainer):
    """Unsupervised prompt distillation from a frozen prompted teacher (transductive)."""

    CARD = MethodCard(
        config="vit_b16_c2_ep20_batch8_4+4ctx",
        recipes={"base2new": {"per_dataset": {d: "vit_b16_c2_ep20_batch8_4+4ctx_kd200"
                                              for d in ("fgvc_aircraft", "oxford_flowers", "dtd")}},
                 "cross_dataset": "vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets"},
        # the official repository ships base-to-novel and cross-dataset settings only (no few-shot: the method
        # uses no labels)
        protocols=("base2new", "cross_dataset", "domain_generalization"),
        order=125,
        backbones=PROMPTABLE_VISION,  # the student's vision prompts: transformer image towers only
        cfg_node="PROMPTKD",
        # official train.py defaults, except TEACHER_NAME (official default: the typo 'ViT/L-14', which no
        # run can use; every shipped yaml says 'ViT-L/14'); TEACHER_DIR / TEACHER_EPOCH / TEACHER_CKPT are
        # vlprompt's (officially a fixed path under ./teacher_model/)
        cfg_defaults=dict(N_CTX_VISION=4, N_CTX_TEXT=4, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=9,
                          PROMPT_DEPTH_TEXT=9, PROJECT_LAYER=2, CE_WEIGHT=0.0, KD_WEIGHT=1.0, TEMPERATURE=1.0,
                          TEACHER_NAME="ViT-L/14", TEACHER_DIR="", TEACHER_EPOCH=0, TEACHER_CKPT=""),
        cfg_args={"n_ctx": "N_CTX_VISION", "depth": "PROMPT_DEPTH_VISION"},
        model_name="VLPromptLearner",
        transductive=True,
        fixture="fabricate_teacher",
    )

    # ------------------------------------------------------------------------------------ data
    def build_data_loader(self):
        super().build_data_loader()
        self._unlabelled = None

    def unlabelled_items(self):
        """The training items of every class (the transductive split), labels kept here only to name the
        classes; :meth:`batch_source` removes them from every batch."""
        dataset = self.dm.dataset
        items = dataset.train_x if self.cfg.DATASET.SUBSAMPLE_CLASSES == "all" else dataset.train_all_classes
        if not items:
            raise UserRuntimeError(
                f"PromptKD trains on the unlabelled training images of every class, and dataset "
                f"{self.cfg.DATASET.NAME} keeps no training split of all classes (a test-only dataset?)"
            )
        return items

    @property
    def all_classnames(self):
        """The classes of the transductive training split (base and novel in a base-to-novel run)."""
        return DatasetBase.get_lab2cname(self.unlabelled_items())[1]

    def batch_source(self):
        if self._unlabelled is None:
            cfg = self.cfg
            items = self.unlabelled_items()
            print(f"Transductive training: {len(items):,} unlabelled training images of all "
                  f"{len(self.all_classnames)} classes (DATASET.SUBSAMPLE_CLASSES {cfg.DATASET.SUBSAMPLE_CLASSES} "
                  "applies to the evaluation only)")
            x = cfg.DATALOADER.TRAIN_X
            self._unlabelled = build_data_loader(
                cfg, sampler_type=x.SAMPLER, data_source=items, batch_size=x.BATCH_SIZE, n_domain=x.N_DOMAIN,
                n_ins=x.N_INS, tfm=build_transform(cfg, is_train=True), is_train=True)
            self.train_loader_u = self._unlabelled
            self._train_classnames = self.all_classnames
        return UnlabelledSource(self._unlabelled)

    # ------------------------------------------------------------------------------------ model
    def build_model(self):
        self._teacher = None
        super().build_model()

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        raise NotImplementedError("PromptKD builds its model with its teacher (PromptKD.custom_clip on an instance)")

    def custom_clip(self, cfg, classnames, clip_model):
        m = cfg.TRAINER.PROMPTKD
        try:  # the student is checked (and refused on a tower without vision prompts) before a teacher is built
            prompt_geometry(clip_model, m.N_CTX_VISION, m.PROMPT_DEPTH_VISION, towers=("vision",))
        except ArgError as e:
            key = {"n_ctx": "N_CTX_VISION", "depth": "PROMPT_DEPTH_VISION"}.get(e.arg)
            raise ConfigError(f"TRAINER.PROMPTKD.{key}: {e.message}" if key else f"PromptKD: {e}") from None
        teacher = self.load_teacher(cfg, classnames)
        d_teacher = model_dims(teacher.clip_model)["d_embed"]
        learner = StudentPrompts(clip_model, m.N_CTX_VISION, m.PROMPT_DEPTH_VISION, d_teacher=d_teacher)
        print("PromptKD student: vision prompts "
              f"{learner.vision_geometry[0]} tokens, depth {learner.vision_geometry[1]}; projector "
              f"{model_dims(clip_model)['d_embed']} -> {d_teacher}")
        return PromptKDCLIP(clip_model, learner, teacher.model, classnames)

    def load_teacher(self, cfg, classnames):
        """The frozen teacher (:class:`vlprompt.engine.finished.FrozenRun` with ``clip_model``): the run in
        ``TEACHER_DIR``, or the official checkpoint ``TEACHER_CKPT`` on ``TEACHER_NAME``."""
        m = cfg.TRAINER.PROMPTKD
        if bool(m.TEACHER_DIR) == bool(m.TEACHER_CKPT):
            raise ConfigError(
                "PromptKD needs a teacher: set TRAINER.PROMPTKD.TEACHER_DIR to the output folder of a finished "
                "vlprompt run (e.g. PromptSRC on ViT-L/14), or TRAINER.PROMPTKD.TEACHER_CKPT to an official "
                "PromptKD teacher checkpoint (model-best.pth.tar) with TEACHER_NAME its backbone; not both"
                if m.TEACHER_DIR else
                "PromptKD needs a teacher: set TRAINER.PROMPTKD.TEACHER_DIR to the output folder of a finished "
                "vlprompt run (e.g. PromptSRC on ViT-L/14), or TRAINER.PROMPTKD.TEACHER_CKPT to an official "
                "PromptKD teacher checkpoint (model-best.pth.tar) with TEACHER_NAME its backbone"
            )
        if m.TEACHER_DIR:
            where = "TRAINER.PROMPTKD.TEACHER_DIR"
            run_dir = _placeholders(m.TEACHER_DIR, cfg, where)
            if not osp.isdir(run_dir):
                raise ConfigError(f'{where} "{run_dir}" is not a folder (the output folder of a finished run)')
            tcfg = run_config(run_dir, where=where)
            tcfg.defrost()
            tcfg.USE_CUDA = cfg.USE_CUDA
            path_of = lambda cls: run_checkpoint(run_dir, cls.MODEL_NAME, int(m.TEACHER_EPOCH), where=where)  # noqa
        else:
            where = "TRAINER.PROMPTKD.TEACHER_CKPT"
            path = _placeholders(m.TEACHER_CKPT, cfg, where)
            if not osp.isfile(path):
                raise ConfigError(f'{where} "{path}" is not a file (an official PromptKD teacher checkpoint)')
            tcfg = cfg.clone()
            tcfg.defrost()
            tcfg.TRAINER.NAME = "PromptSRC"
            tcfg.MODEL.BACKBONE.NAME = m.TEACHER_NAME
            tcfg.MODEL.BACKBONE.PRETRAINED_TAG = ""
            for k, v in OFFICIAL_TEACHER.items():
                tcfg.TRAINER.PROMPTSRC[k] = v
            tcfg.TRAINER.PROMPTSRC.CTX_INIT = m.CTX_INIT
            tcfg.TRAINER.PROMPTSRC.PREC = m.PREC
            path_of = lambda cls: path  # noqa: E731
        tcfg.INPUT.SIZE = tuple(cfg.INPUT.SIZE)  # the teacher sees the student's batches
        tcfg.freeze()
        from vlprompt.engine import TRAINER_REGISTRY as REG

        name = tcfg.TRAINER.NAME
        if name not in REG.registered_names() or not issubclass(REG.get(name), ClipPromptTrainer):
            raise ConfigError(f"{where}: the teacher run's trainer {name!r} is not a CLIP prompt-learning trainer here")
        if name == "PromptKD":
            raise ConfigError(f"{where}: the teacher is itself a PromptKD run; name the run of a prompted teacher")
        cls = REG.get(name)
        try:
            run = frozen_model(tcfg, classnames, path_of(cls), self.device, where=where)
        except UserRuntimeError as e:  # its learned state does not fit the model rebuilt for these classes
            raise UserRuntimeError(f"{where}: this teacher cannot serve the student's class list: "
                                   f"{' '.join(str(e).split())}") from None
        except UserError as e:
            msg = str(e)
            if "INPUT.SIZE" in msg:
                raise ConfigError(
                    f"{where}: the teacher's backbone ({tcfg.MODEL.BACKBONE.NAME}) does not take the student's "
                    f"{tuple(cfg.INPUT.SIZE)} images, and both see the same batches; use a teacher at the "
                    "student's input resolution") from None
            if isinstance(e, ConfigError):
                raise ConfigError(f"{where}: cannot build the teacher ({name} on {tcfg.MODEL.BACKBONE.NAME}): "
                                  f"{msg}") from None
            raise
        model = run.model
        if not all(callable(getattr(model, a, None)) for a in ("text_features", "image_features", "set_classnames")):
            raise ConfigError(f"{where}: a {name} model gives no class text features and image features apart (a "
                              "PromptKD teacher must, as the prompted CLIPs do: PromptSRC, IVLP, MaPLe, CoOp, ...)")
        print(f"PromptKD teacher: {name} on {tcfg.MODEL.BACKBONE.NAME} from {run.path} (frozen)")
        self._teacher = run
        return run

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        t = float(cfg.TRAINER.PROMPTKD.TEMPERATURE)
        if not t > 0:
            raise ConfigError(f"TRAINER.PROMPTKD.TEMPERATURE must be > 0, got {t}")

    def set_classnames(self, classnames):
        self.model.set_classnames(classnames)

    # ------------------------------------------------------------------------------------ training
    def parse_batch_train(self, batch):
        return batch["img"].to(self.device)  # the images only: no label is read

    def forward_backward(self, batch):
        image = self.parse_batch_train(batch)
        with self.precision.autocast():
            terms, logits = self.loss_terms(image)
        loss = self.step(terms)
        return self.loss_summary(loss, terms)

    def loss_terms(self, image, label=None):
        """``{"kd": ...}`` and the student's logits over the classes of the transductive split. ``label`` is
        never used (the signature is the kit's)."""
        model, m = self.model, self.method_cfg
        classnames = getattr(self, "_train_classnames", None) or self.all_classnames
        tea_logits = model.teacher_logits(image, classnames)
        stu_logits = model.logits_over(image, classnames)
        with torch.autocast(device_type=image.device.type, enabled=False):
            kd = kd_loss(stu_logits.float(), tea_logits.float(), m.TEMPERATURE)
        return {"kd": kd * float(m.KD_WEIGHT)}, stu_logits

    # ------------------------------------------------------------------------------------ checkpoints
    def convert_legacy_state_dict(self, state_dict):
        """Official PromptKD student checkpoints (the whole student ``CustomCLIP``: ``image_encoder.VPT``,
        ``image_encoder.transformer.resblocks.i.VPT_shallow``, ``VPT_image_trans.*`` beside frozen CLIP
        weights) -> the learner's keys."""
        if "vision_ctx" in state_dict:  # vlprompt's own keys
            return state_dict
        out = {}
        for k, v in state_dict.items():
            if k == "image_encoder.VPT":
                out["vision_ctx"] = v
            elif k.startswith("image_encoder.transformer.resblocks.") and k.endswith(".VPT_shallow"):
                out[f"deep_vision_prompts.{int(k.split('.')[3]) - 1}"] = v
            elif k.startswith("VPT_image_trans."):
                out[k] = v
        return out

    def extra_results(self):
        out = dict(super().extra_results() or {})
        if self._teacher is not None:
            out["teacher"] = {"trainer": self._teacher.cfg.TRAINER.NAME,
                              "backbone": self._teacher.cfg.MODEL.BACKBONE.NAME,
                              "checkpoint": osp.abspath(self._teacher.path)}
        return out

    # ------------------------------------------------------------------------------------ test suites
    @classmethod
    def fabricate_teacher(cls, folder, backbone):
        """A teacher run folder for the suites that build every trainer (the card's ``fixture``): an untrained
        language-prompted IVLP (2 tokens, text depth 2, no vision prompts: it builds on every backbone family)
        on ``backbone``, written under ``folder/.promptkd_teacher/<backbone>`` as train.py would leave it
        (``config.yaml``, ``VLPromptLearner/model-best.pth.tar``), once; the global RNG is left untouched.
        Returns the config options naming it."""
        from vlprompt.config import extend_cfg, get_cfg_default
        from vlprompt.clip.backbone import build_clip_model, model_dims
        from vlprompt.utils import save_checkpoint

        out = osp.join(str(folder), ".promptkd_teacher", backbone)
        ckpt = osp.join(out, "VLPromptLearner", "model-best.pth.tar")
        if not osp.isfile(ckpt):
            cfg = get_cfg_default()
            extend_cfg(cfg)
            cfg.TRAINER.NAME = "IVLP"
            cfg.MODEL.BACKBONE.NAME = backbone
            cfg.USE_CUDA = False
            n = cfg.TRAINER.IVLP
            n.PREC, n.N_CTX_TEXT, n.PROMPT_DEPTH_TEXT, n.PROMPT_DEPTH_VISION = "fp32", 2, 2, 0
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                bb = cfg.MODEL.BACKBONE
                clip_model = build_clip_model(bb.NAME, path=bb.PATH, pretrained_tag=bb.PRETRAINED_TAG,
                                              cache_dir=bb.CACHE_DIR, random_init=bb.RANDOM_INIT)
                res = model_dims(clip_model)["image_size"]
                cfg.INPUT.SIZE = (res, res)  # the teacher run's config as train.py would write it (toy CLIP: 32)
                ivlp = TRAINER_REGISTRY.get("IVLP")
                learner = ivlp.build_custom_clip(cfg, ["a", "b"], clip_model).prompt_learner
                with torch.no_grad():
                    for p in learner.parameters():
                        p.add_(0.05 * torch.randn_like(p))
            os.makedirs(out, exist_ok=True)
            with open(osp.join(out, "config.yaml"), "w") as f:
                f.write(cfg.dump())
            state = {k: v for k, v in learner.state_dict().items() if not k.startswith("token_")}
            save_checkpoint({"state_dict": state, "epoch": 1}, osp.join(out, "VLPromptLearner"),
                            model_name="model-best.pth.tar")
        return ["TRAINER.PROMPTKD.TEACHER_DIR", out]


def _placeholders(path, cfg, where):
    """``path`` with ``{dataset}`` (the dataset's key in the output tree, e.g. ``dtd``), ``{DATASET_NAME}`` (its
    class name, e.g. ``DescribableTextures``: the official ``./teacher_model/<DATASET.NAME>/``) and ``{seed}``
    filled, so that one sweep option names every dataset's teacher."""
    from vlprompt.protocol import dataset_key

    try:
        return str(path).format(dataset=dataset_key(cfg.DATASET.NAME), DATASET_NAME=cfg.DATASET.NAME, seed=cfg.SEED)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{where} \"{path}\": unknown placeholder {e} (placeholders: {{dataset}}, "
                          "{DATASET_NAME}, {seed})") from None

