"""A small model with the target's vocabulary as the drafter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..llama import Model
from ..sampling import Dist, SamplingParams, shape, shape_top_k
from .base import DrafterBase, Proposal, round_seconds

if TYPE_CHECKING:
    from ..pipeline import Ahead


def top_probability(logits: np.ndarray) -> float:
    """Softmax probability of the argmax token, without building the distribution."""
    z = logits.astype(np.float32, copy=False)
    m = z.max()
    return float(1.0 / np.exp(z - m).sum())


class ModelDrafter(DrafterBase):
    """Drafts autoregressively from its own KV cache.

    The draft cache is kept across rounds: `Model.sync` keeps the prefix the new
    context shares with what is cached (the accepted drafts) and evaluates only
    the rest, usually the target's correction token, never the whole context.
    """

    name = "model"

    def __init__(self, model: Model, min_confidence: float = 0.0):
        self.model = model
        # Stop drafting when the draft's probability for its own next token is lower
        # than this (0 = never stop early).
        self.min_confidence = min_confidence
        # A proposal drafted ahead, during the target's last pass (pipeline.py), and the context
        # it continues; used once, and only for exactly that context.
        self.ahead: Ahead | None = None

    def propose(self, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        ahead, self.ahead = self.ahead, None
        if ahead is not None and n > 0 and ahead.context == list(context):
            prop = ahead.prop
            if len(prop.tokens) >= n or prop.stopped is not None:
                # Drafted from this very context, its q kept: a draft like one made now. Fewer
                # tokens than drafted are the first of the same chain.
                prop.tokens = prop.tokens[:n]
                prop.q = prop.q[:n] if prop.q is not None else None
                prop.ahead = True
                return prop
        prop = Proposal(q=None if params.greedy else [])
        if n <= 0:
            return prop
        room = self.model.n_ctx - len(context)
        n = min(n, room + 1)
        if n <= 0:
            return prop
        d = self.model
        # Ask the draft only for what drafting reads: an id when greedy without a confidence
        # threshold, the top-k candidates under top-k sampling, the full row otherwise.
        if params.greedy and self.min_confidence <= 0:
            first, step = d.sync_argmax, lambda t: d.eval_argmax([t], rows="last")[0]
        elif not params.greedy and 0 < params.top_k < d.n_vocab:
            k = params.top_k
            first, step = (lambda c: d.sync_top_k(c, k)), (lambda t: d.eval_top_k([t], k, rows="last")[0])
        else:
            first, step = d.sync, lambda t: d.eval([t])[0]
        t0 = d.decode_seconds
        evaluated, out = first(context)
        sync_seconds = d.decode_seconds - t0
        if evaluated == 1:
            # In a steady run the sync evaluates one token (the target's correction, or the
            # last accepted draft): a draft step like the others. More than one is a
            # catch-up (after a fully accepted round, rounds without drafting, or a new
            # prompt): real cost, but not a price per drafted token.
            prop.steps, prop.step_seconds = 1, sync_seconds
        for i in range(n):
            if params.greedy:
                if self.min_confidence <= 0:
                    token = int(out)
                else:
                    token = int(np.argmax(out))
                    if i > 0 and top_probability(out) < self.min_confidence:
                        prop.stopped = "confidence"
                        break
            else:
                dist: Dist = shape_top_k(*out, params) if isinstance(out, tuple) else shape(out, params)
                token = dist.sample(rng)
                if self.min_confidence > 0 and i > 0 and dist.prob(token) < self.min_confidence:
                    prop.stopped = "confidence"
                    break
                prop.q.append(dist)
            prop.tokens.append(token)
            if i + 1 < n:
                ts = d.decode_seconds
                out = step(token)
                prop.steps += 1
                prop.step_seconds += d.decode_seconds - ts
        prop.decode_seconds = d.decode_seconds - t0
        # Two tokens are what a fully accepted round leaves behind; more is a catch-up.
        prop.round_seconds = round_seconds(prop.decode_seconds, sync_seconds, evaluated, usual=2)
        return prop

    def guess(self, context: Sequence[int], params: SamplingParams) -> int:
        """The draft's most likely token after `context`: its bet on the target's next token."""
        d = self.model
        if params.greedy and self.min_confidence <= 0:
            return d.sync_argmax(context)[1]  # the kind of pass drafting makes: no sampler swap
        if not params.greedy and 0 < params.top_k < d.n_vocab:
            ids, z = d.sync_top_k(context, params.top_k)[1]
            return int(ids[int(np.argmax(z))])
        return int(np.argmax(d.sync(context)[1]))

    def prepare(self, tokens: Sequence[int]) -> int:
        """Evaluate the prompt (less its last token) ahead of the first round, as the target does.

        Returns the number of tokens the draft model had to evaluate.
        """
        evaluated, _ = self.model.sync(list(tokens), logits="none")
        return evaluated

    def reset(self) -> None:
        self.ahead = None
        self.model.reset()
