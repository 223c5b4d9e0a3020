"""The loop with a draft whose vocabulary differs from the target's, on scripted fake models.

Both fakes "write" text: the target a fixed document (tests/scripted_vocab.py splits
it into its own tokens), the draft the same document with some words changed, in its
own tokens. The speculative output must be exactly the target's, the draft's cache
must hold its own tokenization of the accepted text each round, and sampling must
keep the target's distribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters.crossvocab import CrossVocabDrafter
from spec_cli.llama import VocabInfo
from spec_cli.sampling import SamplingParams
from spec_cli.strategy import FixedStrategy
from tests.chisquare import masked_chi2, softmax
from tests.fakes import FakeModel
from tests.scripted_vocab import ScriptedVocab, draft_vocab, target_vocab

DOC = b"The cat sat on the mat. There is a dog in the caf\xc3\xa9, running over the mat.\n\nThe dog sat on the cat."
# The draft's document: the same text with a few words changed (byte offset -> (bytes replaced, new bytes)).
MISTAKES = {DOC.index(b" mat."): (4, b" dog"), DOC.index(b" running"): (8, b" run"), DOC.index(b"\n\nThe"): (2, b" The")}


class TextModel(FakeModel):
    """A FakeModel with a scripted tokenizer: its tokens have text."""

    def __init__(self, vocab: ScriptedVocab, logits_fn, add_bos: bool, n_ctx: int = 512):
        super().__init__(logits_fn, vocab.n_vocab, n_ctx=n_ctx, eog=vocab.eos)
        self.v = vocab
        self.add_bos = add_bos
        self.path = Path("scripted.gguf")

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        ids = self.v.encode(text)
        return [self.v.bos, *ids] if add_bos and self.add_bos else ids

    def piece(self, token: int, special: bool = False) -> bytes:
        return self.v.piece(token)

    def detokenize(self, tokens) -> str:
        return b"".join(self.v.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def vocab_info(self) -> VocabInfo:
        return VocabInfo(kind=0, n_vocab=self.v.n_vocab, bos=self.v.bos, eos=self.v.eos, add_bos=self.add_bos)

    def text_of(self, history) -> bytes:
        return b"".join(self.v.piece(t) for t in history)


def writer(vocab: ScriptedVocab, doc: bytes, mistakes=None, sharp: float = 10.0):
    """A model that writes `doc` (or, with mistakes, doc with those words changed) in its own tokens."""
    mistakes = mistakes or {}

    def rest_after(h: bytes) -> bytes | None:
        for off, (n, new) in mistakes.items():
            variant = doc[:off] + new + doc[off + n :]
            if variant.startswith(h) and len(h) >= off:
                return variant[len(h) :]
        return doc[len(h) :] if doc.startswith(h) else None

    def fn(history):
        h = b"".join(vocab.piece(t) for t in history)
        out = np.zeros(vocab.n_vocab, dtype=np.float32)
        rest = rest_after(h)
        out[vocab.tokenize(rest)[0] if rest else vocab.eos] = sharp
        return out

    return fn


def make_pair(n_ctx: int = 512):
    tv, dv = target_vocab(), draft_vocab()
    target = TextModel(tv, writer(tv, DOC), add_bos=True, n_ctx=n_ctx)
    draft = TextModel(dv, writer(dv, DOC, MISTAKES), add_bos=False, n_ctx=n_ctx)
    return target, draft


class Checked(CrossVocabDrafter):
    """After every round's sync the draft cache must hold the draft's tokenization of the context's text."""

    rounds = 0

    def propose(self, context, n, params, rng):
        prop = super().propose(context, n, params, rng)
        text = self.map.text[: self.map.covered]
        expected = self.model.tokenize(bytes(text).decode())
        assert self.map.dtoks == expected
        assert self.model.tokens[: len(expected)] == expected  # (and after them, the drafts it evaluated)
        self.rounds += 1
        return prop


def test_greedy_output_is_the_targets_and_the_draft_cache_follows_the_text():
    prompt_text = "The cat"
    target, draft = make_pair()
    prompt = target.tokenize(prompt_text)
    alone = Engine(target).generate(prompt, GenerateOptions(max_tokens=60, draft_len=0))
    assert alone.text.encode() == DOC[len(prompt_text) :][: len(alone.text.encode())]

    for g in (1, 3, 5):
        target, draft = make_pair()
        drafter = Checked(target, draft)
        res = Engine(target, FixedStrategy(drafter, g)).generate(prompt, GenerateOptions(max_tokens=60, draft_len=g))
        assert res.tokens == alone.tokens, g
        s = res.stats
        # the draft's text agrees with the target's in most places, and its mistakes were turned down
        assert 0 < s.accepted < s.drafted, (g, s.accepted, s.drafted)
        assert s.tokens_per_pass > 1.0
        assert drafter.rounds >= s.target_passes - s.rounds_without_draft
        # the draft evaluated the text about once, not once a round: prompt, drafts and corrections
        evaluated = sum(len(b) for b in draft.batches)
        assert evaluated <= len(prompt) + 3 * s.generated, (g, evaluated)
        assert "cross-vocab" in res.stats.drafter
        assert any("re-tokenized" in note for note in res.stats.notes)


def test_draft_ending_the_text_lets_its_last_word_through():
    target, draft = make_pair()
    prompt = target.tokenize(DOC[:-5].decode())  # "...on the", and " cat." is what is left
    res = Engine(target, FixedStrategy(CrossVocabDrafter(target, draft), 4)).generate(
        prompt, GenerateOptions(max_tokens=10, draft_len=4)
    )
    assert target.text_of(res.tokens) == b" cat."
    assert res.stats.drafted == res.stats.accepted == 2  # " cat" and "." in one round: the draft's EOS made "." final


def test_draft_that_contradicts_a_partial_character_proposes_nothing():
    tv, dv = target_vocab(), draft_vocab()
    doc = b"The caf\xc3\xa9 is"
    target = TextModel(tv, writer(tv, doc), add_bos=True)
    draft = TextModel(dv, writer(dv, b"The cafe is"), add_bos=False)
    drafter = CrossVocabDrafter(target, draft)
    ctx = target.tokenize("The caf") + [tv.ids[b"\xc3"]]  # the target wrote the first byte of "é"
    prop = drafter.propose(ctx, 3, SamplingParams(), np.random.default_rng(0))
    assert prop.tokens == [] and prop.stopped == "mismatch"


def test_sampling_keeps_the_targets_distribution():
    """Point-mass proposals from another vocabulary: the first two sampled tokens follow the target."""
    tv, dv = target_vocab(), draft_vocab()
    words = [tv.ids[w] for w in (b" cat", b" sat", b" on", b" the")]

    def soft(history):
        rng = np.random.default_rng(hash((history[-1], len(history) % 2)) % (2**32))
        out = np.full(tv.n_vocab, -30.0, dtype=np.float32)
        out[words] = rng.normal(size=len(words)) * 1.5
        return out

    params = SamplingParams(temperature=1.0, top_k=0)
    prompt_text = "The"
    runs = 2000
    counts = np.zeros((4, 4))
    drafted = accepted = 0
    for seed in range(runs):
        target = TextModel(tv, soft, add_bos=True)
        draft = TextModel(dv, writer(dv, b"The cat sat on the mat"), add_bos=False)
        prompt = target.tokenize(prompt_text)
        eng = Engine(target, FixedStrategy(CrossVocabDrafter(target, draft), 3))
        res = eng.generate(prompt, GenerateOptions(max_tokens=2, draft_len=3, seed=seed, sampling=params))
        counts[words.index(res.tokens[0]), words.index(res.tokens[1])] += 1
        drafted += res.stats.drafted
        accepted += res.stats.accepted

    prompt = TextModel(tv, soft, add_bos=True).tokenize(prompt_text)
    p0 = softmax(soft(prompt).astype(np.float64))[words]
    expected = np.array(
        [[p0[a] * softmax(soft(prompt + [words[a]]).astype(np.float64))[words][b] for b in range(4)] for a in range(4)]
    )
    chi2, dof = masked_chi2(counts, expected * runs)
    assert chi2 < dof + 4.5 * np.sqrt(2 * dof) + 10, (chi2, dof)
    # the draft's tokens were proposed as target tokens, and the target turned some down
    assert drafted >= runs and 0 < accepted < drafted


def test_what_cannot_draft_across_vocabularies_is_still_refused():
    import pytest

    from spec_cli.drafters.crossvocab import check_cross_vocab
    from spec_cli.errors import SpecError

    refusal = SpecError("incompatible vocabularies: ...")
    target, draft = make_pair()
    check_cross_vocab(target, draft, refusal)  # two tokenizers that spell text: accepted

    class Mute(TextModel):  # tokens with no text (an embedding model's, say)
        def piece(self, token, special=False):
            return b""

    class Recurrent(TextModel):  # a cache that cannot be cut back
        def truncate(self, n):
            if n < len(self.tokens):
                raise SpecError("draft model cannot roll back its cache (recurrent or hybrid architecture)")

    mute = Mute(draft_vocab(), writer(draft_vocab(), DOC), add_bos=False)
    with pytest.raises(SpecError, match="incompatible vocabularies.*same text"):
        check_cross_vocab(target, mute, refusal)
    recurrent = Recurrent(draft_vocab(), writer(draft_vocab(), DOC), add_bos=False)
    with pytest.raises(SpecError, match="roll back"):
        check_cross_vocab(target, recurrent, refusal)


def test_auto_counts_a_draft_that_ends_the_text_as_a_rejected_probe():
    """The draft says "end" where the target goes on: no token is proposed, but the drafter's
    first guess was wrong and its pass was paid. auto must book it as a rejected draft, or the
    probe stays due and the draft is run again next round for nothing."""
    from spec_cli.adaptive import AdaptiveDraftLength
    from spec_cli.strategy import AdaptiveStrategy

    tv, dv = target_vocab(), draft_vocab()
    target = TextModel(tv, writer(tv, DOC), add_bos=True)
    draft = TextModel(dv, lambda h: np.eye(dv.n_vocab, dtype=np.float32)[dv.eos] * 10, add_bos=False)  # always "end"
    cost = [0.010, 0.012, 0.014]
    ctl = AdaptiveDraftLength(cost, 0.002, 2, prior=0.9, probe_every=4)
    strategy = AdaptiveStrategy([(CrossVocabDrafter(target, draft), ctl, False)])
    res = Engine(target, strategy=strategy).generate(target.tokenize("The cat"), GenerateOptions(max_tokens=24))
    assert res.tokens == Engine(TextModel(tv, writer(tv, DOC), add_bos=True)).generate(
        target.tokenize("The cat"), GenerateOptions(max_tokens=24, draft_len=0)).tokens  # fmt: skip
    assert ctl.acceptance < 0.9  # the wrong guesses were counted
    # asked in a few rounds (the first, then probes), not in every round of the run
    assert strategy.rounds["model (cross-vocab)"] <= 6 < res.stats.target_passes
