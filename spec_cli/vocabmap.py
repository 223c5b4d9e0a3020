"""Text alignment between two vocabularies: a draft from one model family for a target from another.

The draft drafts in its own tokens; the target can only verify its own. What both
share is the text, as bytes. This module keeps the target's context as bytes and the
draft's tokenization of those bytes in step, and turns the bytes a draft proposes
into target tokens. It works on tokenizers given as callables (`Vocab`), so it is
tested on scripted tokenizers without a model.

Where a tokenizer may split text differently once more text follows, nothing is
guessed: the target is only asked to verify tokens the proposed text fully
contains and that more text could not change (the last token of a re-tokenization
is dropped: " the" may become " there"; so are trailing whitespace tokens and an
incomplete UTF-8 character). A wrong guess would not change the output (the target
verifies every token), only waste a verification row.

Re-tokenizing the whole context every round would cost more than a draft step on
long contexts, so only a tail window is re-tokenized, starting at a byte where a
tokenizer starts a new token whatever follows (`is_split_point`): a space after a
non-space ("cat| sat") or a non-space after a newline. Byte-level BPE tokenizers
(GPT-2, SmolLM2, Llama 3, Qwen) split text into words with a regular expression
that has no look-behind and looks one character ahead, then merge within words;
so the words before such a byte do not depend on what follows it, and the draft's
tokens stay exactly the tokenization of the whole text (a run of whitespace at the
end of the text is the one place the look-ahead matters: see _retokenize_draft).
SentencePiece vocabularies (Gemma) almost never merge across a word's leading
space either.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
NEWLINE = 0x0A
SPACE = 0x20


@dataclass
class Vocab:
    """A tokenizer as two callables: bytes -> token ids (no BOS), token id -> its bytes."""

    tokenize: Callable[[bytes], list[int]]
    piece: Callable[[int], bytes]
    bos: int | None = None  # put in front of the text's tokens when the model wants a BOS

    def __post_init__(self):
        # Pieces never change; a round asks for the same few many times.
        raw, cache = self.piece, {}

        def cached(token: int) -> bytes:
            p = cache.get(token)
            if p is None:
                p = cache[token] = raw(token)
            return p

        self.piece = cached


def utf8_complete(data: bytes | bytearray) -> int:
    """The length of `data` without an incomplete UTF-8 character at its end."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b < 0x80:
            return n
        if b >= 0xC0:  # the lead byte of the last character
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return n if back >= need else n - back
    return n


def is_split_point(text: bytes | bytearray, s: int) -> bool:
    """Whether a tokenizer starts a token at byte s whatever text follows.

    A space after a non-space starts a word (" sat" in "cat sat"); a non-space
    after a newline starts one too. A space after a space does not: runs of
    spaces are split differently depending on what ends them.
    """
    if s == 0:
        return True
    if not 0 < s < len(text):
        return False
    prev, cur = text[s - 1], text[s]
    if cur == SPACE:
        return prev not in WHITESPACE
    return prev == NEWLINE and cur not in WHITESPACE


def tokenize_exact(vocab: Vocab, text: bytes) -> tuple[list[int], list[int]] | None:
    """Token ids of `text` and where each ends in it, or None when the tokens do not spell `text`
    (invalid UTF-8 that the tokenizer replaced, say). A space that a SentencePiece tokenizer
    puts in front of the text (add_space_prefix) is dropped when it is a token of its own."""
    ids = vocab.tokenize(text)
    pieces = [vocab.piece(t) for t in ids]
    joined = b"".join(pieces)
    if joined != text:
        if pieces and pieces[0] == b" " and joined == b" " + text:
            ids, pieces = ids[1:], pieces[1:]
        else:
            return None
    ends, pos = [], 0
    for p in pieces:
        pos += len(p)
        ends.append(pos)
    return ids, ends


class TextAlignment:
    """The target's context as bytes, and the draft's tokens for those bytes, kept in step.

    `update(context)` takes the target's context (prompt and output so far) and returns
    the draft tokens to hold in the draft's KV cache; `target_tokens(proposal)` turns
    the bytes the draft proposes after them into target tokens for verification.

    Invariants after update: text is the bytes of context's pieces (tends[i] is where
    context[i] ends); the draft tokens spell text[:covered] (dends[i] is where
    dtoks[i] ends; a BOS ends at 0) and text[covered:] is at most an incomplete UTF-8
    character, which the draft must propose before anything else.
    """

    def __init__(self, target: Vocab, draft: Vocab, lookback: int = 32):
        self.target = target
        self.draft = draft
        # How many tokens a window may reach back for a split point (a long run of text
        # without spaces, such as CJK or a base64 blob, falls back to this far back).
        self.lookback = lookback
        self.context: list[int] = []
        self.tends: list[int] = []
        self.text = bytearray()
        self.dtoks: list[int] = []
        self.dends: list[int] = []
        self.covered = 0
        self.unsure_windows = 0  # windows that started at no split point (lookback exhausted)
        self.inexact_windows = 0  # windows whose tokens did not spell their text (invalid UTF-8)

    def reset(self) -> None:
        self.context.clear()
        self.tends.clear()
        self.text.clear()
        self.dtoks.clear()
        self.dends.clear()
        self.covered = 0

    # --- the context --------------------------------------------------------

    def update(self, context: Sequence[int]) -> list[int]:
        """Bring text and draft tokens in line with the target's context; return the draft tokens."""
        old = self.context
        m = len(old)
        if m <= len(context) and list(context[:m]) == old:
            common = m  # the usual case: the context only grew
        else:
            common = 0
            limit = min(m, len(context))
            while common < limit and old[common] == context[common]:
                common += 1
        changed = self.tends[common - 1] if common else 0
        del old[common:], self.tends[common:], self.text[changed:]
        piece = self.target.piece
        for t in context[common:]:
            t = int(t)
            self.text += piece(t)
            old.append(t)
            self.tends.append(len(self.text))
        self._retokenize_draft(min(changed, self.covered))
        return self.dtoks

    def _retokenize_draft(self, changed: int) -> None:
        """Re-tokenize the text from a draft token boundary at or before byte `changed` (the
        first byte that is new or was not covered), keeping the draft tokens before it."""
        text, dends, old_covered = self.text, self.dends, self.covered
        if len(text) == old_covered == changed:
            return  # nothing new, and nothing cut
        nbos = 1 if self.dtoks and self.draft.bos is not None and self.dtoks[0] == self.draft.bos and dends[0] == 0 else 0
        k = bisect_right(dends, changed)  # draft tokens that end at or before `changed` (kept unless the window starts earlier)
        j = k
        floor = max(nbos, k - self.lookback)
        while j > nbos:
            s = dends[j - 1]
            # s < changed: the bytes around s are old, and the old tokens before s were made
            # seeing text[s] (a run of whitespace splits by what follows it: "\n\n" at the end
            # of a text is one token, before a word two). s == old_covered: they were made at
            # the end of the text, which is the same where s follows a non-space.
            if s == 0 or (is_split_point(text, s) and (s < changed or (s == old_covered and text[s - 1] not in WHITESPACE))):
                break
            if j <= floor:
                self.unsure_windows += 1
                # Still start at a character: a byte-level token may end inside one.
                while j > nbos and dends[j - 1] < len(text) and 0x80 <= text[dends[j - 1]] < 0xC0:
                    j -= 1
                break
            j -= 1
        s = dends[j - 1] if j > 0 else 0
        end = s + utf8_complete(text[s:])
        window = bytes(text[s:end])
        exact = tokenize_exact(self.draft, window)
        if exact is None:
            # The window's bytes are not valid text. The draft gets the tokenizer's best
            # effort; its tokens are given no inner boundaries, so no later window starts inside them.
            self.inexact_windows += 1
            ids = self.draft.tokenize(window)
            ends = [len(window)] * len(ids)
        else:
            ids, ends = exact
        del self.dtoks[j:], dends[j:]
        if j == 0 and self.draft.bos is not None:
            self.dtoks.append(self.draft.bos)
            dends.append(0)
        self.dtoks.extend(ids)
        dends.extend(s + e for e in ends)
        self.covered = end

    # --- the proposal --------------------------------------------------------

    @property
    def pending(self) -> bytes:
        """Context bytes the draft tokens do not cover (an incomplete character): the draft's
        proposal must start with them."""
        return bytes(self.text[self.covered :])

    def target_tokens(self, proposal: bytes, final: bool = False, lookback: int = 16) -> list[int] | None:
        """The target tokens that `proposal` (the bytes the draft drafted after its tokens) supports.

        Only tokens that lie wholly inside the proposal and that more text could not
        change are returned: unless the proposal is `final` (the draft ended the text),
        the last token of the re-tokenization and whitespace-only tokens before it are
        dropped; an incomplete character at the end always is. None when the proposal contradicts
        the context (it does not start with the pending bytes): drafting further cannot help.
        """
        pending = self.pending
        if not proposal.startswith(pending):
            return None if not pending.startswith(proposal) else []
        tail = proposal[len(pending) :]
        tail = tail[: utf8_complete(tail)]
        if not tail:
            return []
        text, tends = self.text, self.tends
        n = len(tends)
        end = len(text)
        # The window starts at a split point of (text + tail), at most `lookback` target tokens back:
        # the context's tokens there are re-tokenized with the proposal, so that a proposal that
        # starts inside a word is split as the target would split that word.
        s = end
        if not _split_at_end(text, tail[0]):
            s = None
            for j in range(n - 1, max(n - lookback, 0) - 1, -1):
                start = tends[j - 1] if j > 0 else 0
                if is_split_point(text, start):
                    s = start
                    break
            if s is None:
                s = tends[n - 2] if n >= 2 else 0
        window = bytes(text[s:]) + tail
        res = tokenize_exact(self.target, window)
        offset = end - s  # where the proposal starts in the window
        cut = None
        if res is not None:
            ids, ends = res
            if offset == 0:
                cut = 0
            else:
                i = bisect_right(ends, offset)
                if i > 0 and ends[i - 1] == offset:
                    cut = i
        if cut is None:
            # The proposal's first word merges with the context's last token (context "the",
            # proposal "re is"): the target has already split there, so split the proposal alone,
            # unless it starts inside a character the context began.
            if 0x80 <= tail[0] < 0xC0:
                return []
            res = tokenize_exact(self.target, tail)
            if res is None:
                return []
            ids, cut = res[0], 0
        ids = ids[cut:]
        if not final and ids:
            ids = ids[:-1]
            piece = self.target.piece
            while ids and all(b in WHITESPACE for b in piece(ids[-1])):
                ids.pop()
        return ids


def _split_at_end(text: bytes | bytearray, cur: int) -> bool:
    """is_split_point at the end of `text` when byte `cur` comes next."""
    if not text:
        return True
    prev = text[-1]
    if cur == SPACE:
        return prev not in WHITESPACE
    return prev == NEWLINE and cur not in WHITESPACE
