"""`auto` on the offline pair where a draft model pays: SmolLM2-135M F32 as the target
(the stand-in for an expensive target) and its packaged Q4_1 as the draft, through llama.cpp.

The decisions are checked, not the timings: given the cost curve measured on this
machine and the pair's acceptance, where the draft clearly pays the controller must
choose the draft model in most rounds, where it clearly loses it must not (where it is
marginal the decision test skips, with the figures), and whatever it chooses the greedy
output must be the target's own (near-tie rule).
"""

from __future__ import annotations

import pytest

from spec_cli.calibrate import measure_costs
from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.loading import LoadedPair, ModelChoice
from spec_cli.speedup import acceptance_from_hist, best_predicted
from spec_cli.strategy import AUTO_MAX_DRAFT, FixedStrategy, build_strategy
from tests.neartie import assert_same_or_near_tie

PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short story about a robot who learns to paint.",
]
N = 48


@pytest.fixture(scope="module")
def pair(smollm2_f32_path, smollm2_path):
    from spec_cli.llama import Model

    target = Model(smollm2_f32_path, n_ctx=1024, label="target")
    draft = Model(smollm2_path, n_ctx=1024, label="draft")
    yield LoadedPair(target, draft, smollm2_f32_path, smollm2_path)
    target.close()
    draft.close()


@pytest.fixture(scope="module")
def costs(pair):
    return measure_costs(pair.target, pair.draft, pair.target.tokenize(PROMPTS[0]), AUTO_MAX_DRAFT + 1)


# What the measured costs predict for the draft model decides what auto must do with it. On this
# project's CPUs the F32 target costs about twice a Q4_1 draft step and the draft pays (~1.2x
# predicted). Between LOSES and PAYS it is marginal: auto may go either way, and the decision
# test says so by skipping with the figures instead of passing on no assertion.
PAYS, LOSES = 1.15, 0.95


@pytest.fixture(scope="module")
def auto_runs(pair, costs):
    """prompt -> the target's own greedy output, the pair's acceptance and predicted speedup at a
    fixed draft length, and auto's run (its output and its strategy), run once per prompt."""
    done = {}

    def run(prompt):
        if prompt not in done:
            toks = pair.target.tokenize(prompt)
            pair.target.reset()
            reference = Engine(pair.target).generate(toks, GenerateOptions(max_tokens=N, draft_len=0)).tokens
            pair.target.reset()
            pair.draft.reset()
            fixed = (
                Engine(pair.target, FixedStrategy(ModelDrafter(pair.draft), 3))
                .generate(toks, GenerateOptions(max_tokens=N, draft_len=3))
                .stats
            )
            a = acceptance_from_hist(fixed.accept_hist, 3)
            _, predicted = best_predicted(a, costs.target_ms, costs.draft_ms, costs.draft2_ms)
            pair.target.reset()
            pair.draft.reset()
            strategy = build_strategy(pair, ModelChoice(drafter="auto"), None, costs=costs)
            res = Engine(pair.target, strategy=strategy).generate(toks, GenerateOptions(max_tokens=N))
            done[prompt] = (toks, reference, a, predicted, strategy, res)
        return done[prompt]

    return run


@pytest.mark.parametrize("prompt", PROMPTS)
def test_auto_keeps_the_target_output(pair, auto_runs, prompt):
    toks, reference, _, _, _, res = auto_runs(prompt)
    assert_same_or_near_tie(pair.target, toks, reference, res.tokens)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_auto_decides_by_the_measured_costs(costs, auto_runs, prompt):
    _, _, a, predicted, strategy, _ = auto_runs(prompt)
    assert sum(strategy.rounds.values()) > 0, "auto ran no rounds"
    share = strategy.rounds["model"] / sum(strategy.rounds.values())
    why = (a, predicted, costs, dict(strategy.rounds), strategy.describe())
    if predicted >= PAYS:
        assert "model" in strategy.name and share > 0.5, why
    elif predicted < LOSES:
        assert share <= 0.5, why
    else:
        pytest.skip(
            f"the draft model is marginal on this machine ({predicted:.2f}x predicted at acceptance {a:.2f}, "
            f"between {LOSES} and {PAYS}): auto may go either way (it drafted with it in {share:.0%} of its rounds)"
        )


def test_a_too_dear_cached_curve_does_not_keep_a_paying_draft_off(pair, costs, auto_runs):
    """A curve cached on a busy machine (every pass of K >= 2 priced as K single steps or more, so
    that by the curve no draft could ever pay; still increasing, and right at K = 1) does not keep
    the draft off: where the measured costs say the draft model pays, auto drafts with it in most
    rounds all the same, and the bad curve is gone from the cache afterwards."""
    import spec_cli.calibrate as calibrate
    from spec_cli.presets import cache_dir

    prompt = PROMPTS[0]
    toks, reference, a, predicted, _, _ = auto_runs(prompt)
    if predicted < PAYS:
        pytest.skip(f"the draft model does not clearly pay on this machine ({predicted:.2f}x predicted at acceptance {a:.2f})")
    k_max = AUTO_MAX_DRAFT + 1
    true = list(costs.target_ms)[:k_max]
    bad = [true[0]] + [max(t, 1.05 * k * true[0]) for k, t in enumerate(true[1:], 2)]
    _, bad_best = best_predicted(1.0, bad, costs.draft_ms, costs.draft2_ms)
    assert bad_best < 1.0, ("the bad curve must rule the draft out by itself", bad)
    path = cache_dir() / "calibration.json"
    key = calibrate._key(pair.target, pair.draft, k_max)
    table = calibrate._read_table(path, lambda s: None)
    table[key] = {**calibrate.asdict(costs), "target_ms": bad, "how": "written by a test: a busy machine's curve"}
    calibrate._write_table(path, table)

    notes: list[str] = []
    pair.target.reset()
    pair.draft.reset()
    strategy = build_strategy(pair, ModelChoice(drafter="model"), None, notify=notes.append)
    res = Engine(pair.target, strategy=strategy).generate(toks, GenerateOptions(max_tokens=N))
    why = (a, predicted, true, bad, notes, dict(strategy.rounds), strategy.describe())
    assert_same_or_near_tie(pair.target, toks, reference, res.tokens)
    rounds = sum(strategy.rounds.values())
    assert rounds > 0 and strategy.rounds["model"] / rounds > 0.5, why
    assert calibrate._read_table(path, lambda s: None).get(key, {}).get("target_ms") != bad, (
        "the bad curve stays in the cache",
        why,
    )
