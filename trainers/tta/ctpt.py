"""C-TPT: Calibrated Test-time Prompt Tuning (Yoon et al., ICLR 2024; official code github.com/hee-suk-yoon/C-TPT),
TPT with a term that spreads the class text features.

Loss per tuning step = TPT's marginal entropy − λ·ATFD, where ATFD (average text feature dispersion) is the mean
over classes of ``‖t̂_k − mean_k t̂_k‖₂`` of the L2-normalised text features of the current context
(``clip/custom_clip.py``, ``l2_norm_cal``: computed in the same forward as the views' logits). Everything else is
TPT's (views, selection, AdamW step, reset, prediction on view 0).

**λ** (``TTA.CTPT.LAMBDA``): ``auto`` = the official scripts, 50 for ImageNet and the 10 fine-grained sets
(``scripts/test_tpt_ctpt_fg.sh``) and 20 for ImageNet-A/-V2/-R/-Sketch (``scripts/test_tpt_ctpt_ds.sh``);
``tta_vlm`` = the TTA-VLM benchmark's rule (50 for the fine-grained sets, 20 for the whole ImageNet family,
ImageNet included); or a number. **AugMix** under ``TTA.AUGMIX auto``: the ds script passes ``--I_augmix``, so the
views of ImageNet-A/-V2/-R/-Sketch get AugMix under C-TPT (not under TPT); ImageNet itself (fg script) does not.
The optional ``--two_step`` of the official code (an extra TPT step first; off by default) is not provided.
"""
import torch

from vlprompt.tta import TTA_REGISTRY, TTAError
from vlprompt.tta.views import IMAGENET_FAMILY

from .tpt import TPT

__all__ = ["CTPT", "atfd", "ctpt_lambda"]

#: the ImageNet variants of the official ds script (λ 20, AugMix on)
DS_SETS = tuple(d for d in IMAGENET_FAMILY if d != "ImageNet")


def atfd(text_features):
    """Average text feature dispersion of (K, D) raw text features (normalised here, as the official code)."""
    t = text_features / text_features.norm(dim=-1, keepdim=True)
    return torch.linalg.norm(t - t.mean(0), dim=-1).mean()


def ctpt_lambda(value, dataset_name):
    """λ for ``TTA.CTPT.LAMBDA`` = ``value`` on ``dataset_name`` (see the module docstring)."""
    v = str(value).strip().lower()
    if v == "auto":
        return 20.0 if dataset_name in DS_SETS else 50.0
    if v == "tta_vlm":
        return 20.0 if dataset_name in IMAGENET_FAMILY else 50.0
    try:
        return float(v)
    except ValueError:
        raise TTAError(f"TTA.CTPT.LAMBDA must be auto, tta_vlm or a number, got '{value}'") from None


@TTA_REGISTRY.register()
class CTPT(TPT):
    """Calibrated test-time prompt tuning (see the module docstring)."""

    CFG_NODE = "CTPT"
    CFG_DEFAULTS = dict(TPT.CFG_DEFAULTS, LAMBDA="auto")

    @classmethod
    def augmix_auto(cls, dataset_name):
        return dataset_name not in IMAGENET_FAMILY or dataset_name in DS_SETS

    def __init__(self, cfg, base):
        super().__init__(cfg, base)
        self.lam = ctpt_lambda(self.node.LAMBDA, cfg.DATASET.NAME)

    def loss_terms(self, view_logits, text_features):
        terms = super().loss_terms(view_logits, text_features)
        terms["atfd"] = -self.lam * atfd(text_features)
        return terms
