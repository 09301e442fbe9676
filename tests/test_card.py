"""The method card (vlprompt.protocol.card): one typed declaration per trainer, read through one function.

What it sets on the class, what a trainer without a card gets (ported Dassl code, loose attributes), a card
derived with ``dataclasses.replace`` under a composed name, the torch-free reading, and the cache round trip.
"""
import json
import subprocess
import sys
from dataclasses import replace

import pytest

from vlprompt.engine import TRAINER_REGISTRY, TrainerX
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import ANY_TOWERS, PROMPTABLE_VISION, MethodCard, load_plugins, method_card, method_cards
from vlprompt.protocol.card import CardError, card_of

load_plugins()


def test_a_card_sets_the_attributes_the_engine_reads():
    class Carded(ClipPromptTrainer):
        CARD = MethodCard(config="vit_b16", cfg_node="CARDTEST", cfg_defaults=dict(N=1, PREC="fp32"),
                          cfg_args={"n": "N"}, model_name="learner", lr_unit="iteration", order=7,
                          backbones=PROMPTABLE_VISION)

    assert (Carded.CFG_NODE, Carded.CFG_DEFAULTS, Carded.CFG_ARGS, Carded.MODEL_NAME, Carded.LR_SCHEDULE_UNIT) == (
        "CARDTEST", {"N": 1, "PREC": "fp32"}, {"n": "N"}, "learner", "iteration")
    card = card_of(Carded)
    assert (card.name, card.config_folder, card.order, card.prec_default) == ("Carded", "Carded", 7, "fp32")
    assert card.backbones == {"text": ("causal", "bidirectional"), "vision": ("clip_vit", "timm_vit", "timm_eva"),
                              "clip_towers": False}
    # the config node is registered from the card
    from vlprompt.config import extend_cfg, get_cfg_default

    assert extend_cfg(get_cfg_default()).TRAINER.CARDTEST.N == 1


def test_loose_attribute_beside_a_card_is_refused():
    with pytest.raises(Exception) as info:  # Python < 3.12 wraps an error of __set_name__ in a RuntimeError
        class Both(TrainerX):  # noqa: F841
            CARD = MethodCard(config="x")
            MODEL_NAME = "other"
    err = info.value.__cause__ or info.value
    assert isinstance(err, CardError)
    assert str(err) == "Both declares MODEL_NAME beside its CARD: set model_name= in the card"


@pytest.mark.parametrize("bad, message", [
    (dict(lr_unit="epochs"), "lr_unit must be one of"),
    (dict(cfg_defaults={"A": 1}), "needs cfg_node"),
    (dict(recipes={"few_shot": {"per_shots": {"1": "a"}}}), "name no config and the card has no default"),
    (dict(config="a", recipes={"few_shot": {"conifg": "b"}}), "unknown recipe keys"),
])
def test_a_card_that_cannot_mean_anything_is_refused(bad, message):
    with pytest.raises(CardError, match=message):
        MethodCard(**bad)


def test_a_ported_trainer_without_a_card_gets_the_default_card():
    class Ported(TrainerX):  # a Dassl trainer as ported: no declarations at all
        pass

    card = card_of(Ported)
    assert (card.order, card.eval_only, card.cfg_node, card.model_name, card.lr_unit, card.backbones) == (
        1000, False, None, "", "epoch", None)
    assert card.all_recipes() == {} and card.config_folder == "Ported"

    class OldStyle(ClipPromptTrainer):  # vlprompt's loose attributes before cards are still honoured
        RECIPES = {"few_shot": {"config": "rn50"}}
        TABLE_ORDER = 5
        EVAL_ONLY = True
        CONFIG_FOLDER = "Elsewhere"
        BACKBONE_SUPPORT = ANY_TOWERS

    card = card_of(OldStyle)
    assert card.all_recipes() == {"few_shot": {"config": "rn50"}}  # RECIPES lists exactly what runs
    assert (card.order, card.eval_only, card.config_folder, card.model_name) == (5, True, "Elsewhere",
                                                                                 "prompt_learner")
    assert card.backbones["vision"] == "any"


def test_a_subclass_attribute_overrides_its_parents_card():
    coop = TRAINER_REGISTRY.get("CoOp")

    class IterCoOp(coop):
        LR_SCHEDULE_UNIT = "iteration"

    card = card_of(IterCoOp)
    assert card.lr_unit == "iteration" and IterCoOp.LR_SCHEDULE_UNIT == "iteration"
    assert card.recipe("cross_dataset") == method_card("CoOp").recipe("cross_dataset")  # the rest inherited
    assert method_card("CoOp").lr_unit == "epoch"


def test_recipes_name_a_config_only_where_it_differs():
    coop = method_card("CoOp")
    assert coop.config == "vit_b16_ctxv1" and "domain_generalization" not in coop.recipes
    assert coop.recipe("base2new") == {"config": "vit_b16_ctxv1", "per_dataset": {"imagenet": "vit_b16_ep50_ctxv1"}}
    # domain generalisation takes cross-dataset's recipe (one shared ImageNet training run)
    assert coop.recipe("domain_generalization") == coop.recipe("cross_dataset") == {"config": "vit_b16_ep50_ctxv1"}
    # a protocol the card does not restrict away gets the default config (a new protocol edits no trainer)
    assert coop.recipe("some_new_protocol") == {"config": "vit_b16_ctxv1"}
    lora = method_card("CLIPLoRA")
    assert lora.recipe("cross_dataset") is None and lora.recipe("few_shot") == {"config": "vit_b16"}


def test_a_derived_card_under_a_composed_name_is_read_by_every_consumer(tmp_path):
    """A run-time trainer named Host+Plugin whose card is the host's card replaced: method_card, the sweep's
    planning and the results' method table see it once it is registered."""
    from vlprompt.results.methods import load_methods
    from vlprompt.sweep.protocols import expand, repo_root

    host = TRAINER_REGISTRY.get("CoOp")
    composed = type("CoOp+Probe", (host,), {"CARD": replace(host.CARD, order=31)})
    TRAINER_REGISTRY.register(composed, force=True)
    try:
        card = method_card("CoOp+Probe")
        assert (card.name, card.order, card.cfg_node, card.config_folder) == ("CoOp+Probe", 31, "COOP", "CoOp+Probe")
        assert composed.MODEL_NAME == "prompt_learner"
        assert "CoOp+Probe" not in [c.name for c in method_cards()]  # reachable by name, never listed
        runs = expand("CoOp+Probe:CoOp/vit_b16_ctxv1", "base2new", ["dtd"], [1], output_root=str(tmp_path),
                      root=repo_root())
        assert [r.trainer for r in runs] == ["CoOp+Probe"] * 2 and "/CoOp+Probe/vit_b16_ctxv1/" in runs[0].output_dir
        table = load_methods()
        assert table.rank("CoOp") < table.rank("CoOp+Probe") < table.rank("CoCoOp")
        assert table.recipe("CoOp+Probe", "base2new") == card.recipe("base2new")
    finally:
        TRAINER_REGISTRY._obj_map.pop("CoOp+Probe", None)


def test_every_shipped_card_survives_the_sweeps_cache():
    """The sweep keeps the cards as JSON rows; read back, they plan the same (tuples come back as lists)."""
    for card in method_cards(with_recipes_only=False):
        back = MethodCard.from_row(json.loads(json.dumps(card.to_row())))
        assert back.to_row() == card.to_row(), card.name
        assert back.all_recipes() == card.all_recipes() and back.backbones == card.backbones, card.name
        assert (back.eval_only, back.order, back.prec_default) == (card.eval_only, card.order, card.prec_default)


def test_the_torch_free_layer_reads_cards_and_families_without_torch():
    code = (
        "import sys\n"
        "from vlprompt.protocol.card import MethodCard\n"
        "from vlprompt.protocol.families import PROMPTABLE_VISION, describe_support\n"
        "import vlprompt.sweep.backbones, vlprompt.sweep.protocols, vlprompt.results\n"
        "c = MethodCard(config='a', backbones=PROMPTABLE_VISION)\n"
        "print(c.recipe('domain_generalization'), describe_support(c.backbones))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["{'config': 'a'} CLIP ViT, SigLIP/SigLIP2, EVA02/PE-Core, causal text + timm ViT "
                                "(e.g. MobileCLIP)", "False"]
