"""DMN-ZS (trainers/tta/dmn.py): memory contents and probabilities after each step of a fixed small stream,
against hand computation, and the official beta2 search."""
import math

import pytest
import torch
import torch.nn.functional as F

from trainers.tta.dmn import (DMN_BETA2_GRID, DMNState, DynamicMemory, dmn_confident_mean, grid_predictions,
                              search_beta2)


def _unit(*xs):
    return F.normalize(torch.tensor([xs], dtype=torch.float64), dim=-1)


def _softmax(xs):
    m = max(xs)
    z = sum(math.exp(x - m) for x in xs)
    return [math.exp(x - m) / z for x in xs]


def test_memory_writes_free_slots_then_replaces_the_highest_entropy_only_if_better():
    text = torch.eye(3, 4, dtype=torch.float32)
    mem = DynamicMemory(text, memory_size=2)
    p_a = torch.tensor([0.7, 0.2, 0.1])
    p_b = torch.tensor([0.9, 0.05, 0.05])
    p_c = torch.tensor([0.5, 0.3, 0.2])
    ent = [float(-(p * torch.log(p + 1e-8)).sum()) for p in (p_a, p_b, p_c)]
    f = [torch.full((1, 4), float(i + 1)) for i in range(4)]
    assert mem.update(f[0], p_a)[::2] == (0, 0)
    assert mem.update(f[1], p_b)[::2] == (0, 1)
    assert mem.count[:, 0].tolist() == [2, 0, 0]
    assert mem.entropy[0].tolist() == pytest.approx([ent[0], ent[1]])
    # full; p_c has a higher entropy than both stored ones: dropped
    assert mem.update(f[2], p_c)[2] is None
    assert mem.feat[0, :, 0].tolist() == [1.0, 2.0]
    # full; p_b-like (lower than slot 0's entropy) replaces the slot of highest entropy (slot 0, p_a)
    assert mem.update(f[3], p_b)[2] == 0
    assert mem.feat[0, :, 0].tolist() == [4.0, 2.0] and mem.count[0, 0] == 2
    assert mem.entropy[0].tolist() == pytest.approx([ent[1], ent[1]])


def test_read_out_with_empty_memory_is_the_text_classifier():
    text = F.normalize(torch.tensor([[1.0, 0.0, 0.2], [0.1, 1.0, 0.0], [0.0, 0.3, 1.0]], dtype=torch.float64), dim=-1)
    mem = DynamicMemory(text.float(), memory_size=3)
    f = _unit(0.5, 0.4, 0.3).float()
    got = mem.probs(f, 10.0)
    want = _softmax([10.0 * float(text[c].float() @ f[0]) for c in range(3)])
    assert got[0].tolist() == pytest.approx(want, rel=1e-5)


def test_read_out_weights_memory_slots_by_similarity():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mem = DynamicMemory(text, memory_size=2, beta=5.5)
    m = _unit(0.6, 0.8).float()
    mem.update(m, torch.tensor([0.8, 0.2]))  # class 0 slot 0
    f = _unit(0.8, 0.6).float()
    # class 0 prototype: normalise(w_m * m + w_t * t0), w = exp(-5.5 (1 - cos)); class 1: its text feature
    w_m, w_t = math.exp(-5.5 * (1 - 0.96)), math.exp(-5.5 * (1 - 0.8))
    proto = [w_m * 0.6 + w_t * 1.0, w_m * 0.8]
    n = math.hypot(*proto)
    s0 = (proto[0] * 0.8 + proto[1] * 0.6) / n
    want = _softmax([100.0 * s0, 100.0 * 0.6])
    assert mem.probs(f, 100.0)[0].tolist() == pytest.approx(want, rel=1e-5)


def test_confident_mean_uses_probabilities_of_lowest_entropy_views():
    probs = torch.tensor([[0.4, 0.6], [0.99, 0.01], [0.5, 0.5], [0.1, 0.9]])
    got = dmn_confident_mean(probs, 0.5)  # int(4 * 0.5) = 2 views: rows 1 and 3
    assert got[0].tolist() == pytest.approx([(0.99 + 0.1) / 2, (0.01 + 0.9) / 2])
    # one view (TTA-VLM's dmn_weak): that view is the pseudo-label's distribution (int(1 * 0.1) would keep none)
    assert torch.equal(dmn_confident_mean(probs[:1], 0.1), probs[:1])


def test_stream_memory_and_scores_after_each_step():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(3, 5), dim=-1)
    scale = 20.0
    state = DMNState(text, scale, memory_size=2, selection_p=0.25)
    memory = {c: [] for c in range(3)}  # hand bookkeeping: class -> [(feature, entropy)]
    events = {"write": 0, "replace": 0, "drop": 0}
    for step in range(10):
        views = F.normalize(torch.randn(8, 5) + 2.0 * text[step % 3], dim=-1)
        p_text, p_mem = state.step(views)
        # hand computation of the same step
        logits = scale * views @ text.t()
        probs = logits.softmax(-1)
        ent_v = -(probs * torch.log(probs + 1e-6)).sum(1)
        keep = ent_v.argsort()[:2]
        mean_p = probs[keep].mean(0)
        label = int(mean_p.argmax())
        e = float(-(mean_p * torch.log(mean_p + 1e-8)).sum())
        slots = memory[label]
        if len(slots) < 2:
            slots.append((views[0], e))
            events["write"] += 1
        elif any(e < s[1] for s in slots):
            worst = max(range(2), key=lambda j: slots[j][1])
            slots[worst] = (views[0], e)
            events["replace"] += 1
        else:
            events["drop"] += 1
        assert state.last["pseudo_label"] == label
        for c in range(3):
            assert int(state.memory.count[c, 0]) == len(memory[c])
            for j, (feat, ent) in enumerate(memory[c]):
                assert torch.allclose(state.memory.feat[c, j], feat)
                assert float(state.memory.entropy[c, j]) == pytest.approx(ent, rel=1e-6)
        assert torch.allclose(p_text[0], probs[0], atol=1e-6)
        q = views[0]
        scores = []
        for c in range(3):
            items = [s[0] for s in memory[c]] + [text[c]]
            proto = sum(math.exp(-5.5 * (1 - float(it @ q))) * it for it in items)
            scores.append(scale * float(F.normalize(proto, dim=0) @ q))
        assert p_mem[0].tolist() == pytest.approx(_softmax(scores), rel=1e-4, abs=1e-6)
    assert min(events.values()) >= 1, events  # the stream exercises every rule


def test_beta2_search_is_the_official_oracle_first_best_on_ties():
    p_text = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.3, 0.7]])
    p_mem = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 1])
    preds = grid_predictions(p_text, p_mem)
    assert preds.shape == (3, len(DMN_BETA2_GRID))
    beta2, acc, table = search_beta2(preds, labels)
    # sample 0 flips to class 1 once beta2 > 0.2: beta2 <= 0.1 -> [0, 0, 1], 66.7 %; beta2 >= 0.3 -> [1, 0, 1],
    # 100 % for all larger values too; the first best of the grid is 0.3
    assert beta2 == 0.3 and acc == pytest.approx(100.0)
    assert table[DMN_BETA2_GRID.index(0.1)] == pytest.approx(200 / 3)
    assert torch.equal(DMNState.combine(p_text, p_mem, 2.0), p_text + 2.0 * p_mem)


# ---- the procedure (TTA.METHOD DMN_ZS) on a fabricated base model ----

def _cfg(dataset="ToyShapes", **dmn):
    import trainers  # noqa: F401  (registers the TTA nodes)
    from vlprompt.config import extend_cfg, get_cfg_default

    cfg = extend_cfg(get_cfg_default())
    cfg.DATASET.NAME = dataset
    cfg.TTA.METHOD = "DMN_ZS"
    for k, v in dmn.items():
        cfg.TTA.DMN[k] = v
    return cfg


def _base(kind="zero_shot"):
    from vlprompt.tta import BaseModel

    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) * 2.0
    return BaseModel("ZeroshotCLIP" if kind == "zero_shot" else "CoOp", kind, None, ["a", "b", "c"],
                     torch.tensor(math.log(10.0)), None, lambda: text, torch.device("cpu"))


def test_procedure_returns_log_of_the_mixture_and_the_oracle_search_at_the_end():
    from trainers.tta.dmn import DMN_ZS
    from vlprompt.tta import Sample

    assert DMN_ZS.n_views(_cfg()) == 32 and DMN_ZS.n_views(_cfg(N_VIEWS=1)) == 1
    proc = DMN_ZS(_cfg(BETA2=2.0), _base())
    proc.reset()
    core = DMNState(torch.eye(3), torch.tensor(10.0), memory_size=50, beta=5.5, selection_p=0.1)
    torch.manual_seed(1)
    labels = []
    for i in range(6):
        raw = torch.randn(10, 3) + 3.0 * torch.eye(3)[i % 3]
        got = proc.step(Sample(views=None, image_features=raw, index=i, position=i))
        p_text, p_mem = core.step(raw / raw.norm(dim=-1, keepdim=True))
        assert torch.allclose(got, torch.log(p_text + 2.0 * p_mem)[0])
        assert torch.allclose(got.softmax(-1), (p_text + 2.0 * p_mem)[0] / 3.0, atol=1e-6)
        labels.append((i + 1) % 3 if i == 5 else i % 3)
    out = proc.finish(labels)
    assert set(out) == {"searched_accuracy", "searched_beta2"} and out["searched_beta2"] in DMN_BETA2_GRID
    assert proc.state_summary()["memory_entries"] == int(proc.state.memory.count.sum()) > 0
    assert DMN_ZS(_cfg(SEARCH_BETA2=False), _base()).finish(labels) == {}


def test_procedure_refuses_with_one_line(tmp_path):
    from trainers.tta.dmn import DMN_ZS
    from vlprompt.tta import TTAError

    with pytest.raises(TTAError, match="TEXT must be one of base, tip, tip_cupl"):
        DMN_ZS(_cfg(TEXT="cupl"), _base())
    with pytest.raises(TTAError, match="only zero-shot CLIP has"):
        DMN_ZS(_cfg("ImageNet", TEXT="tip"), _base("prompt_learner"))
    with pytest.raises(TTAError, match="no official prompt list for ToyShapes"):
        DMN_ZS(_cfg(TEXT="tip"), _base())
    with pytest.raises(TTAError, match="needs TTA.DMN.CUPL_FILE"):
        DMN_ZS(_cfg("ImageNet", TEXT="tip_cupl"), _base())
    bad = tmp_path / "cupl.json"
    bad.write_text('{"a": ["an a."], "b": ["a b."]}')
    with pytest.raises(TTAError, match="no descriptions for 1 class.*'c'"):
        DMN_ZS(_cfg("ImageNet", TEXT="tip_cupl", CUPL_FILE=str(bad)), _base())
    with pytest.raises(TTAError, match="N_VIEWS must be >= 1"):
        DMN_ZS.n_views(_cfg(N_VIEWS=0))
    with pytest.raises(TTAError, match="N_VIEWS 5 with TTA.DMN.SELECTION_P 0.1 keeps no view"):
        DMN_ZS.n_views(_cfg(N_VIEWS=5))
    assert "neither a zero-shot head" in DMN_ZS.refusal(_base("other"))


def test_cli_dmn_on_zero_shot_records_memory_order_and_the_oracle_search(tmp_path):
    """End to end on the toy world (4 images): DMN-ZS runs from train.py and records its state, the shuffled order
    and the official oracle search beside the fixed-beta2 accuracy."""
    import json

    from tests.test_tta import _cli

    r = _cli(tmp_path, tmp_path / "zs_dmn", "ZeroshotCLIP", "TTA.METHOD", "DMN_ZS", "TTA.DMN.N_VIEWS", "4",
             "TTA.DMN.SELECTION_P", "0.5", "TTA.MAX_IMAGES", "4")
    assert r["tta"]["method"] == "DMN_ZS" and r["tta"]["mode"] == "online" and r["tta"]["n_views"] == 4
    assert r["tta"]["order"] == "shuffle" and r["tta"]["state"]["memory_entries"] == 4
    assert r["metrics"]["searched_beta2"] in DMN_BETA2_GRID
    assert r["metrics"]["searched_accuracy"] >= r["metrics"]["accuracy"]  # beta2 = 1 is in the grid
    with open(tmp_path / "zs_dmn" / "tta_outputs.json") as f:
        order = json.load(f)["index"]
    assert len(order) == 4 and order != sorted(order)  # the recorded, shuffled stream


def test_tip_cupl_classifier_averages_templates_and_descriptions(tmp_path):
    import json

    from tests.test_tta import CLASSES, tiny_clip, zs_base
    from trainers.tta.dmn import DMN_TIP_TEMPLATES, DMN_ZS
    from vlprompt.clip.tokenizer import tokenize

    clip_model = tiny_clip()
    cupl = tmp_path / "cupl.json"
    cupl.write_text(json.dumps({c.replace("_", " "): [f"a {c} seen closely.", f"{c}, in the wild."] for c in CLASSES}))
    proc = DMN_ZS(_cfg("DescribableTextures", TEXT="tip_cupl", CUPL_FILE=str(cupl)), zs_base(clip_model))
    for k, c in enumerate(CLASSES):
        name = c.replace("_", " ")
        prompts = [t.format(name) for t in DMN_TIP_TEMPLATES["DescribableTextures"]] + [
            f"a {c} seen closely.", f"{c}, in the wild."]
        with torch.no_grad():
            e = clip_model.encode_text(tokenize(prompts, model=clip_model)).float()
        e = F.normalize(e, dim=-1).mean(0)
        assert torch.allclose(proc.text_feat[k], e / e.norm(), atol=1e-6)
