"""Zero-shot prompt templates of the toy datasets, keyed by DATASET.NAME (one place for all of them).

Like CoOp's ImageNet variants, every style-shifted test set keeps the photo template of the dataset
it shifts: zero-shot CLIP is not told the target style, which is what prompt learning must recover.
"""

TOY_TEMPLATES = {
    "ToyShapes": "a photo of a {}.",
    "ToyShapesSketch": "a photo of a {}.",
    "ToyShapesCartoon": "a photo of a {}.",
    "ToyShapesNight": "a photo of a {}.",
    "ToyShapesBlurry": "a photo of a {}.",
    "ToyShapesNoisy": "a photo of a {}.",
    "ToySymbols": "a photo of a {}.",
}

__all__ = ["TOY_TEMPLATES"]


def _register():
    from vlprompt.clip.templates import register_templates

    register_templates(TOY_TEMPLATES)


_register()
