"""conversation.py, the model-free part of `spec chat`: templates, commands, multi-line input, saves."""

from __future__ import annotations

import json

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


def test_draft_len_auto_parses():
    assert parse_command("/draft-len auto").value is None
    assert parse_command("/draft-len AUTO").arg == "AUTO"
    assert parse_command("/draft-len 0").value == 0
    assert "/draft-len N|auto" in help_text()
