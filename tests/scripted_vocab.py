"""Scripted tokenizers for the cross-vocabulary tests: two families that split the same text differently.

`ScriptedVocab` tokenizes by longest match over its pieces (every single byte is a
piece too, so any bytes tokenize). With `pre_split` it first cuts the text into
words with a GPT-2-like regular expression, as byte-level BPE tokenizers do
(SmolLM2, Llama 3); without it, it matches over the whole text, as SentencePiece
(Gemma) in effect does. Longest match is not compositional, like BPE: "there" is
one token where "the" + "re" are two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from spec_cli.vocabmap import Vocab

WORDS = re.compile(rb" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


class ScriptedVocab:
    def __init__(self, pieces: Sequence[bytes], pre_split: bool, space_prefix: bool = False, specials: int = 2):
        # ids 0..specials-1 are control tokens (0 = BOS, 1 = EOS) with no text
        self.pieces: list[bytes] = [b""] * specials + list(dict.fromkeys(pieces))
        for b in range(256):
            if bytes([b]) not in self.pieces:
                self.pieces.append(bytes([b]))
        self.ids = {p: i for i, p in enumerate(self.pieces) if i >= specials}
        self.longest = max(len(p) for p in self.pieces)
        self.pre_split = pre_split
        self.space_prefix = space_prefix
        self.specials = specials
        self.bos, self.eos = 0, 1
        self.calls: list[bytes] = []  # every text tokenized, for cost assertions

    @property
    def n_vocab(self) -> int:
        return len(self.pieces)

    def tokenize(self, data: bytes) -> list[int]:
        self.calls.append(bytes(data))
        if self.space_prefix and data:
            data = b" " + data
        chunks = WORDS.findall(data) if self.pre_split else [data]
        out = []
        for chunk in chunks:
            i = 0
            while i < len(chunk):
                for n in range(min(self.longest, len(chunk) - i), 0, -1):
                    t = self.ids.get(chunk[i : i + n])
                    if t is not None:
                        out.append(t)
                        i += n
                        break
        return out

    def piece(self, token: int) -> bytes:
        return self.pieces[token]

    def encode(self, text: str | bytes) -> list[int]:
        return self.tokenize(text.encode() if isinstance(text, str) else text)

    def vocab(self, bos: bool = False) -> Vocab:
        return Vocab(tokenize=self.tokenize, piece=self.piece, bos=self.bos if bos else None)


WORD_LIST = [
    "The",
    " cat",
    " sat",
    " on",
    " the",
    " there",
    " mat",
    ".",
    ",",
    " is",
    " a",
    " caf",
    "é",
    " café",
    " over",
    "re",
    " ther",
    "\n",
    "\n\n",
    " dog",
    " run",
    "ning",
    " 日本",
    "語",
    " 1",
    "2",
    "3",
    " in",
    " in the",
    "  ",
]

# The target: matches over the whole text, has whole words and a couple of multi-word pieces.
TARGET_PIECES = [w.encode() for w in WORD_LIST] + [b" there is", b"\xc3\xa9 is"]
# The draft: its own, finer split: no " there", no " café", " th" and "ere", é only as bytes; and
# whitespace runs whose split depends on what follows them ("\n\n" at the end, "\n" "\n" before a word).
DRAFT_PIECES = [
    w.encode() for w in ["The", " c", "at", " sat", " on", " th", "e", "ere", "re", " mat", ".", ",", " is", " a",
                         " caf", "\n", "\n\n", "  ", " dog", " run", "n", "ing", " over", " 1", "2", "3", " in"]
]  # fmt: skip


def target_vocab(**kw) -> ScriptedVocab:
    return ScriptedVocab(TARGET_PIECES, pre_split=False, **kw)


def draft_vocab(**kw) -> ScriptedVocab:
    return ScriptedVocab(DRAFT_PIECES, pre_split=True, **kw)
