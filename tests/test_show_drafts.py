"""Which text came from accepted drafts: the stream's origins, `--show-drafts`, and --json's "origins"."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
from typer.testing import CliRunner

from spec_cli.cli import app
from spec_cli.decode import DRAFT, TARGET, Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.strategy import FixedStrategy
from spec_cli.textstream import TextStream
from tests.fakes import FakeModel, table_lm

V = 16
CYCLE = {i: (i + 1) % V for i in range(V)}


def test_each_round_emits_its_accepted_drafts_then_the_targets_own_token():
    target = FakeModel(table_lm(CYCLE, V), V)
    draft = FakeModel(table_lm(CYCLE, V), V)  # always right: every draft is accepted
    spans = []
    res = Engine(target, FixedStrategy(ModelDrafter(draft), 3)).generate(
        [1], GenerateOptions(max_tokens=8, draft_len=3), on_span=lambda t, o: spans.append((t, o))
    )
    assert res.origins == [DRAFT, DRAFT, DRAFT, TARGET] * 2
    assert "".join(t for t, _ in spans) == res.text
    # runs of one origin carry each token's text with it
    runs = []
    for text, origin in spans:
        if runs and runs[-1][1] == origin:
            runs[-1] = (runs[-1][0] + text, origin)
        else:
            runs.append((text, origin))
    assert runs == [("<2><3><4>", DRAFT), ("<5>", TARGET), ("<6><7><8>", DRAFT), ("<9>", TARGET)]


def test_a_draft_that_is_always_wrong_leaves_only_target_tokens():
    target = FakeModel(table_lm(CYCLE, V), V)
    draft = FakeModel(table_lm({i: (i + 5) % V for i in range(V)}, V), V)
    res = Engine(target, FixedStrategy(ModelDrafter(draft), 3)).generate([1], GenerateOptions(max_tokens=6, draft_len=3))
    assert res.stats.drafted > 0 and res.stats.accepted == 0
    assert res.origins == [TARGET] * 6


def test_stream_spans_follow_characters_across_split_bytes_and_held_back_stops():
    s = TextStream(stop=["END"])
    e_acute = "é".encode()
    out = [s.feed(b"ab", "d"), s.feed(e_acute[:1], "d"), s.feed(e_acute[1:] + b"c", "t")]
    assert "".join(out) == "abéc"
    assert s.last_spans == [("éc", "t")]  # a character belongs to the token that completed it
    assert s.feed(b"E", "d") == "" and s.last_spans == []  # could be the start of END: held back
    assert s.feed(b"x", "t") == "Ex" and s.last_spans == [("E", "d"), ("x", "t")]
    assert s.feed(b"EN", "d") == "" and s.feed(b"D!", "t") == "" and s.stopped


runner = CliRunner()
# a short run whose drafts the target accepts in part: a list continues predictably
RUN_ARGS = ["-n", "24", "--ctx", "512", "--draft-len", "3", "--drafter", "model", "Here is a list of fruits:\n1. Apple\n2."]


def test_json_carries_one_origin_per_token_and_show_drafts_leaves_pipes_alone(gemma_q2k_path):
    args = ["run", *RUN_ARGS]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    origins = payload["origins"]
    assert len(origins) == len(payload["tokens"]) and set(origins) <= {DRAFT, TARGET}
    assert 0 < origins.count(DRAFT) <= payload["stats"]["accepted"]
    # CliRunner's stdout is not a terminal: the text is the same with and without colouring
    plain = runner.invoke(app, args)
    shown = runner.invoke(app, [*args, "--show-drafts"])
    assert plain.exit_code == 0 and shown.exit_code == 0
    assert shown.stdout == plain.stdout
    assert "\x1b[" not in shown.stdout
    assert payload["text"] in plain.stdout


def test_show_drafts_colours_accepted_drafts_on_a_terminal(gemma_q2k_path):
    pexpect = pytest.importorskip("pexpect")
    args = ["-m", "spec_cli", "run", *RUN_ARGS]
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)

    def tty_output(*extra):
        child = pexpect.spawn(sys.executable, [*args, *extra], env=env, encoding="utf-8", timeout=240, dimensions=(50, 200))
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        return child.before

    # green runs of generated text (the loading spinner is green too, but braille)
    green_text = re.compile("\x1b\\[32m([^\x1b\u2800-\u28ff]*[A-Za-z0-9][^\x1b]*)\x1b\\[0m")
    shown = tty_output("--show-drafts")
    assert "accepted drafts" in shown  # the legend, whose own colour sample must not count below
    text_lines = "\n".join(line for line in shown.splitlines() if "accepted drafts" not in line)
    assert green_text.search(text_lines), shown
    assert not green_text.search(tty_output())
