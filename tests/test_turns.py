"""turns.py's TurnEngine on stand-in models: prompt building, the strategy across turns, /draft-len."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_conversation import CHATML, STRICT, msgs

# --- where the BOS token comes from (a character-level stand-in) ----------------------


class CharModel:
    """Just enough of spec_cli.llama.Model for TurnEngine's prompt building: one token per character."""

    BOS, EOS = 1, 2

    def __init__(self, template, add_bos=True):
        from spec_cli.llama import VocabInfo

        self._template = template
        self._info = VocabInfo(kind=1, n_vocab=300, bos=self.BOS, eos=self.EOS, add_bos=add_bos)
        self.n_vocab, self.n_ctx, self.tokens = 300, 4096, []

    def vocab_info(self):
        return self._info

    def chat_template(self):
        return self._template

    def token_text(self, t):
        return {self.BOS: b"<s>", self.EOS: b"</s>"}.get(t, bytes([t]))

    def tokenize(self, text, add_bos=True, special=False):
        out = [self.BOS] if add_bos else []
        while text:
            if special and text.startswith("<s>"):
                out.append(self.BOS)
                text = text[3:]
            else:
                out.append(ord(text[0]) % 256 + 3)
                text = text[1:]
        return out


@pytest.mark.parametrize(
    "template, add_bos, bos_count",
    [
        (STRICT, True, 1),  # the template writes BOS: tokenizing must not add a second one
        (CHATML, True, 1),  # it does not, and the model wants one: add it
        (CHATML, False, 0),  # SmolLM2's case: no BOS at all
        (None, True, 1),  # the fallback transcript
    ],
)
def test_prompt_has_exactly_the_bos_the_model_wants(template, add_bos, bos_count):
    from spec_cli.decode import GenerateOptions
    from spec_cli.turns import TurnEngine

    s = TurnEngine(CharModel(template, add_bos), None, GenerateOptions())
    tokens = s.tokenize_prompt(s.render(s.conversation.for_template(msgs(("user", "hi")))))
    assert tokens.count(CharModel.BOS) == bos_count
    assert (tokens[0] == CharModel.BOS) == (bos_count == 1)


def test_the_turn_engine_leaves_the_callers_options_alone():
    from spec_cli.conversation import FALLBACK_STOP
    from spec_cli.decode import GenerateOptions
    from spec_cli.turns import TurnEngine

    opts = GenerateOptions(draft_len=3, stop=("END",))
    s = TurnEngine(CharModel(None), None, opts)  # a base model: the transcript's stop string joins
    s.set_temperature(0.7)
    s.set_draft_len(5)
    assert s.opts.stop == ("END", *FALLBACK_STOP) and s.opts.sampling.temperature == 0.7
    assert opts.stop == ("END",) and opts.draft_len == 3 and opts.sampling.temperature == 0.0


# --- the strategy across turns (scripted models) ------------------------------------------

V = 256
# The replies cycle through tokens 240..248; whatever the prompt, the first reply token is 240.
CYCLE = {240 + i: 240 + (i + 1) % 9 for i in range(9)}
# Scripted seconds per pass of n tokens: tests/test_strategy.py's stand-in target, and a draft at
# 17 ms a token, which pays where its drafts land.
from tests.test_strategy import STANDIN_MS, draft_cost, standin_target_cost  # noqa: E402


def chat_fake(cost):
    """tests/fakes.FakeModel with what TurnEngine asks of a model: a ChatML template, one token a character."""
    from spec_cli.llama import VocabInfo
    from tests.fakes import FakeModel, table_lm

    class ChatFake(FakeModel):
        path = Path("fake.gguf")

        def vocab_info(self):
            return VocabInfo(kind=1, n_vocab=V, bos=1, eos=2, add_bos=False)

        def chat_template(self):
            return CHATML

        def token_text(self, t):
            return self.piece(t)

        def tokenize(self, text, add_bos=True, special=False):
            return [ord(c) % 200 + 10 for c in text]

        def detokenize(self, tokens):
            return b"".join(self.piece(t) for t in tokens).decode()

    return ChatFake(table_lm(CYCLE, V, default=240), V, n_ctx=2048, cost=cost)


def auto_strategy(draft):
    """What build_strategy makes of --drafter auto: the n-gram lookup and the draft model, each with a controller."""
    from spec_cli.adaptive import AdaptiveDraftLength
    from spec_cli.drafters import ModelDrafter
    from spec_cli.drafters.ngram import NgramDrafter
    from spec_cli.strategy import AdaptiveStrategy

    cost = [standin_target_cost(k) for k in range(1, 10)]
    ngram_ctl = AdaptiveDraftLength(cost, 0.0, g_max=8, probe_every=0, prior_weight=4.0)
    model_ctl = AdaptiveDraftLength(cost, 0.017, g_max=8, prior=0.7)
    strat = AdaptiveStrategy([(NgramDrafter(4, 2), ngram_ctl, True), (ModelDrafter(draft), model_ctl, False)])
    return strat, ngram_ctl, model_ctl


def test_auto_carries_what_it_learnt_from_one_turn_to_the_next():
    from spec_cli.decode import GenerateOptions
    from spec_cli.turns import TurnEngine

    target, draft = chat_fake(standin_target_cost), chat_fake(draft_cost)
    strat, ngram_ctl, model_ctl = auto_strategy(draft)
    asked = []

    def strategy_for(draft_len):
        asked.append(draft_len)
        return strat if draft_len is None else None

    def state():
        return (
            ngram_ctl.acceptance, dict(ngram_ctl.counts), ngram_ctl.measured_speedup(),
            model_ctl.acceptance, dict(model_ctl.counts), model_ctl.draft_step, sum(strat.rounds.values()),
        )  # fmt: skip

    # Where each turn starts: the engine prepares the strategy once per turn, before its first round.
    starts = []
    prepare = strat.prepare

    def spy(tokens):
        starts.append(state())
        return prepare(tokens)

    strat.prepare = spy
    s = TurnEngine(target, draft, GenerateOptions(max_tokens=40), draft_len=None, strategy_for=strategy_for)
    assert s.draft_len is None and s.draft_len_text == "auto"
    first = s.reply("Count with me.")
    after_first = state()
    second = s.reply("Again, please.")

    assert asked == [None]  # one strategy for the whole chat, built at its start
    assert s.strategy is strat and len(starts) == 2  # and prepared once a turn, by the engine
    assert starts[0] != after_first  # the first turn taught it something
    assert starts[1] == after_first  # and the second started from exactly that: nothing was reset
    assert sum(strat.rounds.values()) == first.stats.target_passes + second.stats.target_passes
    assert first.stats.drafted and second.stats.drafted
    # The caches carry over too: the second turn evaluates only its new tokens.
    assert second.evaluated == second.prompt_tokens - first.prompt_tokens - len(first.tokens)
    assert first.draft_evaluated == first.prompt_tokens - 1
    assert second.draft_evaluated is not None and second.draft_evaluated <= second.prompt_tokens - first.prompt_tokens


def test_draft_len_keeps_the_drafter_and_auto_measures_its_costs_once(monkeypatch, capsys):
    """/draft-len 3 drafts with what --drafter chose at a fixed length; /draft-len auto goes back to
    the very strategy that was learning; the cost curve is read once for the whole chat."""
    from spec_cli import calibrate
    from spec_cli.cli.chat import Repl
    from spec_cli.cli.setup import Models
    from spec_cli.decode import GenerateOptions
    from spec_cli.loading import LoadedPair, ModelChoice
    from spec_cli.strategy import AdaptiveStrategy, FixedStrategy
    from spec_cli.turns import TurnEngine

    measured = []

    def cached_costs(target, draft, max_k, notify=lambda s: None):
        measured.append(draft)
        return calibrate.CostCurve([STANDIN_MS[k] for k in range(1, max_k + 1)], 17.0, 34.0)

    monkeypatch.setattr(calibrate, "cached_costs", cached_costs)
    target, draft = chat_fake(standin_target_cost), chat_fake(draft_cost)
    pair = LoadedPair(target, draft, Path("t.gguf"), Path("d.gguf"))
    expect = {"auto": "ngram+model", "model": "model", "ngram": "ngram"}
    for drafter, fixed_name in expect.items():
        measured.clear()
        models = Models(pair, ModelChoice(drafter=drafter))
        asked = []

        def strategy_for(draft_len):
            asked.append(draft_len)
            return models.strategy(draft_len)

        s = TurnEngine(target, draft, GenerateOptions(max_tokens=12), draft_len=None, strategy_for=strategy_for)
        engine, auto = s.engine, s.strategy
        assert isinstance(auto, AdaptiveStrategy) and engine.strategy is auto
        s.reply("Count with me.")
        learnt = sum(auto.rounds.values())
        repl = Repl(s, "test")
        repl._command("/draft-len 3")
        assert isinstance(s.strategy, FixedStrategy) and s.strategy.draft_len == 3
        assert s.strategy.name == fixed_name, drafter
        assert "draft length 3, drafting with " + fixed_name in capsys.readouterr().err
        s.reply("Again.")
        repl._command("/draft-len auto")
        assert s.strategy is auto and sum(auto.rounds.values()) == learnt  # back where it was left
        repl._command("/stats")
        assert "draft length auto, drafting with auto(" in capsys.readouterr().err
        repl._command("/draft-len 0")
        assert s.strategy is None and s.engine.strategy is None
        assert "draft length 0 (target alone)" in capsys.readouterr().err
        assert s.reply("Once more.").draft_evaluated is None
        repl._command("/draft-len auto")
        assert s.strategy is auto
        assert asked == [None, 3, 0]  # each length built once, and kept
        assert s.engine is engine  # one engine for the whole chat: /draft-len changes its strategy
        assert len(measured) == 1  # the curve, once
        assert (measured[0] is None) == (drafter == "ngram")  # the lookup alone needs no draft costs


def test_draft_len_refused_under_no_spec_changes_nothing(capsys):
    from spec_cli.cli.chat import Repl
    from spec_cli.cli.setup import Models
    from spec_cli.decode import GenerateOptions
    from spec_cli.loading import LoadedPair, ModelChoice
    from spec_cli.turns import TurnEngine

    target = chat_fake(standin_target_cost)
    models = Models(LoadedPair(target, None, Path("t.gguf"), None), ModelChoice(no_spec=True))
    s = TurnEngine(target, None, GenerateOptions(), draft_len=0, strategy_for=models.strategy)
    for line in ("/draft-len 3", "/draft-len auto"):
        Repl(s, "test")._command(line)
        assert "no draft model is loaded (--no-spec)" in capsys.readouterr().err
        assert s.strategy is None and s.draft_len == 0
