"""A draft model from another model family: it drafts text, the target verifies its own tokens.

The draft drafts greedily in its own vocabulary from its own KV cache, as
ModelDrafter does; the bytes of its tokens become target tokens (vocabmap), and
the target verifies those in one pass as usual. Each round the draft's cache is
brought back to the draft's tokenization of the accepted text, which evaluates
only what changed: usually the target's correction, a token or two.

The proposal is deterministic, a point mass in the target's token space (q = None),
also under sampling: the draft's probabilities are over its own tokens and say
nothing exact about the target's, and a point mass keeps the target's
distribution exactly (Leviathan et al.'s rule with q = 1 on the drafted token).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..errors import SpecError
from ..llama import Model
from ..sampling import SamplingParams
from ..vocabmap import TextAlignment, Vocab, tokenize_exact
from .base import DrafterBase, Proposal, round_seconds
from .model import ModelDrafter, top_probability

# Draft tokens drafted per target token asked for, at most (plus a couple to see the
# last target token end): a draft that writes a long word or a run of spaces gets no
# further than this in one round.
STEPS_PER_TOKEN = 2
EXTRA_STEPS = 2
# Tokens a sync evaluates in a round that follows one this drafter drafted (see propose).
REGULAR_SYNC = 3


def model_vocab(model: Model) -> Vocab:
    """A model's tokenizer for vocabmap. Bytes that are not UTF-8 are replaced, which
    tokenize_exact then notices (the tokens do not spell the bytes)."""
    info = model.vocab_info()

    def tokenize(data: bytes) -> list[int]:
        return model.tokenize(data.decode("utf-8", errors="replace"), add_bos=False) if data else []

    return Vocab(tokenize=tokenize, piece=model.piece, bos=info.bos if info.add_bos and info.bos >= 0 else None)


SAMPLE_TEXT = "The quick brown fox, 42 naïve cafés.\n  Done."


def check_cross_vocab(target: Model, draft: Model, refusal: SpecError) -> None:
    """Raise `refusal`, with the reason, where drafting across vocabularies cannot work: a model
    whose tokens do not spell the text they came from, or a draft that cannot roll back its cache."""
    for m in (target, draft):
        if tokenize_exact(model_vocab(m), SAMPLE_TEXT.encode()) is None:
            raise SpecError(
                f"{refusal}; nor can it draft across vocabularies: the {m.label} model {m.path.name} "
                "does not turn text into tokens and back into the same text"
            ) from None
    probe = draft.tokenize("a b c", add_bos=False)[:2]
    draft.reset()
    try:
        draft.eval(probe, logits="none")
        draft.truncate(1)  # raises where the cache cannot be cut back (recurrent or hybrid models)
    finally:
        draft.reset()


def drafter_for(target: Model, draft: Model, min_confidence: float = 0.0):
    """The drafter for a draft model that load_pair accepted: ModelDrafter where the two share a
    vocabulary, CrossVocabDrafter where they do not. Told apart by tokenizer type and size only
    (check_compatible reads every token's text, a second or so for Gemma's 262,144): a pair that
    matches in both but not in its texts drafts with ModelDrafter, which stays lossless (the
    target verifies every token) and only loses acceptance."""
    a, b = target.vocab_info(), draft.vocab_info()
    if a.kind == b.kind and a.n_vocab == b.n_vocab:
        return ModelDrafter(draft, min_confidence=min_confidence)
    return CrossVocabDrafter(target, draft, min_confidence=min_confidence)


class CrossVocabDrafter(DrafterBase):
    """Drafts with a model whose vocabulary differs from the target's (see the module docstring)."""

    name = "model (cross-vocab)"

    def __init__(self, target: Model, draft: Model, min_confidence: float = 0.0):
        self.model = draft
        self.min_confidence = min_confidence
        self.map = TextAlignment(model_vocab(target), model_vocab(draft))
        # for the stats
        self.draft_tokens = 0  # draft tokens drafted
        self.target_tokens = 0  # target tokens proposed from them
        self.empty_rounds = 0  # rounds whose text supported no whole, stable target token
        self.outside_seconds = 0.0  # time in propose outside the draft's passes: tokenizing, aligning

    def propose(self, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        prop = Proposal()  # q None: a point mass, also when sampling
        if n <= 0:
            return prop
        t0 = time.perf_counter()
        d = self.model
        dec0 = d.decode_seconds
        dtoks = self.map.update(context)
        room = d.n_ctx - len(dtoks)
        if room < 0:
            self.outside_seconds += time.perf_counter() - t0
            return prop
        max_steps = min(STEPS_PER_TOKEN * n + EXTRA_STEPS, room + 1)
        evaluated, logits = d.sync(dtoks)
        sync_seconds = d.decode_seconds - dec0
        # Every round the sync re-reads a token or three: the target's own token, and the last
        # word where the two vocabularies split the accepted text differently. That is part of
        # what drafting costs here, so it goes into the price per token; more is a catch-up on
        # rounds this drafter sat out, which is not (as in ModelDrafter).
        regular = evaluated <= REGULAR_SYNC
        step_seconds = sync_seconds if regular else 0.0
        text = bytearray()
        tokens: list[int] = []
        drafted = 0
        for i in range(max_steps):
            token = int(np.argmax(logits))
            if d.is_eog(token):
                # The draft ends the text here: its last word is complete.
                tokens = self.map.target_tokens(bytes(text), final=True) or []
                prop.stopped = "draft-eos"
                break
            if self.min_confidence > 0 and i > 0 and top_probability(logits) < self.min_confidence:
                prop.stopped = "confidence"
                break
            drafted += 1
            text += d.piece(token)
            found = self.map.target_tokens(bytes(text))
            if found is None:
                prop.stopped = "mismatch"  # it does not write the partial character the context ends with
                break
            tokens = found
            if len(tokens) >= n or i + 1 >= max_steps:
                break
            ts = d.decode_seconds
            logits = d.eval([token])[0]
            step_seconds += d.decode_seconds - ts
        prop.tokens = tokens[:n]
        self.draft_tokens += drafted
        self.target_tokens += len(prop.tokens)
        self.empty_rounds += not prop.tokens
        wall = time.perf_counter() - t0
        prop.decode_seconds = d.decode_seconds - dec0
        outside = wall - prop.decode_seconds
        self.outside_seconds += outside
        # The price per proposed target token: the round's draft passes and the aligning, so
        # that the controller compares what a target token really costs to draft.
        if prop.tokens:
            prop.steps = len(prop.tokens)
            prop.step_seconds = step_seconds + outside
        prop.round_seconds = round_seconds(prop.decode_seconds + outside, sync_seconds, evaluated, usual=REGULAR_SYNC)
        return prop

    def prepare(self, tokens: Sequence[int]) -> int:
        """Evaluate the prompt's text (less its last draft token) ahead of the first round.

        Returns the number of tokens the draft model had to evaluate.
        """
        dtoks = self.map.update(tokens)
        evaluated, _ = self.model.sync(dtoks[:-1], logits="none")
        return evaluated

    def reset(self) -> None:
        self.map.reset()
        self.model.reset()
        self.draft_tokens = self.target_tokens = self.empty_rounds = 0
        self.outside_seconds = 0.0

    def describe(self) -> list[str]:
        per = self.draft_tokens / self.target_tokens if self.target_tokens else float("nan")
        return [
            (
                f"{self.name}: the draft's text re-tokenized for the target; {self.draft_tokens} draft tokens gave "
                f"{self.target_tokens} target tokens ({per:.2f} per token); rounds with none: {self.empty_rounds}; "
                f"aligning and the rest outside the draft's passes took {1000 * self.outside_seconds:.1f} ms"
            )
        ]
