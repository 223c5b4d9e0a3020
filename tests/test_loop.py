"""The speculative loop on scripted fake models: acceptance cases, stops inside drafts, cache positions."""

from __future__ import annotations

import numpy as np
import pytest

from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.errors import SpecError
from spec_cli.sampling import SamplingParams
from spec_cli.strategy import FixedStrategy
from tests.chisquare import masked_chi2, softmax
from tests.fakes import FakeModel, soft_lm, table_lm

V = 16
# target: a cycle 1 -> 2 -> 3 -> ... -> 9 -> 1
CYCLE = {i: i % 9 + 1 for i in range(1, 10)}


def target_only(prompt, n, table=CYCLE, eog=None):
    t = FakeModel(table_lm(table, V), V, eog=eog)
    return Engine(t).generate(prompt, GenerateOptions(max_tokens=n, draft_len=0))


def run_spec(draft_table, prompt=(1,), n=20, g=4, eog=None, n_ctx=512, **kw):
    t = FakeModel(table_lm(CYCLE, V), V, eog=eog, n_ctx=n_ctx)
    d = FakeModel(table_lm(draft_table, V), V, n_ctx=n_ctx)
    res = Engine(t, FixedStrategy(ModelDrafter(d), g)).generate(list(prompt), GenerateOptions(max_tokens=n, draft_len=g, **kw))
    return res, t, d


def check_cache_invariant(target, prompt, res):
    # after the run the target cache holds the context minus its last token
    context = list(prompt) + res.tokens
    assert target.tokens == context[:-1]


def test_all_drafts_accepted():
    res, t, d = run_spec(CYCLE, n=20, g=4)
    assert res.tokens == target_only([1], 20).tokens
    s = res.stats
    assert s.drafted == s.accepted > 0
    # 4 drafts + bonus token per pass: 20 tokens in 4 passes
    assert s.target_passes == 4
    assert s.accept_hist == [0, 0, 0, 0, 4]
    check_cache_invariant(t, [1], res)


def test_no_draft_accepted():
    wrong = {i: 12 for i in range(16)}  # the draft always says 12, the target never does
    res, t, d = run_spec(wrong, n=10, g=3)
    assert res.tokens == target_only([1], 10).tokens
    s = res.stats
    assert s.accepted == 0 and s.drafted > 0
    assert s.target_passes == 10  # one token per pass, the correction
    # the last round has room for one token only, so it drafts nothing
    assert s.accept_hist == [9] and s.rounds_without_draft == 1
    check_cache_invariant(t, [1], res)


def test_partial_acceptance_and_positions():
    # The draft agrees with the target except after 4, where it proposes 13.
    draft_table = dict(CYCLE)
    draft_table[4] = 13
    res, t, d = run_spec(draft_table, n=18, g=4)
    assert res.tokens == target_only([1], 18).tokens
    s = res.stats
    assert 0 < s.accepted < s.drafted
    check_cache_invariant(t, [1], res)
    # Each verification pass starts where the cache was cut back to: at the last
    # token of the context, and that token is the one fed first.
    # (The prompt is one token, so there is no prefill: every target batch verifies.)
    seq = [1] + res.tokens
    assert len(t.batches) == s.target_passes
    for start, batch in zip(t.starts, t.batches):
        assert batch[0] == seq[start]


def test_draft_cache_is_reused_not_refilled():
    res, t, d = run_spec(CYCLE, prompt=[1, 2, 3, 4, 5, 6, 7, 8, 9] * 5, n=30, g=4)
    evaluated = sum(len(b) for b in d.batches)
    # the prompt once, then about one new token per drafted token: never the whole context again
    assert evaluated <= 45 + res.stats.drafted + res.stats.target_passes


def test_eos_inside_draft():
    # the target emits 1 2 3 EOS(4) ...; the draft agrees, so EOS arrives inside an accepted run
    res, t, d = run_spec(CYCLE, n=20, g=6, eog=4)
    assert res.tokens == [2, 3]
    assert res.stats.stop_reason == "eos"
    check_cache_invariant(t, [1], res)


def test_max_tokens_inside_draft():
    res, t, d = run_spec(CYCLE, n=7, g=4)
    assert res.tokens == target_only([1], 7).tokens
    assert len(res.tokens) == 7
    assert res.stats.stop_reason == "max_tokens"
    check_cache_invariant(t, [1], res)


def test_stop_string_inside_draft():
    res, t, d = run_spec(CYCLE, n=20, g=6, stop=("<5>",))
    assert res.text == "<2><3><4>"
    assert res.stats.stop_reason == "stop"
    check_cache_invariant(t, [1], res)


def test_context_limit_ends_cleanly():
    res, t, d = run_spec(CYCLE, n=100, g=4, n_ctx=12)
    assert res.stats.stop_reason == "context"
    assert len(res.tokens) >= 1
    assert res.tokens == target_only([1], len(res.tokens)).tokens


def test_prompt_longer_than_context_is_an_error():
    t = FakeModel(table_lm(CYCLE, V), V, n_ctx=8)
    with pytest.raises(SpecError, match="context"):
        Engine(t).generate(list(range(1, 10)), GenerateOptions(max_tokens=3, draft_len=0))


def test_bad_options_are_errors():
    t = FakeModel(table_lm(CYCLE, V), V)
    for opts in (
        GenerateOptions(max_tokens=0),
        GenerateOptions(draft_len=-1),
        GenerateOptions(sampling=SamplingParams(temperature=-1)),
        GenerateOptions(sampling=SamplingParams(temperature=1, top_p=0)),
    ):
        with pytest.raises(SpecError):
            Engine(t).generate([1], opts)


def test_same_seed_same_sampled_output():
    def go(seed):
        t = FakeModel(soft_lm(V, 1), V)
        d = FakeModel(soft_lm(V, 2), V)
        opts = GenerateOptions(max_tokens=30, draft_len=3, seed=seed, sampling=SamplingParams(temperature=1.0, top_k=0))
        return Engine(t, FixedStrategy(ModelDrafter(d), 3)).generate([1], opts).tokens

    assert go(7) == go(7)
    assert go(7) != go(8)


def test_sampled_loop_keeps_target_distribution():
    """The first two sampled tokens through speculation match target-only sampling (chi-square)."""
    n_vocab = 4
    tgt, drf = soft_lm(n_vocab, 11, temperature=2.0), soft_lm(n_vocab, 12, temperature=2.0)
    params = SamplingParams(temperature=1.0, top_k=0)
    runs = 3000

    def histogram(use_draft):
        counts = np.zeros((n_vocab, n_vocab))
        for seed in range(runs):
            t = FakeModel(tgt, n_vocab)
            eng = Engine(t, FixedStrategy(ModelDrafter(FakeModel(drf, n_vocab)), 2) if use_draft else None)
            out = eng.generate([1], GenerateOptions(max_tokens=2, draft_len=2, seed=seed, sampling=params)).tokens
            counts[out[0], out[1]] += 1
        return counts

    # exact target probabilities of the pair (x0, x1)
    p0 = softmax(tgt([1]).astype(np.float64))
    expected = np.array([[p0[a] * softmax(tgt([1, a]).astype(np.float64))[b] for b in range(n_vocab)] for a in range(n_vocab)])
    for use_draft in (False, True):
        obs = histogram(use_draft)
        chi2, dof = masked_chi2(obs, expected * runs)
        # 99.9th percentile of chi-square is below dof + 4.5 * sqrt(2 dof) + 10 for these sizes
        assert chi2 < dof + 4.5 * np.sqrt(2 * dof) + 10, (use_draft, chi2, dof)
    # and the draft really disagreed with the target (otherwise the test proves nothing)
    assert not np.allclose(softmax(tgt([1]).astype(np.float64)), softmax(drf([1]).astype(np.float64)), atol=0.05)


def test_sampled_loop_with_the_ngram_drafter_keeps_target_distribution():
    """Point-mass drafts from the n-gram lookup: the first two sampled tokens still follow the target."""
    from spec_cli.drafters.ngram import NgramDrafter

    n_vocab = 4
    tgt = soft_lm(n_vocab, 28, temperature=2.0)  # seed chosen so that the target gives the draft 3 about 0.5
    params = SamplingParams(temperature=1.0, top_k=0)
    prompt = [1, 2, 3, 1, 2]  # the lookup proposes 3, 1, ... (what followed "1 2" before)
    runs = 3000
    counts = np.zeros((n_vocab, n_vocab))
    drafted = accepted = 0
    for seed in range(runs):
        eng = Engine(FakeModel(tgt, n_vocab), FixedStrategy(NgramDrafter(max_ngram=2), 2))
        res = eng.generate(prompt, GenerateOptions(max_tokens=2, draft_len=2, seed=seed, sampling=params))
        counts[res.tokens[0], res.tokens[1]] += 1
        drafted += res.stats.drafted
        accepted += res.stats.accepted

    p0 = softmax(tgt(prompt).astype(np.float64))
    expected = np.array(
        [[p0[a] * softmax(tgt(prompt + [a]).astype(np.float64))[b] for b in range(n_vocab)] for a in range(n_vocab)]
    )
    chi2, dof = masked_chi2(counts, expected * runs)
    assert chi2 < dof + 4.5 * np.sqrt(2 * dof) + 10, (chi2, dof)
    # The drafts were really used, and the target really turned some down (else nothing was tested).
    assert drafted >= runs and 0 < accepted < drafted
    assert 0.2 < p0[3] < 0.8
