"""Global module hooks (FlopCounterMode, a profiler's module tracker) switch the prompted encoders' exact
fast paths off; the first time, one warning line says so and how to keep them (issue 27, item 5)."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from vlprompt.clip import PromptedTextEncoder, build_clip_model, tokenize
from vlprompt.clip import fast_attention as fa


def test_flop_counter_turns_the_fast_paths_off_with_one_warning_line(capsys, monkeypatch):
    monkeypatch.setitem(fa._GLOBAL_HOOKS_NOTICE, "shown", False)
    m = build_clip_model("test-vit-tiny")
    for p in m.parameters():
        p.requires_grad_(False)
    te = PromptedTextEncoder(m, fast=True)
    toks = tokenize(["a photo of a dog.", "a photo of a big cat."])
    with torch.no_grad():
        fast = te.encode_tokens(toks)
    assert fa.blocks_fast_reason(m.transformer.resblocks) is None
    capsys.readouterr()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        assert fa.blocks_fast_reason(m.transformer.resblocks) == "global module forward hooks are registered"
        counted = te.encode_tokens(toks)
        te.encode_tokens(toks)
    err = capsys.readouterr().err
    assert err.splitlines() == [fa.GLOBAL_HOOKS_NOTICE]  # one line, however many forwards
    assert err.startswith("Warning: global module forward hooks are registered (e.g. "
                          "torch.utils.flop_counter.FlopCounterMode")
    assert "module.register_forward_hook" in err
    assert counter.get_total_flops() > 0
    torch.testing.assert_close(counted, fast, atol=1e-6, rtol=1e-6)  # the reference path: same numbers
    # hooks gone: fast again, and silent
    assert fa.blocks_fast_reason(m.transformer.resblocks) is None and capsys.readouterr().err == ""
