"""A scripted stand-in for spec_cli.llama.Model: the loop's unit tests run on it without llama.cpp.

The "language model" is a function from the token history to a logits vector.
The fake keeps `tokens` like the real Model and checks every position it is
asked to evaluate, so a loop that forgot to roll back its cache would be caught.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from spec_cli.llama import ContextFull
from spec_cli.sampling import top_k_of


class FakeModel:
    def __init__(
        self,
        logits_fn: Callable[[Sequence[int]], np.ndarray],
        n_vocab: int,
        n_ctx: int = 512,
        eog: int | None = None,
        cost: Callable[[int], float] | None = None,
    ):
        self.logits_fn = logits_fn
        self.rpc_servers: tuple[str, ...] = ()
        self.n_gpu_layers = 0
        # scripted time of one evaluation of n tokens, added to decode_seconds (0 without)
        self.cost = cost
        self.n_vocab = n_vocab
        self.n_ctx = n_ctx
        self.eog = eog
        self.tokens: list[int] = []
        self.decode_seconds = 0.0
        self.decode_calls = 0
        self.n_seq_max = 8  # branches a token tree may have, plus one
        self._tree = None
        self.batches: list[list[int]] = []  # every eval call, for assertions
        self.starts: list[int] = []  # the cache position each eval call started at
        self.label = "fake"

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def eval(self, tokens, logits="last"):
        if self.n_past + len(tokens) > self.n_ctx:
            raise ContextFull(self.n_past + len(tokens), self.n_ctx)
        rows = []
        self.starts.append(self.n_past)
        for t in tokens:
            self.tokens.append(int(t))
            rows.append(self.logits_fn(self.tokens))
        self.decode_calls += 1
        if self.cost is not None:
            self.decode_seconds += self.cost(len(tokens))
        self.batches.append(list(tokens))
        if logits == "none":
            return None
        if logits == "last":
            return np.array(rows[-1:], dtype=np.float32)
        return np.array(rows, dtype=np.float32)

    # What the real Model computes with backend sampling, here from the scripted rows.
    def eval_argmax(self, tokens, rows="all"):
        return self.eval(tokens, rows).argmax(axis=1)

    def eval_top_k(self, tokens, k, rows="all"):
        return [top_k_of(row, k) for row in self.eval(tokens, rows)]

    def sync_argmax(self, tokens):
        evaluated, row = self.sync(tokens)
        return evaluated, int(np.argmax(row))

    def sync_top_k(self, tokens, k):
        evaluated, row = self.sync(tokens)
        return evaluated, top_k_of(row, k)

    def eval_tree(self, root, tokens, parents):
        """Like Model.eval_tree: row 0 after root, row i + 1 after node i along its own branch."""
        from spec_cli.tokentree import check_tree, leaves, path_to

        check_tree(tokens, parents)
        if len(leaves(parents)) + 1 > self.n_seq_max:
            raise ValueError(f"too many branches for n_seq_max {self.n_seq_max}")
        if self.n_past + 1 + len(tokens) > self.n_ctx:
            raise ContextFull(self.n_past + 1 + len(tokens), self.n_ctx)
        self.starts.append(self.n_past)
        self.batches.append([int(root), *map(int, tokens)])
        self.decode_calls += 1
        if self.cost is not None:
            self.decode_seconds += self.cost(1 + len(tokens))
        self.tokens.append(int(root))
        rows = [self.logits_fn(self.tokens)]
        for i in range(len(tokens)):
            rows.append(self.logits_fn(self.tokens + [int(tokens[j]) for j in path_to(parents, i)]))
        self._tree = (list(tokens), list(parents))
        return np.array(rows, dtype=np.float32)

    def keep_branch(self, path):
        from spec_cli.tokentree import is_path

        tokens, parents = self._tree
        self._tree = None
        assert is_path(parents, path), path
        self.tokens.extend(int(tokens[i]) for i in path)

    def truncate(self, n):
        del self.tokens[n:]

    def reset(self):
        self.tokens.clear()

    def sync(self, tokens, logits="last"):
        assert logits in ("last", "none"), logits
        common = 0
        while common < min(len(tokens), len(self.tokens)) and self.tokens[common] == tokens[common]:
            common += 1
        if logits == "last" and common == len(tokens):
            common -= 1
        self.truncate(common)
        rest = list(tokens[common:])
        if not rest:
            return 0, None
        out = self.eval(rest, logits)
        return len(rest), (out[0] if out is not None else None)

    def is_eog(self, token):
        return token == self.eog

    def piece(self, token):
        return f"<{token}>".encode()


def table_lm(table: dict[int, int], n_vocab: int, default: int = 0, sharp: float = 10.0):
    """A model whose next token depends only on the last one: table[last] (else `default`)."""

    def fn(history):
        out = np.zeros(n_vocab, dtype=np.float32)
        out[table.get(history[-1], default)] = sharp
        return out

    return fn


def soft_lm(n_vocab: int, seed: int, temperature: float = 1.0):
    """A model with a full, history-dependent distribution (for sampling tests)."""

    def fn(history):
        rng = np.random.default_rng(hash((seed, history[-1], len(history) % 3)) % (2**32))
        return (rng.normal(size=n_vocab) * 2.0 / temperature).astype(np.float32)

    return fn


def sequence_lm(seq: Sequence[int], n_vocab: int, sharp: float = 10.0):
    """A model that writes seq: the token after a history of length n is seq[n] (0 past its end)."""

    def fn(history):
        out = np.zeros(n_vocab, dtype=np.float32)
        out[seq[len(history)] if len(history) < len(seq) else 0] = sharp
        return out

    return fn
