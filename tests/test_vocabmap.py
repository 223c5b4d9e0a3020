"""The text alignment between two vocabularies, on scripted tokenizers (tests/scripted_vocab.py)."""

from __future__ import annotations

import numpy as np
import pytest

from spec_cli.vocabmap import (
    TextAlignment,
    Vocab,
    is_split_point,
    tokenize_exact,
    utf8_complete,
)
from tests.scripted_vocab import WORD_LIST, ScriptedVocab, draft_vocab, target_vocab


def words(v: ScriptedVocab, ids) -> list[bytes]:
    return [v.piece(t) for t in ids]


def aligned(target: ScriptedVocab, draft: ScriptedVocab, context_text: str | bytes, bos=True):
    m = TextAlignment(target.vocab(), draft.vocab(bos=bos))
    ctx = [target.bos] + target.encode(context_text)
    m.update(ctx)
    return m, ctx


def test_utf8_complete():
    e = "é".encode()  # 2 bytes
    ja = "語".encode()  # 3 bytes
    assert utf8_complete(b"abc") == 3
    assert utf8_complete(b"caf" + e) == 5
    assert utf8_complete(b"caf" + e[:1]) == 3
    assert utf8_complete(ja[:2]) == 0
    assert utf8_complete(b"x" + ja) == 4
    assert utf8_complete("😀".encode()[:3]) == 0
    assert utf8_complete(b"") == 0


@pytest.mark.parametrize(
    "text,s,expected",
    [
        (b"cat sat", 3, True),  # a space after a word
        (b"cat  sat", 4, False),  # a space after a space: runs of spaces split by what ends them
        (b"cat  sat", 3, True),
        (b"a\nb", 2, True),  # a word after a newline
        (b"a\n b", 2, False),
        (b"there", 3, False),  # inside a word
        (b"cat", 3, False),  # the end: what follows is unknown
        (b"cat", 0, True),
    ],
)
def test_split_points(text, s, expected):
    assert is_split_point(text, s) is expected


def test_tokenize_exact_drops_a_sentencepiece_space_prefix_and_refuses_replaced_bytes():
    sp = ScriptedVocab([b" sat", b" on", b" The"], pre_split=False, space_prefix=True)
    # the tokenizer writes "  sat on" and splits off the space it added as a token of its own
    ids, ends = tokenize_exact(sp.vocab(), b" sat on")
    assert words(sp, ids) == [b" sat", b" on"] and ends == [4, 7]
    # a prefix that merges into the first token (" The") cannot be told apart: no result
    assert tokenize_exact(sp.vocab(), b"The") is None

    def replacing(data: bytes) -> list[int]:
        return plain.encode(data.decode("utf-8", errors="replace"))

    plain = target_vocab()
    assert tokenize_exact(Vocab(replacing, plain.piece), b"caf\xc3") is None


def test_proposal_split_into_whole_stable_target_tokens():
    t, d = target_vocab(), draft_vocab()
    m, _ = aligned(t, d, "The cat")
    # the last token may still grow (" mat" -> " mats"): dropped
    assert words(t, m.target_tokens(b" sat on the mat")) == [b" sat", b" on", b" the"]
    # unless the draft ended the text
    assert words(t, m.target_tokens(b" sat on the mat", final=True)) == [b" sat", b" on", b" the", b" mat"]


def test_draft_tokens_merged_into_one_target_token():
    t, d = target_vocab(), draft_vocab()
    m, _ = aligned(t, d, "The cat sat on")
    proposal = b"".join(words(d, d.encode(" there is a dog")))
    assert words(d, d.encode(" there")) == [b" th", b"ere"]  # two draft tokens ...
    assert words(t, m.target_tokens(proposal)) == [b" there is", b" a"]  # ... one target token


def test_one_draft_token_split_into_several_target_tokens():
    t = ScriptedVocab([w.encode() for w in ["The", " cat", " the", "re", " is", " a"]], pre_split=False)
    d = ScriptedVocab([b"The", b" cat", b" there", b" is", b" a"], pre_split=True)
    m, _ = aligned(t, d, "The cat")
    assert words(d, d.encode(" there is a")) == [b" there", b" is", b" a"]
    assert words(t, m.target_tokens(b" there is a")) == [b" the", b"re", b" is"]


def test_proposal_inside_the_contexts_last_word():
    t, d = target_vocab(), draft_vocab()
    # the target wrote " the" and the draft goes on "re is": the target has split there already,
    # so the proposal starts with a token of its own
    m, _ = aligned(t, d, "The cat sat on the")
    assert words(t, m.target_tokens(b"re is a")) == [b"re", b" is"]


def test_proposal_ending_mid_character_never_proposes_part_of_it():
    t, d = target_vocab(), draft_vocab()
    m, _ = aligned(t, d, "The cat sat in the")
    e = "é".encode()
    assert words(t, m.target_tokens(b" caf" + e[:1])) == []  # " caf" may still become " café"
    assert words(t, m.target_tokens(b" caf" + e[:1], final=True)) == [b" caf"]  # the partial byte is never proposed
    assert words(t, m.target_tokens(b" caf" + e + b" is a")) == [b" caf\xc3\xa9", b" is"]
    assert words(t, m.target_tokens(b" cat\n\n")) == [b" cat"]  # the newlines end the word; they may grow


def test_trailing_whitespace_tokens_are_not_proposed():
    t, d = target_vocab(), draft_vocab()
    m, _ = aligned(t, d, "The")
    assert words(t, m.target_tokens(b" cat sat  \n")) == [b" cat", b" sat"]


def test_context_ending_mid_character():
    t, d = target_vocab(), draft_vocab()
    e = "é".encode()
    m = TextAlignment(t.vocab(), d.vocab())
    # the target wrote the first byte of "é" as a byte token
    ctx = t.encode(" caf") + [t.ids[e[:1]]]
    dtoks = m.update(ctx)
    assert m.pending == e[:1]
    assert b"".join(words(d, dtoks)) == b" caf"  # the draft's tokens stop before the partial character
    assert m.target_tokens(b"x is") is None  # contradicts the pending byte: drafting on cannot help
    assert m.target_tokens(b"") == []
    # the pending byte plus more: no target token may start inside a character
    for tok in m.target_tokens(e + b" is a dog") or []:
        assert t.piece(tok)[:1] != e[1:]
    # once the target completes the character, the draft's tokens catch up
    dtoks = m.update(ctx + [t.ids[e[1:]]])
    assert m.pending == b"" and b"".join(words(d, dtoks)) == b" caf" + e


@pytest.mark.parametrize("seed", range(6))
def test_draft_tokens_stay_the_tokenization_of_the_whole_text(seed):
    """Random appends, cut-backs and multi-byte characters split across target tokens: after every
    update the draft's tokens are exactly what tokenizing the whole text gives, while only a short
    tail is re-tokenized each time."""
    rng = np.random.default_rng(seed)
    t, d = target_vocab(), draft_vocab()
    m = TextAlignment(t.vocab(), d.vocab(bos=True))
    ctx = [t.bos]
    appended = 0
    for step in range(120):
        if step % 17 == 16 and len(ctx) > 5:
            ctx = ctx[: len(ctx) - int(rng.integers(1, 5))]  # an edit: the context is cut back
        word = WORD_LIST[int(rng.integers(len(WORD_LIST)))].encode()
        if rng.random() < 0.3:
            new = [t.ids[word[i : i + 1]] for i in range(len(word))]  # byte by byte, splitting characters
        else:
            new = t.tokenize(word)
        ctx = ctx + new
        appended += len(word)
        d.calls.clear()
        dtoks = m.update(ctx)
        text = b"".join(t.piece(x) for x in ctx)
        assert bytes(m.text) == text
        assert m.covered == utf8_complete(text)
        assert dtoks == [d.bos] + d.tokenize(text[: m.covered]), (step, text)
        assert sum(map(len, d.calls[:-1])) <= m.covered  # (the last call was the check above)
    assert m.unsure_windows == 0 and m.inexact_windows == 0


def test_retokenized_window_is_short_on_a_long_context():
    t, d = target_vocab(), draft_vocab()
    m = TextAlignment(t.vocab(), d.vocab())
    ctx: list[int] = []
    for i in range(300):
        ctx += t.encode([" the cat", " sat", " on the mat", ".\n", " there is a dog"][i % 5])
        d.calls.clear()
        m.update(ctx)
        assert sum(map(len, d.calls)) <= 32, d.calls  # the new words and the last one before them
    assert len(m.text) > 2000


def test_unchanged_context_retokenizes_nothing():
    t, d = target_vocab(), draft_vocab()
    m, ctx = aligned(t, d, "The cat sat on the mat.")
    before = list(m.dtoks)
    d.calls.clear()
    assert m.update(ctx) == before and d.calls == []


def test_text_without_split_points_still_stays_in_step():
    """A long run with no spaces (no split point within the lookback): the window falls back to a
    character boundary far enough back; the draft tokens still spell the text."""
    t, d = target_vocab(), draft_vocab()
    m = TextAlignment(t.vocab(), d.vocab(), lookback=4)
    ctx: list[int] = []
    for _ in range(40):
        ctx += t.encode("日本語")
        dtoks = m.update(ctx)
        assert b"".join(d.piece(x) for x in dtoks) == bytes(m.text)
    assert m.unsure_windows > 0
