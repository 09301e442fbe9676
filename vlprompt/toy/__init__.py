"""The embedded toy world: procedural images and captions (:mod:`.world`), toy datasets materialised
as CoOp-layout JPEG folders (:mod:`.data`, registered by the repo-root ``datasets/toy.py``), a small
CLIP pretrained on it and shipped with the package (:mod:`.clip_model`, backbone name ``toy-clip``;
:mod:`.pretrain` regenerates it), zero-shot evaluation (:mod:`.zeroshot`), the zero-shot templates
(:mod:`.templates`) and the end-to-end demo (:mod:`.demo`). See docs/TOY.md.

Importing this package imports nothing heavy; the submodules load torch/open_clip as needed.
"""
