"""`spec chat` as a person uses it: a real process in a pseudo-terminal, with the real chat pair.

Each test starts `python -m spec_cli chat` under pexpect with one thread per model (on a
shared 2-core machine that is ten times faster than two contending threads) and a
small --max-tokens, and reads the per-turn stats line the REPL prints:
"turn N · evaluated E of P prompt tokens (draft D) · G tokens at ...".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

pexpect = pytest.importorskip("pexpect")

TIMEOUT = 120
PROMPT = ">>> "
TURN = re.compile(
    r"turn (?P<n>\d+) · evaluated (?P<evaluated>\d+) of (?P<prompt>\d+) prompt tokens"
    r"(?: \(draft (?P<draft>\d+)\))? · (?P<generated>\d+) tokens at"
)


@dataclass
class Turn:
    n: int
    evaluated: int
    prompt: int
    draft: int | None
    generated: int
    output: str  # everything printed from the echoed message to the stats line


@pytest.fixture
def chat(smollm2_path, smollm2_q2k_path, tmp_path):
    """Start `spec chat` on the default chat preset; yields a function taking extra arguments."""
    children = []

    def start(*args: str, max_tokens: int = 24):
        env = dict(os.environ, SPEC_WIDTH="200", COLUMNS="200", TERM="dumb")
        argv = ["-m", "spec_cli", "chat", "--threads", "1", "--ctx", "1024", "-n", str(max_tokens), *args]
        child = pexpect.spawn(
            sys.executable, argv, env=env, cwd=str(tmp_path), encoding="utf-8", timeout=TIMEOUT, dimensions=(50, 200)
        )
        children.append(child)
        child.expect_exact(PROMPT)
        return child

    yield start
    for child in children:
        if child.isalive():
            child.terminate(force=True)


def turn(child, text: str) -> Turn:
    child.sendline(text)
    child.expect(TURN)
    m = child.match
    t = Turn(
        n=int(m["n"]),
        evaluated=int(m["evaluated"]),
        prompt=int(m["prompt"]),
        draft=int(m["draft"]) if m["draft"] else None,
        generated=int(m["generated"]),
        output=child.before.replace("\r\n", "\n"),
    )
    child.expect_exact(PROMPT)
    return t


def command(child, text: str) -> str:
    child.sendline(text)
    child.expect_exact(PROMPT)
    return child.before.replace("\r\n", "\n")


def exits_cleanly(child) -> None:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "Traceback" not in child.before


def test_second_turn_evaluates_only_its_new_tokens(chat):
    c = chat("--draft-len", "4", "--drafter", "model")  # the draft model in every round
    first = turn(c, "Hi! Who are you?")
    assert first.n == 1 and first.generated > 0
    assert first.evaluated == first.prompt - 1  # a fresh cache: all but the last token, which the first round feeds
    second = turn(c, "What can you help me with?")
    # The caches hold the first prompt and reply but the reply's last token; that token and
    # the new message are all that the second turn evaluates, in the target and in the draft.
    new = second.prompt - first.prompt - first.generated
    assert second.evaluated == new
    assert 0 < new < 30
    assert second.draft is not None and second.draft <= new + 1
    c.sendeof()  # Ctrl-D quits
    exits_cleanly(c)


def test_the_default_is_auto_and_draft_len_keeps_the_drafter(chat):
    c = chat()
    assert "draft length auto, drafting with auto(" in command(c, "/stats")
    first = turn(c, "Hi! Who are you?")
    assert first.evaluated == first.prompt - 1
    second = turn(c, "What can you help me with?")
    # auto, like a fixed length, leaves the caches whole between turns: the target reads only the new
    # tokens, and the draft (where auto kept it) at most those and the reply it may have sat out
    new = second.prompt - first.prompt - first.generated
    assert second.evaluated == new and 0 < new < 30
    assert second.draft is None or second.draft <= new + first.generated
    # a fixed length with the drafters auto chose from, then auto again
    assert "draft length 3, drafting with ngram+model" in command(c, "/draft-len 3")
    third = turn(c, "Name three colours.")
    assert third.evaluated == third.prompt - second.prompt - second.generated
    assert "draft length auto, drafting with auto(" in command(c, "/draft-len auto")
    assert "draft length auto" in command(c, "/stats")
    c.sendline("/exit")
    exits_cleanly(c)


def test_ctrl_c_stops_a_reply_and_the_conversation_goes_on(chat, tmp_path):
    c = chat(max_tokens=64)
    c.sendline("Tell me a long story about a dragon.")
    c.expect_exact("dragon.\r\n")  # the echo of the message
    c.expect(r"\w+\W+\w+\W+\w+")  # a few words of the reply
    c.sendintr()
    c.expect_exact("stopped; the partial reply stays in the conversation")
    c.expect(TURN)
    stopped = int(c.match["generated"]), int(c.match["prompt"])
    assert 0 < stopped[0] < 64
    c.expect_exact(PROMPT)

    # the partial reply is part of the conversation, as the REPL says
    command(c, "/save partial.json")
    saved = json.loads((tmp_path / "partial.json").read_text(encoding="utf-8"))
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
    assert saved["messages"][1]["content"].strip()

    after = turn(c, "Give the dragon a name.")
    assert after.generated > 0
    # both caches were left consistent: only the new tokens are evaluated
    assert after.evaluated == after.prompt - stopped[1] - stopped[0]
    assert after.evaluated < 30
    c.sendintr()  # Ctrl-C at an empty prompt quits
    exits_cleanly(c)


def test_reset_forgets_the_conversation(chat):
    c = chat()
    first = turn(c, "Hi! Who are you?")
    second = turn(c, "Name three colours.")
    assert second.prompt > first.prompt
    assert "conversation cleared" in command(c, "/reset")
    again = turn(c, "Hi! Who are you?")
    assert again.prompt == first.prompt  # nothing of the earlier turns is in the prompt
    assert again.evaluated == 0  # and that prompt is still at the start of the cache
    c.sendline("/exit")
    exits_cleanly(c)


def test_save_then_load_round_trip(chat, tmp_path):
    c = chat("--system", "You answer briefly.")
    first = turn(c, "Hi! Who are you?")
    assert "saved 2 messages" in command(c, "/save one.json")
    command(c, "/reset")
    out = command(c, "/load one.json")
    assert "loaded 2 messages and a system prompt" in out
    command(c, "/save two.json")
    one = json.loads((tmp_path / "one.json").read_text(encoding="utf-8"))
    assert json.loads((tmp_path / "two.json").read_text(encoding="utf-8")) == one
    assert one["system"] == "You answer briefly."
    assert one["messages"][0] == {"role": "user", "content": "Hi! Who are you?"}

    # the loaded conversation is what the model sees next
    nxt = turn(c, "And what can you do?")
    assert nxt.prompt > first.prompt + first.generated

    # a missing or malformed file is one error line and the session lives on
    assert "error: cannot read" in command(c, "/load missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    assert "error:" in command(c, "/load bad.json") and "not valid JSON" in c.before
    assert "messages" in command(c, "/stats")
    c.sendline("/exit")
    exits_cleanly(c)


def test_bad_commands_print_help_and_no_spec_runs_the_target_alone(chat):
    c = chat("--no-spec")
    out = command(c, "/frobnicate")
    assert "error: unknown command /frobnicate" in out
    assert "/draft-len N" in out and "/save FILE" in out  # the help follows the error
    assert "error:" in command(c, "/temp hot")
    assert "no draft model is loaded" in command(c, "/draft-len 3")
    # Ctrl-C on a half-typed line discards the line, not the session
    c.send("half a thought")
    c.expect_exact("half a thought")
    c.sendintr()
    c.expect_exact(PROMPT)
    # a message over several lines, in triple quotes
    c.sendline('"""Say hello')
    c.expect_exact("... ")
    t = turn(c, 'in French."""')
    assert t.draft is None and "accepted" not in c.before
    assert t.generated > 0
    c.sendline("/quit")
    exits_cleanly(c)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ctx", "4"], "--ctx must be at least"),
        (["--draft-len", "99"], "--draft-len must be between"),
        (["--target", "no/such/model.gguf", "--no-spec"], "model file not found"),
        # (under the default --drafter auto a target without a draft drafts with the n-gram lookup)
        (["--target", "no/such/model.gguf", "--drafter", "model"], "no draft model"),
        (["--preset", "nope"], "unknown preset 'nope'"),
    ],
)
def test_bad_start_up_options_give_one_line_and_a_non_zero_exit(args, message):
    r = subprocess.run(
        [sys.executable, "-m", "spec_cli", "chat", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ, SPEC_WIDTH="200"),
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
