"""TurnEngine on the real chat pair (SmolLM2-135M-Instruct and its Q2_K copy), in process.

One thread per model: on a shared 2-core machine two llama.cpp threads that have to
wait for a core run ten times slower than one (29 against 2.7 tokens/s, measured).
"""

from __future__ import annotations

import pytest

from spec_cli.decode import GenerateOptions
from spec_cli.errors import SpecError
from spec_cli.sampling import SamplingParams
from tests.neartie import assert_same_or_near_tie

TIE = 0.3  # logits; the bound for a greedy divergence that is a near-tie, not a bug
QUESTIONS = ["Hi! Who are you?", "Write a haiku about the sea.", "What is 12 times 7?"]


@pytest.fixture(scope="module")
def smol(smollm2_path):
    from spec_cli.llama import Model

    m = Model(smollm2_path, n_ctx=1024, n_threads=1, label="target")
    yield m
    m.close()


@pytest.fixture(scope="module")
def smol_draft(smollm2_q2k_path):
    from spec_cli.llama import Model

    m = Model(smollm2_q2k_path, n_ctx=1024, n_threads=1, label="draft")
    yield m
    m.close()


def session(target, draft, draft_len, **opts):
    from spec_cli.turns import TurnEngine

    target.reset()
    if draft is not None:
        draft.reset()
    return TurnEngine(target, draft, GenerateOptions(**opts), draft_len=draft_len)


def with_eog(r, eos):
    # The engine leaves the end-of-turn token out of the reply; put it back so that
    # "stopped here" and "went on with X" compare as two different tokens.
    return r.tokens + ([eos] if r.stats.stop_reason == "eos" else [])


def test_greedy_speculative_chat_matches_target_only(smol, smol_draft):
    spec_turns = [t for t in run_conversation(session(smol, smol_draft, max_tokens=32, draft_len=4))]
    assert sum(r.stats.drafted for r in spec_turns) > 0
    base_turns = run_conversation(session(smol, None, max_tokens=32, draft_len=0))
    eos = smol.vocab_info().eos
    for s, b in zip(spec_turns, base_turns):
        assert s.prompt == b.prompt  # equal so far, so both saw the same conversation
        ref, cand = with_eog(b, eos), with_eog(s, eos)
        if ref != cand:
            # the histories part here; later turns no longer answer the same conversation
            assert_same_or_near_tie(smol, b.prompt, ref, cand, tol=TIE)
            break


def run_conversation(s):
    return [s.reply(q) for q in QUESTIONS]


@pytest.mark.parametrize(
    "sampling",
    [
        {},
        # Sampled replies are often not the canonical tokenization of their own text, so
        # re-tokenizing the history would change ids inside it (seen with this seed).
        {"sampling": SamplingParams(temperature=1.5, top_k=0), "seed": 2},
    ],
    ids=["greedy", "sampled"],
)
def test_turns_after_the_first_evaluate_only_their_new_tokens(smol, smol_draft, sampling):
    s = session(smol, smol_draft, max_tokens=24, draft_len=4, **sampling)
    first = s.reply(QUESTIONS[0])
    assert first.evaluated == first.prompt_tokens - 1
    for q in QUESTIONS[1:]:
        before = list(s.target.tokens)
        # The draft evaluates lazily, in its next round: after a round that accepted every
        # draft it lacks its last draft, and a last round with no room to draft (the token
        # budget's final token) adds the target's token it never saw. So it may trail the
        # target's cache by up to two tokens when the turn ends, which of the two depending
        # on where this machine's numerics put the acceptances.
        # (It may also hold more than the target: a reply that stopped inside an accepted
        # run leaves the draft's copy of the last drafts, which the next prompt can reuse.)
        draft_before = list(s.draft.tokens)
        lag = len(before) - common_prefix(draft_before, before)
        assert 0 <= lag <= 2
        r = s.reply(q)
        # the new prompt extends exactly what the target cache held after the last turn
        assert r.prompt[: len(before)] == before
        assert r.evaluated == r.prompt_tokens - 1 - len(before)
        assert 0 < r.evaluated < 30
        # and the draft evaluates exactly what its cache lacked of the new prompt: the same new
        # tokens plus at most what it trailed by
        assert r.draft_evaluated == r.prompt_tokens - 1 - common_prefix(draft_before, r.prompt[:-1])
        assert r.draft_evaluated <= r.evaluated + lag


def test_outgrowing_the_context_drops_oldest_turns_and_keeps_the_caches_whole(smollm2_path, smollm2_q2k_path):
    from spec_cli.llama import Model
    from spec_cli.turns import TurnEngine

    with (
        Model(smollm2_path, n_ctx=256, n_threads=1, label="target") as t,
        Model(smollm2_q2k_path, n_ctx=256, n_threads=1, label="draft") as d,
    ):
        s = TurnEngine(t, d, GenerateOptions(max_tokens=24), draft_len=3, system="Answer in one short sentence.")
        dropped = 0
        # llama.cpp rounds a context up to 256 tokens; questions of ~50 tokens fill it in a few turns
        filler = "I am asking a few short questions to see how you answer them. " * 4
        for q in [filler + f"Name a {thing}." for thing in ("colour", "fruit", "animal", "country", "city", "tree")]:
            r = s.reply(q)
            dropped += r.dropped
            assert r.prompt_tokens + s.reply_room <= t.n_ctx
            # the cache holds the prompt and the reply but the reply's last token (fed next round)
            assert t.tokens == (r.prompt + r.tokens)[:-1]
            assert s.conversation.messages[-2]["content"] == q
        assert dropped > 0
        assert s.conversation.system == "Answer in one short sentence."
        assert filler + "Name a colour." not in [m["content"] for m in s.conversation.messages]
        text = s.render(s.conversation.for_template())
        assert text.startswith("<|im_start|>system\nAnswer in one short sentence.")

        with pytest.raises(SpecError, match="does not fit"):
            s.reply("word " * 400)
        r = s.reply("Name a planet.")  # the session survives the refusal
        assert r.stats.generated > 0


def test_two_turns_under_auto_evaluate_only_their_new_tokens(smol, smol_draft, smollm2_path, smollm2_q2k_path):
    """`spec chat`'s default: the strategy `spec run` builds for --drafter auto --draft-len auto,
    one for the whole chat. The target reads only the new turn; the draft, where auto keeps it,
    reads only what its cache lacks (auto may have left it out of some rounds, so it can trail
    the target by more than a fixed-length draft would)."""
    from spec_cli.cli.setup import Models
    from spec_cli.loading import LoadedPair, ModelChoice
    from spec_cli.strategy import AdaptiveStrategy
    from spec_cli.turns import TurnEngine

    smol.reset()
    smol_draft.reset()
    pair = LoadedPair(smol, smol_draft, smollm2_path, smollm2_q2k_path)
    s = TurnEngine(
        smol, smol_draft, GenerateOptions(max_tokens=24), draft_len=None, strategy_for=Models(pair, ModelChoice()).strategy
    )
    strategy = s.strategy
    assert isinstance(strategy, AdaptiveStrategy)
    first = s.reply(QUESTIONS[0])
    assert first.evaluated == first.prompt_tokens - 1
    before, draft_before = list(smol.tokens), list(smol_draft.tokens)
    second = s.reply(QUESTIONS[1])
    assert s.strategy is strategy
    assert second.prompt[: len(before)] == before
    assert second.evaluated == second.prompt_tokens - 1 - len(before)
    assert 0 < second.evaluated < 30
    if second.draft_evaluated is not None:  # auto kept the draft model
        assert second.draft_evaluated == second.prompt_tokens - 1 - common_prefix(draft_before, second.prompt[:-1])
        assert second.draft_evaluated <= second.prompt_tokens - first.prompt_tokens  # the new turn and the reply, at most
    else:
        assert not any(not src.free for src in strategy.sources)  # only where auto left it out


def test_reset_forgets_the_turns_but_reuses_the_cached_system_prompt(smol, smol_draft):
    s = session(smol, smol_draft, max_tokens=16, draft_len=4)
    first = s.reply(QUESTIONS[0])
    s.reply(QUESTIONS[1])
    s.reset()
    again = s.reply(QUESTIONS[0])
    assert again.prompt == first.prompt
    assert again.evaluated == 0  # that very prompt is still the start of the cache


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
