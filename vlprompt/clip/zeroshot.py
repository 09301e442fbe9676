"""Zero-shot classifier weights from hand-crafted templates (shared by ZeroshotCLIP and teachers).

:func:`encode_class_texts` lives with the tower-type code (:mod:`vlprompt.clip.towers.text`): it uses the
model's own tokenizer and context length, so it works for every backbone family. Each template's
features are L2-normalised, averaged over templates and re-normalised (CLIP's prompt ensembling).
"""
from .towers.text import encode_class_texts

__all__ = ["encode_class_texts"]
