"""`auto` on the offline pair where a draft model pays: SmolLM2-135M F32 as the target
(the stand-in for an expensive target) and its packaged Q4_1 as the draft, through llama.cpp.

The decisions are checked, not the timings: given the cost curve measured on this
machine, the controller must choose the draft model, and whatever it chooses the
greedy output must be the target's own (near-tie rule).
"""

from __future__ import annotations

import pytest

from spec_cli.calibrate import measure_costs
from spec_cli.decode import Engine, GenerateOptions
from spec_cli.session import AUTO_MAX_DRAFT, LoadedPair, ModelChoice, build_strategy
from spec_cli.speedup import best_predicted
from tests.neartie import assert_same_or_near_tie

pytestmark = pytest.mark.slow

PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short story about a robot who learns to paint.",
]
N = 48


@pytest.fixture(scope="module")
def pair(smollm2_f32_path, smollm2_path):
    from spec_cli.backend import Model

    target = Model(smollm2_f32_path, n_ctx=1024, label="target")
    draft = Model(smollm2_path, n_ctx=1024, label="draft")
    yield LoadedPair(target, draft, smollm2_f32_path, smollm2_path)
    target.close()
    draft.close()


@pytest.fixture(scope="module")
def costs(pair):
    return measure_costs(pair.target, pair.draft, pair.target.tokenize(PROMPTS[0]), AUTO_MAX_DRAFT + 1)


def test_the_measured_curve_says_the_draft_pays(costs):
    # The premise of the pair: a Q4_1 step costs well under an F32 one, and verifying a few
    # tokens costs little more than one. If this fails, this machine is not one where this
    # pair stands in for a big target, and the test below has nothing to decide.
    assert costs.draft_ms < 0.7 * costs.target_ms[0], costs
    g, s = best_predicted(0.85, costs.target_ms, costs.draft_ms, costs.draft2_ms)
    assert s > 1.1, (g, s, costs)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_auto_drafts_with_the_model_and_keeps_the_target_output(pair, costs, prompt):
    toks = pair.target.tokenize(prompt)
    pair.target.reset()
    reference = Engine(pair.target).generate(toks, GenerateOptions(max_tokens=N, draft_len=0)).tokens
    pair.target.reset()
    pair.draft.reset()
    strategy = build_strategy(pair, ModelChoice(drafter="auto"), None, costs=costs)
    res = Engine(pair.target, strategy=strategy).generate(toks, GenerateOptions(max_tokens=N))
    rounds = strategy.rounds
    assert "model" in strategy.name  # not left out as too slow
    assert rounds["model"] > 0.5 * sum(rounds.values()), (dict(rounds), strategy.describe())
    assert res.stats.accepted > 0
    assert_same_or_near_tie(pair.target, toks, reference, res.tokens)
