"""TDA (trainers/tta/tda.py): cache contents and logits after each step of a fixed small stream, against hand
computation (a plain-Python re-statement of the official rules) and a few literal values."""
import math

import pytest
import torch
import torch.nn.functional as F

from trainers.tta.tda import (TDA_DATASET_PARAMS, TDA_TEMPLATES, ClassCache, TDAState, normalized_entropy,
                              tda_clip_outputs)
from vlprompt.tta.objectives import avg_entropy


def _unit(*xs):
    return F.normalize(torch.tensor([xs], dtype=torch.float64), dim=-1)


def test_official_hyper_parameters_per_dataset():
    # a few values from the official configs/*.yaml
    assert TDA_DATASET_PARAMS["ImageNet"] == (2.0, 5.0)
    assert TDA_DATASET_PARAMS["ImageNetSketch"] == (2.363, 7.45)
    assert TDA_DATASET_PARAMS["EuroSAT"] == (4.0, 8.0)
    assert TDA_DATASET_PARAMS["Food101"] == (1.0, 1.0)
    assert len(TDA_DATASET_PARAMS) == 15 and set(TDA_TEMPLATES) == set(TDA_DATASET_PARAMS)
    assert len(TDA_TEMPLATES["ImageNetR"]) == 80 and len(set(TDA_TEMPLATES["ImageNetR"])) == 80
    assert len(TDA_TEMPLATES["SUN397"]) == 7 and TDA_TEMPLATES["DescribableTextures"] == ["{} texture."]


def test_cache_update_keeps_lowest_entropy_sorted_and_replaces_only_the_last():
    cache = ClassCache(2)
    f = [torch.full((1, 2), float(i)) for i in range(6)]
    cache.update(0, f[0], torch.tensor(0.5))
    cache.update(0, f[1], torch.tensor(0.3))
    assert [float(e[1]) for e in cache.entries[0]] == pytest.approx([0.3, 0.5])
    cache.update(0, f[2], torch.tensor(0.4))  # full: 0.4 < 0.5 replaces the last
    assert [float(e[1]) for e in cache.entries[0]] == pytest.approx([0.3, 0.4])
    assert cache.entries[0][1][0] is f[2]
    cache.update(0, f[3], torch.tensor(0.9))  # full: not better than the last, dropped
    assert [float(e[1]) for e in cache.entries[0]] == pytest.approx([0.3, 0.4])
    cache.update(0, f[4], torch.tensor(0.1))  # replaces the last (0.4), then sorted first
    assert [float(e[1]) for e in cache.entries[0]] == pytest.approx([0.1, 0.3])
    cache.update(2, f[5], torch.tensor(0.7))
    cache.update(2, f[1], torch.tensor(0.7))  # tie: insertion order kept (stable sort)
    assert [e[0] for e in cache.entries[2]] == [f[5], f[1]]
    keys, labels = cache.keys_and_labels()
    assert labels == [0, 0, 2, 2] and keys.shape == (4, 2)
    assert keys[0, 0] == 4.0 and keys[1, 0] == 1.0


def test_positive_and_negative_cache_logits_by_hand():
    cache = ClassCache(3)
    k1, k2 = _unit(1.0, 0.0), _unit(0.6, 0.8)
    cache.update(1, k1, torch.tensor(0.2), torch.tensor([[0.02, 0.50, 0.48]], dtype=torch.float64))
    cache.update(0, k2, torch.tensor(0.4), torch.tensor([[0.90, 0.08, 0.02]], dtype=torch.float64))
    f = _unit(0.8, 0.6)
    alpha, beta = 2.0, 5.0
    w1, w2 = math.exp(-beta * (1 - 0.8)), math.exp(-beta * (1 - 0.96))
    pos = cache.logits(f, alpha, beta, 3)
    # keys in class order: class 0 (k2) then class 1 (k1)
    assert pos[0].tolist() == pytest.approx([alpha * w2, alpha * w1, 0.0])
    neg = cache.logits(f, alpha, beta, 3, mask=(0.03, 1.0))
    # masks: k2 -> [1, 1, 0] (0.02 is not > 0.03); k1 -> [0, 1, 1]
    assert neg[0].tolist() == pytest.approx([alpha * w2, alpha * (w1 + w2), alpha * w1])


def test_normalized_entropy_official_mixed_bases_and_switch():
    loss = torch.tensor([math.log(4.0)])  # the maximum entropy of 4 classes
    assert normalized_entropy(loss, 4) == pytest.approx(math.log(4) / 2)  # ln 4 / log2 4 = 0.693
    assert normalized_entropy(loss, 4, base="ln") == pytest.approx(1.0)


def test_multiview_outputs_mean_of_confident_views_not_renormalised():
    torch.manual_seed(0)
    w = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=0)  # (D, C)
    views = F.normalize(torch.randn(20, 4, dtype=torch.float64), dim=-1)
    feature, logits, loss, prob, pred = tda_clip_outputs(views, w)
    all_logits = 100 * views @ w
    ent = -(all_logits.softmax(1) * all_logits.log_softmax(1)).sum(1)
    keep = ent.argsort()[:2]  # int(20 * 0.1)
    assert torch.allclose(feature, views[keep].mean(0, keepdim=True))
    assert feature.norm() < 1.0  # not renormalised (official)
    assert torch.allclose(logits, all_logits[keep].mean(0, keepdim=True))
    mean_p = all_logits[keep].softmax(1).mean(0)
    assert float(loss) == pytest.approx(float(-(mean_p * mean_p.log()).sum()))
    assert torch.allclose(prob[0], mean_p) and pred == int(all_logits[keep].mean(0).argmax())
    assert float(avg_entropy(all_logits[keep])) == pytest.approx(float(loss))


def _oracle_stream(stream, w, pos_ab, neg_ab, caps, ent_bounds, mask_bounds, scale):
    """Plain-Python TDA: lists of floats, math.exp; returns per-step (pos cache, neg cache, logits)."""
    C = len(w[0])
    pos, neg, out = {}, {}, []

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    def put(cache, c, item, cap):
        if c not in cache:
            cache[c] = [item]
            return
        if len(cache[c]) < cap:
            cache[c].append(item)
        elif item[1] < cache[c][-1][1]:
            cache[c][-1] = item
        cache[c].sort(key=lambda e: e[1])

    def cache_logits(cache, f, a, b, masked):
        res = [0.0] * C
        for c in sorted(cache):
            for feat, _, prob in cache[c]:
                k = math.exp(-(b - b * dot(f, feat)))
                for j in range(C):
                    v = (1.0 if mask_bounds[0] < prob[j] < mask_bounds[1] else 0.0) if masked else float(j == c)
                    res[j] += a * k * v
        return res

    for f in stream:
        logits = [scale * dot(f, [w[d][j] for d in range(len(f))]) for j in range(C)]
        m = max(logits)
        z = sum(math.exp(x - m) for x in logits)
        p = [math.exp(x - m) / z for x in logits]
        loss = -sum(q * math.log(q) for q in p)
        c = max(range(C), key=lambda j: logits[j])
        ent = loss / math.log2(C)
        put(pos, c, (f, loss, None), caps[0])
        if ent_bounds[0] < ent < ent_bounds[1]:
            put(neg, c, (f, loss, p), caps[1])
        pl = cache_logits(pos, f, *pos_ab, False)
        nl = cache_logits(neg, f, *neg_ab, True) if neg else [0.0] * C
        final = [logits[j] + pl[j] - nl[j] for j in range(C)]
        out.append(({k: [e[1] for e in v] for k, v in pos.items()},
                    {k: [e[1] for e in v] for k, v in neg.items()}, final))
    return out


def test_stream_cache_contents_and_logits_after_each_step():
    # 3 classes in 3-D; logit scale 100 as officially, so features close to two class directions give the
    # mid entropies that reach the negative cache
    w = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64), dim=0)
    stream = [_unit(1.0, 0.99, 0.2), _unit(1.0, 0.2, 0.1), _unit(0.97, 1.0, 0.3), _unit(1.0, 0.5, 0.1),
              _unit(1.0, 0.985, 0.5), _unit(0.3, 0.2, 1.0), _unit(1.0, 0.999, 0.99), _unit(1.0, 0.3, 0.3)]
    state = TDAState(w, pos_alpha=2.0, pos_beta=5.0, pos_capacity=2, neg_capacity=1)
    want = _oracle_stream([s[0].tolist() for s in stream], w.tolist(), (2.0, 5.0), (0.117, 1.0), (2, 1),
                          (0.2, 0.5), (0.03, 1.0), 100.0)
    reached_negative = 0
    for i, (f, (pos, neg, final)) in enumerate(zip(stream, want)):
        got = state.step(f)
        for cache, expected in ((state.pos, pos), (state.neg, neg)):
            assert sorted(cache.entries) == sorted(expected), i
            for c, losses in expected.items():
                assert [float(e[1]) for e in cache.entries[c]] == pytest.approx(losses, rel=1e-9), (i, c)
        assert got[0].tolist() == pytest.approx(final, rel=1e-9, abs=1e-9), i
        reached_negative += state.last["to_negative"]
    # the stream exercises every rule: a full positive class, and some but not all samples in the negative cache
    assert 0 < reached_negative < len(stream)
    assert max(len(v) for v in state.pos.entries.values()) == 2 and len(state.neg) >= 1


def test_first_step_attends_to_itself():
    w = torch.eye(3, dtype=torch.float64)
    f = _unit(1.0, 0.2, 0.1)
    state = TDAState(w, pos_alpha=2.0, pos_beta=5.0, neg_enabled=False)
    got = state.step(f)
    # the sample is cached before its prediction: affinity 1 -> kernel 1 -> + alpha on its pseudo-label
    expected = 100 * f[0] + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(got[0], expected)


def test_disabled_caches_give_clip_logits():
    w = torch.eye(3, dtype=torch.float64)
    state = TDAState(w, pos_alpha=2.0, pos_beta=5.0, pos_enabled=False, neg_enabled=False)
    for f in (_unit(1.0, 0.99, 0.2), _unit(0.2, 1.0, 0.1)):
        assert torch.equal(state.step(f), 100 * f @ w)
    assert not state.pos and not state.neg


# ---- the procedure (TTA.METHOD TDA) on a fabricated base model: config resolution, views, refusals ----

def _cfg(dataset="ImageNet", **tda):
    import trainers  # noqa: F401  (registers the TTA nodes)
    from vlprompt.config import extend_cfg, get_cfg_default

    cfg = extend_cfg(get_cfg_default())
    cfg.DATASET.NAME = dataset
    cfg.TTA.METHOD = "TDA"
    for k, v in tda.items():
        cfg.TTA.TDA[k] = v
    return cfg


def _base(kind="zero_shot", k=3, d=3):
    from vlprompt.tta import BaseModel

    text = torch.eye(k, d)
    return BaseModel("ZeroshotCLIP" if kind == "zero_shot" else "CoOp", kind, None, [f"c{i}" for i in range(k)],
                     torch.tensor(math.log(50.0)), None, lambda: text * 3.0, torch.device("cpu"))


def _sample(feats):
    from vlprompt.tta import Sample

    return Sample(views=None, image_features=feats, index=0, position=0)


def test_procedure_takes_the_official_values_of_the_dataset_and_its_view_count():
    from trainers.tta.tda import TDA

    for name, views in (("ImageNet", 1), ("ImageNetA", 64), ("ImageNetSketch", 64), ("DescribableTextures", 1)):
        proc = TDA(_cfg(name), _base())
        assert (proc.pos_alpha, proc.pos_beta) == TDA_DATASET_PARAMS[name]
        assert TDA.n_views(_cfg(name)) == views
    assert TDA.n_views(_cfg("ImageNetA", N_VIEWS=1)) == 1
    proc = TDA(_cfg("ToyShapes", POS_ALPHA=1.5, POS_BETA=4.0), _base())
    assert (proc.pos_alpha, proc.pos_beta) == (1.5, 4.0) and proc.logit_scale == 100.0
    proc = TDA(_cfg("EuroSAT", POS_BETA=1.0), _base())  # one value given, the other official
    assert (proc.pos_alpha, proc.pos_beta) == (4.0, 1.0)
    # a dataset TDA never saw takes ImageNet's values, and says so (printed, recorded in results.json)
    proc = TDA(_cfg("ToyShapes"), _base())
    proc.reset()
    assert (proc.pos_alpha, proc.pos_beta) == (2.0, 5.0)
    assert proc.state_summary()["params"].startswith("ImageNet's: TDA has no official values for ToyShapes")


def test_procedure_matches_the_core_on_raw_features_and_resets_per_stream():
    from trainers.tta.tda import TDA

    base = _base()
    proc = TDA(_cfg("Food101"), base)
    proc.reset()
    core = TDAState(torch.eye(3), 1.0, 1.0)
    raw = [torch.tensor([[2.0, 1.98, 0.4]]), torch.tensor([[0.5, 3.0, 0.1]]), torch.tensor([[1.0, 0.98, 0.9]])]
    for f in raw:
        got = proc.step(_sample(f))
        assert got.shape == (3,)
        assert torch.allclose(got, core.step(f / f.norm(dim=-1, keepdim=True))[0])
    assert proc.state_summary()["pos_entries"] == 3
    proc.reset()
    assert not proc.state.pos and proc.state_summary()["pos_entries"] == 0
    # the TTA-VLM switch: the model's own scale exp(logit_scale) = 50 instead of 100
    assert TDA(_cfg("Food101", USE_MODEL_LOGIT_SCALE=True), base).logit_scale == pytest.approx(50.0)


def test_procedure_refuses_what_it_cannot_do_with_one_line():
    from trainers.tta.tda import TDA
    from vlprompt.tta import TTAError

    with pytest.raises(TTAError, match="ENTROPY_NORM must be log2"):
        TDA(_cfg(ENTROPY_NORM="bits"), _base())
    with pytest.raises(TTAError, match="only zero-shot CLIP has .*use TTA.TDA.TEXT base"):
        TDA(_cfg(TEXT="official"), _base("prompt_learner"))
    with pytest.raises(TTAError, match="N_VIEWS must be >= 1"):
        TDA.n_views(_cfg(N_VIEWS=0))
    with pytest.raises(TTAError, match="N_VIEWS 8 with TTA.TDA.SELECTION_P 0.1 keeps no view"):
        TDA(_cfg(N_VIEWS=8), _base())
    assert TDA.refusal(_base()) is None and TDA.refusal(_base("prompt_learner")) is None
    assert "neither a zero-shot head" in TDA.refusal(_base("other"))


def test_cli_tda_wraps_a_coop_prompt_learner(tmp_path):
    """End to end on the toy world: TDA on CoOp's classifier (its prompt learner, evaluated with --eval-only; loading
    a finished run's checkpoint is the runner's, tested with TPT in tests/test_tta.py), 4 images of the stream."""
    from tests.test_tta import _cli

    r = _cli(tmp_path, tmp_path / "coop_tda", "CoOp", "--eval-only", "TTA.METHOD", "TDA", "TTA.MAX_IMAGES", "4")
    assert r["tta"]["base_model"] == "CoOp" and r["tta"]["base_kind"] == "prompt_learner"
    assert r["tta"]["mode"] == "online" and r["tta"]["n_views"] == 1 and r["tta"]["n_images"] == 4
    state = r["tta"]["state"]
    assert state["text"] == "base" and state["pos_entries"] == 4 and state["params"].startswith("ImageNet's")


def test_official_template_classifier_on_zero_shot_clip():
    from tests.test_tta import CLASSES, tiny_clip, zs_base
    from trainers.tta.tda import TDA
    from vlprompt.clip import encode_class_texts

    clip_model = tiny_clip()
    base = zs_base(clip_model)
    proc = TDA(_cfg("SUN397", TEXT="official"), base)
    want = encode_class_texts(clip_model, CLASSES, TDA_TEMPLATES["SUN397"])  # the 7 CLIP templates
    assert torch.allclose(proc.text_weights, (want / want.norm(dim=-1, keepdim=True)).t(), atol=1e-6)
    base_w = base.text_features()
    assert not torch.allclose(proc.text_weights, (base_w / base_w.norm(dim=-1, keepdim=True)).t(), atol=1e-3)
