"""The engine on real GGUF models through llama.cpp (the embedded Gemma 3 270M pair)."""

from __future__ import annotations

import numpy as np
import pytest

from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.errors import SpecError
from spec_cli.llama import Model, check_compatible
from spec_cli.sampling import SamplingParams, shape
from spec_cli.strategy import FixedStrategy
from tests.chisquare import first_token_chi2
from tests.neartie import assert_same_or_near_tie

PROMPTS = [
    "The capital of France is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Here is a list of fruits:\n1. Apple\n2.",
]


@pytest.fixture(scope="module")
def baselines(target_only):
    return {p: target_only(p) for p in PROMPTS}


@pytest.mark.parametrize("draft_len", [1, 4, 8])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_speculative_equals_target_only(target, draft, baselines, prompt, draft_len):
    toks, reference = baselines[prompt]
    res = Engine(target, FixedStrategy(ModelDrafter(draft), draft_len)).generate(
        toks, GenerateOptions(max_tokens=32, draft_len=draft_len)
    )
    s = res.stats
    assert s.drafted > 0
    assert_same_or_near_tie(target, toks, reference, res.tokens)


def test_pair_acceptance_is_neither_zero_nor_one(target, draft, baselines):
    toks, _ = baselines[PROMPTS[0]]
    s = Engine(target, FixedStrategy(ModelDrafter(draft), 4)).generate(toks, GenerateOptions(max_tokens=48, draft_len=4)).stats
    assert 0.0 < s.acceptance_rate < 1.0
    assert s.tokens_per_pass > 1.0


def test_rollback_forgets_rejected_tokens(target):
    """After truncation the target continues exactly as if the rejected tokens were never evaluated."""
    prompt = target.tokenize("My favourite colour is")
    intruder = target.tokenize(" green. I repeat: my favourite colour is", add_bos=False)
    target.sync(prompt, logits="none")
    target.eval(intruder, logits="all")  # drafts that will all be rejected
    assert target.cache_pos_max() == len(prompt) + len(intruder) - 1
    target.truncate(len(prompt) - 1)
    assert target.cache_pos_max() == len(prompt) - 2
    after_rollback = target.eval([prompt[-1]], logits="last")[0].copy()

    target.reset()
    target.sync(prompt[:-1], logits="none")
    fresh = target.eval([prompt[-1]], logits="last")[0].copy()
    assert int(after_rollback.argmax()) == int(fresh.argmax())
    np.testing.assert_allclose(after_rollback, fresh, atol=1e-3)

    # and the intruder really would have changed the prediction (so the check has teeth)
    target.reset()
    _, with_intruder = target.sync(prompt + intruder)
    assert float(np.abs(with_intruder - fresh).max()) > 1.0


def test_logit_rows_are_each_pass_own_after_the_buffer_grows(target):
    """Model keeps numpy views of llama.cpp's logits buffer from pass to pass. Each eval must
    return that pass's rows, also after a pass with more output rows than before made
    llama.cpp reallocate (move) the buffer, and a smaller pass after it."""
    import llama_cpp

    def fresh(n):  # the rows as llama.cpp hands them out now, wrapped anew
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(target._ctx), shape=(n, target.n_vocab)).copy()

    toks = target.tokenize("The quick brown fox jumps over the lazy dog, and then the dog")
    target.reset()
    passes = [(toks[:1], "last"), (toks[1:3], "all"), (toks[3:4], "all"), (toks[4:], "all"), ([toks[4]], "last")]
    seen = []
    for i, (chunk, mode) in enumerate(passes):
        if i == 4:
            target.truncate(4)  # back to a one-row pass, after the big one
        rows = target.eval(chunk, logits=mode)
        n = len(chunk) if mode == "all" else 1
        assert rows.shape == (n, target.n_vocab)
        np.testing.assert_array_equal(rows, fresh(n))
        seen.append(rows[-1].copy())
    # each pass left different rows behind, so a stale view would have failed above
    for a, b in zip(seen, seen[1:]):
        assert float(np.abs(a - b).max()) > 0.1


def test_draft_cache_is_not_refilled_each_round(target, draft, baselines):
    toks, _ = baselines[PROMPTS[1]]
    before = draft.decode_calls
    res = Engine(target, FixedStrategy(ModelDrafter(draft), 4)).generate(toks, GenerateOptions(max_tokens=40, draft_len=4))
    rounds = res.stats.target_passes
    # the prompt once, then at most draft_len single-token steps plus one catch-up batch per round
    assert draft.decode_calls - before <= 1 + rounds * 5
    # and the draft cache ends holding the context it drafted from, not a second copy of it
    assert len(draft.tokens) <= len(toks) + res.stats.generated + 4


def test_first_sampled_token_keeps_target_distribution(target, draft):
    """Chi-square: the first token under speculation follows the target's shaped distribution."""
    params = SamplingParams(temperature=1.0, top_k=8)
    prompt = target.tokenize("The capital of France is")
    p = shape(target.sync(prompt)[1].copy(), params)
    q = shape(draft.sync(prompt)[1].copy(), params)
    ids = np.union1d(p.ids, q.ids)
    tv_pq = 0.5 * np.abs(p.probs_at(ids) - q.probs_at(ids)).sum()
    assert tv_pq > 0.2, "draft and target too alike for this test to tell them apart"

    runs = 500
    engine = Engine(target, FixedStrategy(ModelDrafter(draft), 2))
    firsts = []
    for seed in range(runs):
        res = engine.generate(prompt, GenerateOptions(max_tokens=2, draft_len=2, seed=seed, sampling=params))
        firsts.append(res.tokens[0])
    firsts = np.array(firsts)
    assert not np.isin(firsts, p.ids, invert=True).any(), "emitted a token outside the target's top-k"
    chi2, obs, exp = first_token_chi2(firsts, p, runs)
    dof = int((exp >= 5).sum()) + (1 if (exp < 5).any() else 0) - 1
    # 99.9% quantile of chi-square with <= 8 degrees of freedom is < 26.2
    assert chi2 < 26.2, (chi2, dof, obs, exp)
    # the draft's own distribution would fail the same test (the check has power)
    exp_q = q.probs_at(p.ids) * runs
    chi2_q = ((obs - exp_q) ** 2 / np.maximum(exp_q, 1.0)).sum()
    assert chi2_q > chi2


def test_plain_sampled_decoding_keeps_target_distribution(target):
    """Chi-square: without drafts (--no-spec, or auto's rounds without one) the token drawn
    follows the target's shaped distribution, on the draw-only path plain decoding takes."""
    params = SamplingParams(temperature=1.0, top_k=8)
    prompt = target.tokenize("The capital of France is")
    row = target.sync(prompt)[1].copy()
    p = shape(row, params)
    flat = shape(row, SamplingParams(temperature=3.0, top_k=8))
    assert 0.5 * np.abs(p.probs - flat.probs_at(p.ids)).sum() > 0.15, "temperatures too alike for the power check"

    runs = 400
    engine = Engine(target)
    firsts = np.array(
        [engine.generate(prompt, GenerateOptions(max_tokens=1, seed=s, sampling=params)).tokens[0] for s in range(runs)]
    )
    assert not np.isin(firsts, p.ids, invert=True).any(), "emitted a token outside the target's top-k"
    chi2, obs, exp = first_token_chi2(firsts, p, runs)
    assert chi2 < 26.2, (chi2, obs, exp)  # 99.9 % quantile for <= 8 degrees of freedom
    # the same logits at a higher temperature fail it: the test can tell distributions apart
    chi2_flat, _, _ = first_token_chi2(firsts, flat, runs)
    assert chi2_flat > 26.2, (chi2_flat, obs)


def test_same_seed_same_sampled_text(target, draft):
    prompt = target.tokenize("Once upon a time")
    opts = GenerateOptions(max_tokens=24, draft_len=3, seed=42, sampling=SamplingParams(temperature=0.9, top_k=40, top_p=0.95))
    a = Engine(target, FixedStrategy(ModelDrafter(draft), 3)).generate(prompt, opts).tokens
    target.reset()
    draft.reset()
    b = Engine(target, FixedStrategy(ModelDrafter(draft), 3)).generate(prompt, opts).tokens
    assert a == b


def test_incompatible_vocabularies_are_refused(gemma_path, smollm2_path):
    with Model(gemma_path, n_ctx=64, label="target") as t, Model(smollm2_path, n_ctx=64, label="draft") as d:
        with pytest.raises(SpecError, match="vocabular"):
            check_compatible(t, d)


def test_compatible_pair_is_accepted_and_one_differing_token_is_not(target, draft, monkeypatch):
    """The Q2_K draft has the target's vocabulary, token for token, so the check lets it through;
    the same pair with one token's text changed is refused (the check reads the vocabularies)."""
    assert check_compatible(target, draft) is None
    last = min(target.n_vocab, draft.n_vocab) - 1
    real = draft.token_text
    monkeypatch.setattr(draft, "token_text", lambda t: real(t) + b"?" if t == last else real(t))
    with pytest.raises(SpecError, match=f"map token {last} to different text"):
        check_compatible(target, draft)


def test_stale_cost_curve_is_measured_again(target, draft):
    import json
    import os
    from pathlib import Path

    from spec_cli.calibrate import cached_costs

    first = cached_costs(target, draft, 3)
    path = Path(os.environ["SPEC_CACHE"]) / "calibration.json"
    table = json.loads(path.read_text())
    for entry in table.values():  # pretend it was measured on a machine 50x slower
        entry["target_ms"] = [50 * x for x in entry["target_ms"]]
    path.write_text(json.dumps(table))
    notes = []
    again = cached_costs(target, draft, 3, notify=notes.append)
    assert notes and "stale" in notes[0]
    assert again.target_ms[0] < 10 * first.target_ms[0]
    notes.clear()
    cached_costs(target, draft, 3, notify=notes.append)  # now fresh: read from the cache
    assert notes == []
