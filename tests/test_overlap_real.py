"""Drafting overlapped with verification on the embedded Gemma 3 270M pair through llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest

from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.sampling import SamplingParams, shape
from spec_cli.strategy import FixedStrategy
from tests.chisquare import first_token_chi2
from tests.neartie import assert_same_or_near_tie

PROMPTS = ["The capital of France is", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n']


@pytest.mark.parametrize("draft_len", [2, 4])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_with_overlap_equals_target_only(target, draft, target_only, prompt, draft_len):
    toks, reference = target_only(prompt)
    res = Engine(target, FixedStrategy(ModelDrafter(draft), draft_len), overlap="on").generate(
        toks, GenerateOptions(max_tokens=32, draft_len=draft_len)
    )
    assert res.stats.overlap_rounds > 0 and res.stats.overlap_used > 0
    assert_same_or_near_tie(target, toks, reference, res.tokens)


def test_first_sampled_token_with_overlap_keeps_target_distribution(target, draft):
    """Chi-square on the first sampled token with overlap on: the worker drafts during the first pass
    and must not disturb that round. (The tokens of a used pre-draft are checked against exact
    target probabilities on fakes, tests/test_overlap.py; here only that pre-drafts were used.)"""
    params = SamplingParams(temperature=1.0, top_k=8)
    prompt = target.tokenize("The capital of France is")
    runs = 400
    engine = Engine(target, FixedStrategy(ModelDrafter(draft), 1), overlap="on")
    firsts, used = [], 0
    for seed in range(runs):
        res = engine.generate(prompt, GenerateOptions(max_tokens=4, draft_len=1, seed=seed, sampling=params))
        firsts.append(res.tokens[0])
        used += res.stats.overlap_used
    assert used > 0
    firsts = np.array(firsts)
    p = shape(target.sync(prompt)[1].copy(), params)
    q = shape(draft.sync(prompt)[1].copy(), params)
    target.reset()
    draft.reset()
    assert not np.isin(firsts, p.ids, invert=True).any()
    chi2, obs, exp = first_token_chi2(firsts, p, runs)
    assert chi2 < 26.2, (chi2, obs, exp)  # 99.9 % quantile for <= 8 degrees of freedom
    exp_q = q.probs_at(p.ids) * runs
    chi2_q = ((obs - exp_q) ** 2 / np.maximum(exp_q, 1.0)).sum()
    assert chi2_q > chi2  # the draft's own distribution fits worse (the check can tell them apart)


def test_a_chat_with_overlap_replies_as_the_target_alone(target, draft):
    """spec chat's turn engine with --overlap on: each reply is the target alone's after the same prompt."""
    from spec_cli.turns import TurnEngine

    chat = TurnEngine(target, draft, GenerateOptions(max_tokens=24), draft_len=3, overlap="on")
    used = 0
    for message in ("Name three fruits.", "And three vegetables?"):
        r = chat.reply(message)
        used += r.stats.overlap_used
        reference = Engine(target).generate(r.prompt, GenerateOptions(max_tokens=24, stop=chat.opts.stop)).tokens
        assert_same_or_near_tie(target, r.prompt, reference, r.tokens)
    assert used > 0  # the pre-drafts were used, not only started
