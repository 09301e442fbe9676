"""Zero-shot classifier weights from hand-crafted templates (shared by ZeroshotCLIP and teachers)."""
import torch
import torch.nn.functional as F

from .templates import format_classnames
from .tokenizer import tokenize


@torch.no_grad()
def encode_class_texts(clip_model, classnames, templates, device=None, chunk_size=256):
    """L2-normalised text features (K, d_embed) for ``classnames``.

    ``templates`` is one template string or a list; with several, each template's features are
    normalised, averaged over templates and re-normalised (CLIP's prompt ensembling). Texts are
    encoded in chunks of ``chunk_size`` to bound memory (ImageNet: 1000 classes x templates).
    """
    if isinstance(templates, str):
        templates = [templates]
    if device is None:
        device = next(clip_model.parameters()).device
    names = format_classnames(classnames)
    ctx_len = clip_model.positional_embedding.shape[0]
    acc = None
    for template in templates:
        texts = [template.format(n) for n in names]
        feats = []
        for i in range(0, len(texts), chunk_size):
            tokens = tokenize(texts[i:i + chunk_size], context_length=ctx_len).to(device)
            feats.append(clip_model.encode_text(tokens).float())
        feats = F.normalize(torch.cat(feats), dim=-1)
        acc = feats if acc is None else acc + feats
    return F.normalize(acc / len(templates), dim=-1)
