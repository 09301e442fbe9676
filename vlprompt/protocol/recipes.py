"""Reading a method's recipe (plain data of the method card, ``MethodCard.recipe(protocol)``; see
``vlprompt.engine.methods``): which config a protocol uses for one dataset and shot count.

A recipe for one protocol is ``{"config": NAME, "per_dataset": {d: NAME}, "per_shots": {"K": NAME}}``;
``per_dataset`` wins over ``per_shots``, which wins over ``config``. The sweep and the result tables
both use these two functions, so the rule stands in one place. Standard library only.
"""

__all__ = ["recipe_config", "family_config"]


def recipe_config(recipe, dataset, shots):
    """The config name the recipe uses for ``dataset`` and ``shots`` (None when ``recipe`` is None)."""
    if not recipe:
        return None
    if dataset in (recipe.get("per_dataset") or {}):
        return recipe["per_dataset"][dataset]
    if shots is not None and str(shots) in (recipe.get("per_shots") or {}):
        return recipe["per_shots"][str(shots)]
    return recipe["config"]


def family_config(recipe, dataset, shots, config):
    """The recipe's main config when ``config`` is the recipe's override for this dataset/shot count
    (e.g. CoOp's 50-epoch ImageNet run of base2new belongs to the ``vit_b16_ctxv1`` row), else None."""
    if not recipe or config == recipe["config"]:
        return None
    if recipe_config(recipe, dataset, shots) == config:
        return recipe["config"]
    return None
