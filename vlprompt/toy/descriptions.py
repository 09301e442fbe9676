"""Class descriptions of the toy datasets (the toy world's stand-in for LLM-generated descriptions).

No published description file covers the toy world, so its descriptions are written here from what the
world renders (vlprompt/toy/world.py): every class "<colour> <shape>" gets the same number of sentences
(CoPrompt stacks one tensor per class), naming the colour and describing the shape. They are registered for
every toy dataset (:func:`vlprompt.data.descriptions.register_descriptions`) when this module is imported
(``datasets/toy.py`` does), so CoPrompt and the zero-shot heads' ``MODEL.ZERO_SHOT_TEXT descriptions`` run on
the toy world with no download.
"""
from .world import COLOURS, SHAPES

SHAPE_TRAITS = {
    "circle": "a round shape with no corners",
    "square": "a shape with four equal sides and four right angles",
    "triangle": "a shape with three straight sides and three corners",
    "star": "a shape with five pointed tips",
    "cross": "two bars crossing at the middle",
    "heart": "two rounded lobes on top and a point at the bottom",
    "diamond": "a square standing on one of its corners",
    "ring": "a circle with a round hole in the middle",
    "moon": "a curved crescent shape",
    "arrow": "a shaft with a pointed head on one end",
}

SENTENCES = (
    "A {c} {s} is {t}, coloured {c}.",
    "A {c} {s} looks like {t}.",
    "You can recognise a {c} {s} by its {c} colour and its outline: {t}.",
    "A photo of a {c} {s} shows a single {c} object.",
)


def toy_class_descriptions(classnames):
    """``{class: [sentences]}`` for toy class names "<colour> <shape>" (``_`` or space)."""
    out = {}
    for name in classnames:
        words = name.replace("_", " ").split()
        c, s = (words[0], " ".join(words[1:])) if len(words) > 1 else ("", words[0])
        t = SHAPE_TRAITS.get(s, f"a {s}")
        out[name.replace("_", " ")] = [x.format(c=c, s=s, t=t).replace("  ", " ") for x in SENTENCES]
    return out


def _register():
    from vlprompt.data.descriptions import register_descriptions

    from .data import TOY_DATASETS

    every = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    table = toy_class_descriptions(every)
    for spec in TOY_DATASETS.values():
        register_descriptions(spec.name, table)


_register()
