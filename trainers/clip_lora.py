"""CLIP-LoRA: Low-Rank Few-Shot Adaptation of Vision-Language Models (Zanella & Ben Ayed, CVPRW 2024,
arXiv:2405.18541; official code MaxZanella/CLIP-LoRA), on the vlprompt engine.

Learns low-rank adapters on the q/k/v projections of every attention block of both CLIP towers
(:mod:`vlprompt.clip.lora`: rank 2, alpha 1, scaling alpha/sqrt(r), dropout 0.25 on the LoRA input);
on SigLIP, EVA02 and PE-Core the same placement on their text and timm image towers, on image towers
without attention blocks (CLIP ResNets, timm CNNs) text-tower LoRA only (``ENCODER text``).
Training: text features of ``template.format(class)`` through the adapted text tower at every step,
image features through the adapted image tower, loss ``CE(100 * img_n @ txt_n^T, y)`` (100 hard-coded,
as the official ``logit_scale = 100``). Evaluation (official ``evaluate_lora``): unscaled cosines
``img_n @ txt_n^T`` with merged weights. AdamW (lr 2e-4, weight decay 0.01), cosine schedule over
``500 x shots`` iterations to 1e-6, stepped after every iteration. Details, parameter counts and what
is reconstructed: docs/METHODS.md (## CLIP-LoRA).

Iteration budget: with ``TRAINER.CLIPLORA.N_ITERS`` > 0 and ``DATASET.NUM_SHOTS`` > 0 the run takes
exactly ``N_ITERS * NUM_SHOTS`` optimisation steps, split evenly over ``OPTIM.MAX_EPOCH`` engine epochs
(epoch ``e`` runs ``floor((e+1) T / E) - floor(e T / E)`` iterations: 50 x shots each for the official
500 x shots and 10 epochs); an epoch chains as many shuffled passes over the few-shot set as it needs. Otherwise (``N_ITERS`` 0 or all shots) an epoch is one pass
and the budget is ``MAX_EPOCH`` passes. Either way the cosine schedule spans the whole budget.
"""
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from vlprompt.clip.tokenizer import model_tokenizer
from vlprompt.clip.lora import POSITIONS, PROJECTIONS, apply_lora, official_lora_keys
from vlprompt.clip.prompt_init import clean_classname
from vlprompt.clip.blocks import PromptedCLIP
from vlprompt.config import ConfigError
from vlprompt.clip.families import PROMPTABLE_VISION
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.data.batch_sources import IterationBudget
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard
from vlprompt.optim import build_optimizer

ENCODERS = {"both": ("text", "vision"), "text": ("text",), "vision": ("vision",)}
EVAL_LOGITS = ("cosine", "scaled")


def official_template(dataset_name):
    """The training/evaluation template of the official datasets/*.py: ``template[0]`` is
    'a photo of a {}.' for every dataset except UCF101 ('a photo of a person doing {}.')."""
    return "a photo of a person doing {}." if dataset_name == "UCF101" else "a photo of a {}."


class LoRACLIP(PromptedCLIP):
    """CLIP with LoRA adapters in its attention blocks (``self.lora``, the learnable module).

    ``forward(image)`` -> (B, K) fp32 logits: ``logit_scale * img_n @ txt_n^T`` while the adapters are in
    training mode, ``img_n @ txt_n^T`` (``eval_logits="cosine"``, official) or scaled in evaluation.
    Text features of ``template.format(class)`` are recomputed at every training step (they depend
    on the text adapters) and cached during evaluation.
    """

    def __init__(self, clip_model, classnames, template, r=2, alpha=1.0, dropout=0.25, encoders=("text", "vision"),
                 position="all", params=("q", "k", "v"), logit_scale=100.0, eval_logits="cosine"):
        if eval_logits not in EVAL_LOGITS:
            from vlprompt.clip import ArgError

            raise ArgError("eval_logits", f"must be one of {EVAL_LOGITS}, got '{eval_logits}'")
        lora = apply_lora(clip_model, r=r, alpha=alpha, dropout=dropout, encoders=encoders, position=position,
                          params=params)
        super().__init__(clip_model)
        self._tokenizer = model_tokenizer(clip_model)
        self.lora = lora
        self.template = template
        self.train_scale = float(logit_scale)
        self.eval_logits = eval_logits
        self.register_buffer("token_ids", None, persistent=False)
        self.set_classnames(classnames)

    def learnable_modules(self):
        return [self.lora]

    def set_classnames(self, classnames):
        self.classnames = [clean_classname(c) for c in classnames]
        # the model's tokenizer at its text tower's context length (CLIP's BPE and 77 for CLIP)
        ids = self._tokenizer([self.template.format(c) for c in self.classnames])
        self.token_ids = ids.to(self.text_encoder.token_embedding.weight.device)
        super().set_classnames(classnames)

    def text_features(self):
        return self.text_encoder.encode_tokens(self.token_ids)

    def image_features(self, image):
        return self.image_encoder(image)

    def forward(self, image):
        text = self.cached_text_features(self.text_features, owner=self.lora)  # text first, as officially
        img = self.image_features(image)
        with torch.autocast(device_type=img.device.type, enabled=False):
            img, text = img.float(), text.float()
            img = img / img.norm(dim=-1, keepdim=True)
            text = text / text.norm(dim=-1, keepdim=True)
            if self.lora.training or self.eval_logits == "scaled":
                return (self.train_scale * img) @ text.t()
            return img @ text.t()


@TRAINER_REGISTRY.register()
class CLIPLoRA(ClipPromptTrainer):
    """CLIP-LoRA (see the module docstring)."""

    # No official base-to-novel recipe: the few-shot recipe on the base classes (a reconstruction,
    # docs/METHODS.md); the budget follows the shots (500 x 16 for the base-to-novel 16 shots).
    CARD = MethodCard(
        config="vit_b16",
        protocols=("base2new", "few_shot"),
        order=240,
        backbones=PROMPTABLE_VISION,  # LoRA on the attention of both towers (ENCODER text: any image tower)
        lr_unit="iteration",
        cfg_node="CLIPLORA",
        # official run_utils.get_arguments defaults (r, alpha, dropout_rate, position, encoder, params,
        # n_iters); LOGIT_SCALE = main.py's hard-coded 100; ETA_MIN = lora.py's CosineAnnealingLR eta_min;
        # PREC amp = the official fp16 autocast + GradScaler training
        cfg_defaults=dict(R=2, ALPHA=1.0, DROPOUT=0.25, POSITION="all", ENCODER="both", PARAMS=["q", "k", "v"],
                          N_ITERS=500, ETA_MIN=1e-6, LOGIT_SCALE=100.0, EVAL_LOGITS="cosine", TEMPLATE="",
                          PREC="amp"),
        cfg_args={"r": "R", "alpha": "ALPHA", "dropout": "DROPOUT", "position": "POSITION", "encoders": "ENCODER",
                  "params": "PARAMS", "eval_logits": "EVAL_LOGITS"},
        model_name="lora",
        notes=("the budget follows the shots, not OPTIM.MAX_EPOCH: TRAINER.CLIPLORA.N_ITERS (500) x "
               "DATASET.NUM_SHOTS iterations (8,000 at 16 shots), split into MAX_EPOCH epochs; for a shorter "
               "run lower TRAINER.CLIPLORA.N_ITERS, or set it to 0 for MAX_EPOCH passes over the few-shot set"),
    )
    LOG_ACC = True

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        m = cfg.TRAINER.CLIPLORA
        if m.ENCODER not in ENCODERS:
            raise ConfigError(f"TRAINER.CLIPLORA.ENCODER must be one of {sorted(ENCODERS)}, got '{m.ENCODER}'")
        if m.POSITION not in POSITIONS:
            raise ConfigError(f"TRAINER.CLIPLORA.POSITION must be one of {POSITIONS}, got '{m.POSITION}'")
        bad = [p for p in m.PARAMS if p not in PROJECTIONS]
        if bad or not m.PARAMS:
            raise ConfigError(f"TRAINER.CLIPLORA.PARAMS must be letters among {sorted(PROJECTIONS)}, got {list(m.PARAMS)}")
        if m.EVAL_LOGITS not in EVAL_LOGITS:
            raise ConfigError(f"TRAINER.CLIPLORA.EVAL_LOGITS must be one of {EVAL_LOGITS}, got '{m.EVAL_LOGITS}'")
        if int(m.N_ITERS) < 0:
            raise ConfigError(f"TRAINER.CLIPLORA.N_ITERS must be >= 0 (0: epochs of one pass), got {m.N_ITERS}")
        if m.TEMPLATE and "{}" not in m.TEMPLATE:
            raise ConfigError(f'TRAINER.CLIPLORA.TEMPLATE must contain "{{}}", got "{m.TEMPLATE}"')
        if int(cfg.OPTIM.MAX_EPOCH) < 1:
            raise ConfigError(f"OPTIM.MAX_EPOCH must be >= 1, got {cfg.OPTIM.MAX_EPOCH}")

    @classmethod
    def template_for(cls, cfg):
        return cfg.TRAINER.CLIPLORA.TEMPLATE or official_template(cfg.DATASET.NAME)

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.CLIPLORA
        return LoRACLIP(clip_model, classnames, cls.template_for(cfg), r=m.R, alpha=m.ALPHA, dropout=m.DROPOUT,
                        encoders=ENCODERS[m.ENCODER], position=m.POSITION, params=list(m.PARAMS),
                        logit_scale=m.LOGIT_SCALE, eval_logits=m.EVAL_LOGITS)

    def learnable_module(self):
        return self.model.lora

    # ---- the iteration budget ------------------------------------------------------------------

    def build_data_loader(self):
        super().build_data_loader()
        m, shots = self.cfg.TRAINER.CLIPLORA, int(self.cfg.DATASET.NUM_SHOTS)
        per_pass = len(self.train_loader_x)
        if int(m.N_ITERS) > 0 and shots > 0:
            self.total_iters = int(m.N_ITERS) * shots
            if self.total_iters < self.max_epoch:
                raise ConfigError(f"TRAINER.CLIPLORA.N_ITERS x DATASET.NUM_SHOTS = {self.total_iters} iterations "
                                  f"cannot fill OPTIM.MAX_EPOCH = {self.max_epoch} epochs: lower OPTIM.MAX_EPOCH")
            self.budgeted = True
            sizes = sorted({self.epoch_iterations(e) for e in range(self.max_epoch)})
            print(f"CLIP-LoRA budget: {m.N_ITERS} x {shots} shots = {self.total_iters} iterations in "
                  f"{self.max_epoch} epochs of {'/'.join(map(str, sizes))} (one pass over the few-shot set = "
                  f"{per_pass} batches). The official budget follows the shots, not OPTIM.MAX_EPOCH (which only "
                  f"splits it into epochs): for a shorter run lower TRAINER.CLIPLORA.N_ITERS, or set it to 0 for "
                  f"epochs of one pass each")
        else:
            self.total_iters = self.max_epoch * per_pass
            self.budgeted = False
            print(f"CLIP-LoRA budget: {self.max_epoch} epochs x {per_pass} batches = {self.total_iters} iterations")

    def epoch_iterations(self, epoch):
        """Iterations of epoch ``epoch`` (0-based) under the budget."""
        if not self.budgeted:
            return len(self.train_loader_x)
        t, n = self.total_iters, self.max_epoch
        return (epoch + 1) * t // n - epoch * t // n

    def batch_source(self):
        """Under the budget: this epoch's iterations, chaining reshuffled passes over the few-shot set."""
        source = super().batch_source()
        return IterationBudget(source, self.epoch_iterations(self.epoch)) if self.budgeted else source

    def build_optimizers(self, learnable):
        o = self.cfg.OPTIM
        if o.LR_SCHEDULER != "cosine" or int(o.WARMUP_EPOCH) > 0:
            print(f"Note: CLIP-LoRA uses its own schedule (cosine over {self.total_iters} iterations to "
                  f"TRAINER.CLIPLORA.ETA_MIN, no warmup); OPTIM.LR_SCHEDULER={o.LR_SCHEDULER} and "
                  f"OPTIM.WARMUP_EPOCH={o.WARMUP_EPOCH} are not used")
        optim = build_optimizer(learnable, o)
        sched = CosineAnnealingLR(optim, T_max=self.total_iters, eta_min=float(self.method_cfg.ETA_MIN))
        return {self.MODEL_NAME: (optim, sched)}

    # ---- checkpoints -----------------------------------------------------------------------------

    def convert_legacy_state_dict(self, state_dict):
        """Official ``save_lora`` files and official ``lora_state_dict`` keys -> ``text.<i>.<proj>...``."""
        own = set(self.learnable_module().state_dict().keys())
        if own & set(state_dict):
            return state_dict
        return official_lora_keys(state_dict, self.learnable_module().layout())


__all__ = ["CLIPLoRA", "LoRACLIP", "official_template"]
