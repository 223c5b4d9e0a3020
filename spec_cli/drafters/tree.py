"""A token tree from the draft model: its greedy chain, plus its second choice where that is likely.

Where the draft hesitates between two tokens, a chain bets on one and loses the
whole rest of the round when the target picks the other. A tree drafts both and
the target checks all branches in one pass (SpecInfer, Miao et al. 2023; Sequoia
and EAGLE-2 choose where to branch from the draft's own probabilities, as here).

Trees are verified greedily only. Under sampling a lossless tree needs branches
drawn at random from the draft's distribution and SpecInfer's multi-step rule;
these branches are the draft's top two, chosen deterministically, so with
temperature > 0 the drafter drafts a plain chain (and says so in the notes).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from ..llama import Model
from ..sampling import SamplingParams
from .base import DrafterBase, Proposal, RoundOutcome
from .model import ModelDrafter

DEFAULT_THRESHOLD = 0.2
DEFAULT_BRANCHES = 4
DEFAULT_NODES = 12


def top_two(logits: np.ndarray) -> tuple[int, float, int, float]:
    """The two most likely tokens and their softmax probabilities."""
    z = logits.astype(np.float32, copy=False)
    i2, i1 = np.argpartition(z, -2)[-2:]
    if z[i2] > z[i1]:
        i1, i2 = i2, i1
    total = np.exp(z - z[i1]).sum()
    return int(i1), float(1.0 / total), int(i2), float(np.exp(z[i2] - z[i1]) / total)


class TreeDrafter(DrafterBase):
    """Drafts a tree of at most `max_branches` leaves and `max_nodes` nodes, `n` deep.

    First the greedy chain, noting at every node the draft's second choice when its
    probability is at least `threshold`. Then, best first, the noted alternatives
    become side branches, each continued greedily to the same depth (and noting its
    own alternatives), while the budgets allow. An alternative's score is the draft's
    probability of reaching it: the product of the probabilities along the path
    times its own.

    The draft model keeps one sequence: a side branch truncates its cache to the
    branch point and evaluates from there (`Model.sync`), so each tree node costs
    one draft evaluation, as in a chain. Whatever branch the cache holds at the end,
    the next round's `sync` keeps only the prefix it shares with the new context.
    """

    name = "tree"

    def __init__(
        self,
        model: Model,
        threshold: float = DEFAULT_THRESHOLD,
        max_branches: int = DEFAULT_BRANCHES,
        max_nodes: int = DEFAULT_NODES,
    ):
        if not 0.0 < threshold <= 0.5:
            raise ValueError(f"the branching threshold is a second choice's probability in (0, 0.5], got {threshold}")
        if max_branches < 1 or max_nodes < 1:
            raise ValueError("a tree needs at least one branch and one node")
        self.model = model
        self.threshold = threshold
        self.max_branches = max_branches
        self.max_nodes = max_nodes
        self.chain = ModelDrafter(model)  # under sampling
        self.trees = 0
        self.nodes = 0
        self.branches = 0
        self.side_wins = 0  # rounds whose accepted path left the greedy chain
        self.sampled_rounds = 0

    def propose(self, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        if not params.greedy:
            self.sampled_rounds += 1
            return self.chain.propose(context, n, params, rng)
        n = min(n, self.model.n_ctx - len(context) + 1)
        if n <= 0:
            return Proposal()
        context = list(context)
        t0 = self.model.decode_seconds
        tokens: list[int] = []
        parents: list[int] = []
        paths: list[list[int]] = []  # tokens from the root down to each node
        alternatives: list[tuple[float, int, int, int, float]] = []  # heap of (-score, tie, parent, token, prob)

        def grow(node: int, depth: int, prob: float, logits: np.ndarray | None) -> None:
            """Follow the draft's first choices below `node` (logits: the draft's row after it)."""
            while depth < n and len(tokens) < self.max_nodes:
                t1, p1, t2, p2 = top_two(logits)
                if p2 >= self.threshold:
                    heapq.heappush(alternatives, (-prob * p2, len(alternatives), node, t2, prob * p2))
                node = add(t1, node)
                depth += 1
                prob *= p1
                if depth < n and len(tokens) < self.max_nodes:
                    logits = self.model.eval([t1])[0]

        def add(token: int, parent: int) -> int:
            tokens.append(token)
            parents.append(parent)
            paths.append((paths[parent] if parent >= 0 else []) + [token])
            return len(tokens) - 1

        grow(-1, 0, 1.0, self.model.sync(context)[1])
        leaves = 1
        while alternatives and leaves < self.max_branches and len(tokens) < self.max_nodes:
            _, _, parent, token, prob = heapq.heappop(alternatives)
            node = add(token, parent)
            leaves += 1
            depth = len(paths[node])
            if depth < n and len(tokens) < self.max_nodes:
                grow(node, depth, prob, self.model.sync(context + paths[node])[1])
        self.trees += 1
        self.nodes += len(tokens)
        self.branches += leaves
        return Proposal(tokens=tokens, parents=parents, decode_seconds=self.model.decode_seconds - t0)

    def prepare(self, tokens: Sequence[int]) -> int:
        return self.chain.prepare(tokens)

    def observe(self, prop: Proposal, outcome: RoundOutcome) -> None:
        from ..tokentree import on_first_branch

        if prop.parents is not None and outcome.path is not None and not on_first_branch(prop.parents, outcome.path):
            self.side_wins += 1

    def describe(self) -> list[str]:
        lines = []
        if self.trees:
            lines.append(
                f"token tree: {self.trees} trees, {self.nodes / self.trees:.1f} nodes and "
                f"{self.branches / self.trees:.2f} branches per tree, a side branch won {self.side_wins} rounds "
                f"(branch where the draft's second choice has p >= {self.threshold}; "
                f"at most {self.max_branches} branches, {self.max_nodes} nodes)"
            )
        if self.sampled_rounds:
            lines.append(
                f"token tree is greedy-only: with sampling the tree drafter drafted plain chains ({self.sampled_rounds} rounds)"
            )
        return lines

    def reset(self) -> None:
        self.model.reset()
