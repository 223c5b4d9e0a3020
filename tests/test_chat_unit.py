"""The model-free parts of `spec chat`: templates, commands, multi-line input, history, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spec_cli.conversation import (
    ChatTemplate,
    Conversation,
    InputAssembler,
    drop_oldest_turn,
    fit_history,
    help_text,
    parse_command,
)
from spec_cli.errors import SpecError

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Shaped like Gemma's: it writes BOS itself and refuses a conversation whose roles do not alternate.
STRICT = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<turn>{{ m['role'] }}\n{{ m['content'] | trim }}<end>\n{% endfor %}"
    "{% if add_generation_prompt %}<turn>model\n{% endif %}"
)


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# --- templates -------------------------------------------------------------------


def test_chatml_renders_with_generation_prompt():
    t = ChatTemplate(CHATML, "<s>", "</s>")
    text = t.render(msgs(("system", "Be brief."), ("user", "Hi")))
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert not t.render(msgs(("user", "Hi")), add_generation_prompt=False).endswith("assistant\n")
    assert not t.fallback and t.stop == ()


def test_template_sees_bos_token_and_its_exception_becomes_a_user_error():
    t = ChatTemplate(STRICT, "<bos>", "<eos>")
    assert t.render(msgs(("user", " Hi "))) == "<bos><turn>user\nHi<end>\n<turn>model\n"
    with pytest.raises(SpecError, match="roles must alternate"):
        t.render(msgs(("user", "a"), ("user", "b")))


def test_template_runs_sandboxed():
    t = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(SpecError, match="failed to render"):
        t.render(msgs(("user", "x")))


def test_broken_template_is_a_user_error():
    with pytest.raises(SpecError, match="not valid Jinja"):
        ChatTemplate("{% for m in messages %}")


def test_missing_template_falls_back_to_a_transcript_with_a_stop_string():
    t = ChatTemplate(None, "<bos>", "<eos>")
    assert t.fallback and t.stop == ("\nUser:",)
    text = t.render(msgs(("system", "Be kind."), ("user", "Hi"), ("assistant", " Hello! "), ("user", "Bye")))
    assert text == "Be kind.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Bye\n\nAssistant:"


def test_generation_tags_and_tojson_work_as_in_transformers():
    t = ChatTemplate("{% generation %}{{ messages[0] | tojson }}{% endgeneration %}")
    assert t.render(msgs(("user", "é"))) == '{"role": "user", "content": "é"}'


# --- conversation, save and load ----------------------------------------------------


def test_for_template_puts_the_system_prompt_first():
    c = Conversation(system="sys", messages=msgs(("user", "a"), ("assistant", "b")))
    assert [m["role"] for m in c.for_template(msgs(("user", "c")))] == ["system", "user", "assistant", "user"]
    assert [m["role"] for m in Conversation(messages=msgs(("user", "a"))).for_template()] == ["user"]


def test_save_then_load_round_trip(tmp_path):
    c = Conversation(system="Be brief [really].", messages=msgs(("user", "Hi\nthere"), ("assistant", "Hello ✓")))
    path = c.save(tmp_path / "chat.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "spec-chat" and data["version"] == 1
    back = Conversation.load(path)
    assert back == c
    assert not list(tmp_path.glob("*.tmp*"))


def test_load_accepts_a_plain_message_list_with_a_system_message(tmp_path):
    p = tmp_path / "openai.json"
    p.write_text(json.dumps(msgs(("system", "S"), ("user", "u"), ("assistant", "a"))))
    c = Conversation.load(p)
    assert c.system == "S" and c.messages == msgs(("user", "u"), ("assistant", "a"))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read"),
        ("{not json", "not valid JSON"),
        ('{"messages": "no"}', "not a saved chat"),
        ('{"messages": [{"role": "tool", "content": "x"}]}', "role 'tool'"),
        ('{"messages": [{"role": "user"}]}', "needs a string 'content'"),
        ('{"format": "other", "messages": []}', "not a saved chat"),
        ('{"version": 99, "messages": []}', "newer"),
    ],
)
def test_load_rejects_bad_files_with_one_line(tmp_path, content, message):
    p = tmp_path / "bad.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(SpecError, match=message) as e:
        Conversation.load(p)
    assert "\n" not in str(e.value)


def test_save_to_a_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(SpecError, match="cannot write"):
        Conversation(messages=msgs(("user", "a"))).save(tmp_path / "no" / "such" / "dir.json")


# --- fitting into the context -------------------------------------------------------


def test_drop_oldest_turn_drops_a_user_message_with_its_replies():
    m = msgs(("user", "1"), ("assistant", "1a"), ("user", "2"), ("assistant", "2a"), ("user", "3"))
    assert drop_oldest_turn(m) == 2
    assert [x["content"] for x in m] == ["2", "2a", "3"]
    last = msgs(("user", "only"))
    assert drop_oldest_turn(last) == 0 and len(last) == 1


def test_fit_history_drops_just_enough_turns():
    m = msgs(("user", "aaaa"), ("assistant", "bbbb"), ("user", "cc"), ("assistant", "dd"), ("user", "e"))

    def count(ms):
        return sum(len(x["content"]) for x in ms)

    assert fit_history(m, count, limit=5) == 2
    assert [x["content"] for x in m] == ["cc", "dd", "e"]
    assert fit_history(m, count, limit=5) == 0


def test_fit_history_refuses_a_message_that_never_fits():
    m = msgs(("user", "old"), ("assistant", "x"), ("user", "far too long"))
    with pytest.raises(SpecError, match="does not fit"):
        fit_history(m, lambda ms: sum(len(x["content"]) for x in ms), limit=4)


# --- multi-line input ------------------------------------------------------------------


def test_single_line():
    assert InputAssembler().feed("hello") == "hello"


def test_backslash_continues_the_line():
    a = InputAssembler()
    assert a.feed("first \\") is None and a.pending
    assert a.feed("second") == "first \nsecond"
    assert not a.pending


def test_triple_quotes_make_a_block():
    a = InputAssembler()
    assert a.feed('"""') is None
    assert a.feed("line one\\") is None  # a backslash inside a block is text
    assert a.feed("") is None
    assert a.feed('line three"""') == "line one\\\n\nline three"


def test_triple_quotes_on_one_line_and_cancel():
    a = InputAssembler()
    assert a.feed('"""just this"""') == "just this"
    assert a.feed('"""start') is None
    a.cancel()
    assert not a.pending
    assert a.feed("fresh") == "fresh"


# --- slash commands -----------------------------------------------------------------------


def test_commands_parse():
    assert parse_command("/draft-len 3").value == 3
    assert parse_command("/temp 0.7").value == pytest.approx(0.7)
    assert parse_command("/system Be terse.  ").arg == "Be terse."
    assert parse_command("/system").arg == ""
    assert parse_command("/save my chat.json").arg == "my chat.json"
    assert parse_command("/QUIT").name == "exit"
    assert parse_command("/?").name == "help"


@pytest.mark.parametrize(
    "line, message",
    [
        ("/frobnicate", "unknown command /frobnicate"),
        ("/", "unknown command"),
        ("/draft-len", "needs an argument"),
        ("/draft-len two", "whole number"),
        ("/draft-len 65", "between 0 and 64"),
        ("/temp -1", "0 or more"),
        ("/temp nan", "0 or more"),
        ("/reset now", "takes no argument"),
        ("/load", "needs an argument"),
    ],
)
def test_bad_commands(line, message):
    with pytest.raises(SpecError, match=message):
        parse_command(line)


def test_help_lists_every_command():
    text = help_text()
    for name in ("/help", "/stats", "/reset", "/system", "/draft-len", "/temp", "/save", "/load", "/exit"):
        assert name in text


# --- where the BOS token comes from (ChatSession on a character-level stand-in) ----------


class CharModel:
    """Just enough of spec_cli.llama.Model for ChatSession's prompt building: one token per character."""

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
    from spec_cli.turns import ChatSession
    from spec_cli.decode import GenerateOptions

    s = ChatSession(CharModel(template, add_bos), None, GenerateOptions())
    tokens = s.tokenize_prompt(s.render(s.conversation.for_template(msgs(("user", "hi")))))
    assert tokens.count(CharModel.BOS) == bos_count
    assert (tokens[0] == CharModel.BOS) == (bos_count == 1)


def test_chat_session_leaves_the_callers_options_alone():
    from spec_cli.conversation import FALLBACK_STOP
    from spec_cli.turns import ChatSession
    from spec_cli.decode import GenerateOptions

    opts = GenerateOptions(draft_len=3, stop=("END",))
    s = ChatSession(CharModel(None), None, opts)  # a base model: the transcript's stop string joins
    assert s.opts.stop == ("END", *FALLBACK_STOP)
    assert opts.stop == ("END",) and opts.draft_len == 3


def test_draft_len_auto_parses():
    assert parse_command("/draft-len auto").value is None
    assert parse_command("/draft-len AUTO").arg == "AUTO"
    assert parse_command("/draft-len 0").value == 0
    assert "/draft-len N|auto" in help_text()


# --- the strategy across turns (ChatSession on scripted models) ---------------------------

V = 256
# The replies cycle through tokens 240..248; whatever the prompt, the first reply token is 240.
CYCLE = {240 + i: 240 + (i + 1) % 9 for i in range(9)}
# Scripted seconds per pass of n tokens: tests/test_strategy.py's stand-in target, and a draft at
# 17 ms a token, which pays where its drafts land.
from tests.test_strategy import STANDIN_MS, draft_cost, standin_target_cost  # noqa: E402


def chat_fake(cost):
    """tests/fakes.FakeModel with what ChatSession asks of a model: a ChatML template, one token a character."""
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
    from spec_cli.turns import ChatSession
    from spec_cli.decode import GenerateOptions

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
    s = ChatSession(target, draft, GenerateOptions(max_tokens=40), strategy_for=strategy_for, auto=True)
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
    from spec_cli.turns import ChatSession
    from spec_cli.cli.chat import Repl, chat_strategies
    from spec_cli.decode import GenerateOptions
    from spec_cli.loading import LoadedPair, ModelChoice
    from spec_cli.strategy import AdaptiveStrategy, FixedStrategy

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
        strategies = chat_strategies(pair, ModelChoice(drafter=drafter))
        s = ChatSession(target, draft, GenerateOptions(max_tokens=12), strategy_for=strategies, auto=True)
        auto = s.strategy
        assert isinstance(auto, AdaptiveStrategy) and s.engine.strategy.strategy is auto
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
        assert len(measured) == 1  # the curve, once: every later build of auto is the kept one
        assert (measured[0] is None) == (drafter == "ngram")  # the lookup alone needs no draft costs


def test_draft_len_refused_under_no_spec_changes_nothing(capsys):
    from spec_cli.turns import ChatSession
    from spec_cli.cli.chat import Repl, chat_strategies
    from spec_cli.decode import GenerateOptions
    from spec_cli.loading import LoadedPair, ModelChoice

    target = chat_fake(standin_target_cost)
    pair = LoadedPair(target, None, Path("t.gguf"), None)
    s = ChatSession(target, None, GenerateOptions(draft_len=0), strategy_for=chat_strategies(pair, ModelChoice(no_spec=True)))
    for line in ("/draft-len 3", "/draft-len auto"):
        Repl(s, "test")._command(line)
        assert "no draft model is loaded (--no-spec)" in capsys.readouterr().err
        assert s.strategy is None and s.draft_len == 0
