"""A token tree from the draft model: its chain, plus more children where the draft hesitates.

Where the draft hesitates between two tokens, a chain bets on one and loses the
whole rest of the round when the target picks the other. A tree drafts both and
the target checks all branches in one pass (SpecInfer, Miao et al. 2023; Sequoia
and EAGLE-2 choose where to branch from the draft's own probabilities, as here).

Greedy: the branches are the draft's first and second choices. Under sampling
they are drawn at random from the draft's distribution q (shaped by the same
temperature, top-k and top-p as the target's): a node's first child from q, each
further child from q less its earlier siblings, so the target's sampling rule
(tokentree.accept_tree_sampled) keeps its distribution exactly. Where to branch
is decided before the new child is drawn, from what was drawn so far, which is
what that rule needs of a drafter.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from ..llama import Model
from ..sampling import Dist, SamplingParams, shape, shape_top_k, without
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

    Under sampling the same plan with random tokens: the chain is sampled from the
    draft's q, and a node is noted for one more child when the most likely token not
    yet drawn there has q >= `threshold` (scored as the path's probability times
    that q); the child itself is drawn only when the note is taken up, from q less
    the node's children so far, and its branch continues by sampling. A node may be
    noted again after each child, so it can get more than two.

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
        self.chain = ModelDrafter(model)  # reads the prompt ahead of the first round
        self.trees = 0
        self.nodes = 0
        self.branches = 0
        self.side_wins = 0  # rounds whose accepted path left the first branch
        self.sampled_trees = 0  # trees drawn at random (temperature > 0)

    def propose(self, context: Sequence[int], n: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        n = min(n, self.model.n_ctx - len(context) + 1)
        if n <= 0:
            return Proposal(q=None if params.greedy else [])
        if not params.greedy:
            return self._propose_sampled(list(context), n, params, rng)
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
        return self._done(tokens, parents, None, leaves, t0)

    def _propose_sampled(self, context: list[int], n: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        """The tree with its tokens drawn from the draft's q (see the class docstring)."""
        d = self.model
        if 0 < params.top_k < d.n_vocab:
            k = params.top_k
            first = lambda c: shape_top_k(*d.sync_top_k(c, k)[1], params)  # noqa: E731
            step = lambda t: shape_top_k(*d.eval_top_k([t], k, rows="last")[0], params)  # noqa: E731
        else:
            first = lambda c: shape(d.sync(c)[1], params)  # noqa: E731
            step = lambda t: shape(d.eval([t])[0], params)  # noqa: E731
        t0 = d.decode_seconds
        tokens: list[int] = []
        parents: list[int] = []
        qs: list[Dist] = []  # per node: the draft's q at its parent, which it was drawn from
        paths: list[list[int]] = []
        reach: list[float] = []  # per node: the draft's probability of its path
        at: dict[int, Dist] = {}  # per parent node (-1: the root): q there, less the children drawn so far
        full: dict[int, Dist] = {}  # per parent node: q there
        notes: list[tuple[float, int, int]] = []  # heap of (-score, tie, node): a node noted for one more child

        def note(node: int) -> None:
            """Note `node` for another child if the most likely token not drawn there is likely enough."""
            rest = at[node]
            if len(rest.ids) == 0:
                return
            best = float(full[node].prob(int(rest.ids[int(np.argmax(rest.probs))])))
            if best >= self.threshold:
                score = (reach[node] if node >= 0 else 1.0) * best
                heapq.heappush(notes, (-score, len(notes), node))

        def draw(node: int) -> int:
            """Draw a child of `node` from q less its children so far, and add it."""
            x = at[node].sample(rng)
            at[node] = without(at[node], x)
            tokens.append(x)
            parents.append(node)
            qs.append(full[node])
            paths.append((paths[node] if node >= 0 else []) + [x])
            reach.append((reach[node] if node >= 0 else 1.0) * full[node].prob(x))
            note(node)
            return len(tokens) - 1

        def grow(node: int, q: Dist) -> None:
            """Sample a branch below `node` (q: the draft's distribution after it) to depth n."""
            while True:
                full[node] = at[node] = q
                node = draw(node)
                if len(paths[node]) >= n or len(tokens) >= self.max_nodes:
                    return
                q = step(tokens[node])

        grow(-1, first(context))
        leaves = 1
        while notes and leaves < self.max_branches and len(tokens) < self.max_nodes:
            _, _, parent = heapq.heappop(notes)
            if len(at[parent].ids) == 0:
                continue
            node = draw(parent)
            leaves += 1
            if len(paths[node]) < n and len(tokens) < self.max_nodes:
                grow(node, first(context + paths[node]))
        self.sampled_trees += 1
        return self._done(tokens, parents, qs, leaves, t0)

    def _done(self, tokens: list[int], parents: list[int], q: list[Dist] | None, leaves: int, t0: float) -> Proposal:
        self.trees += 1
        self.nodes += len(tokens)
        self.branches += leaves
        return Proposal(tokens=tokens, parents=parents, q=q, decode_seconds=self.model.decode_seconds - t0)

    def prepare(self, tokens: Sequence[int]) -> int:
        return self.chain.prepare(tokens)

    def observe(self, prop: Proposal, outcome: RoundOutcome) -> None:
        from ..tokentree import on_first_branch

        if prop.parents is not None and outcome.path is not None and not on_first_branch(prop.parents, outcome.path):
            self.side_wins += 1

    def describe(self) -> list[str]:
        lines = []
        if self.trees:
            how = (
                f"{self.sampled_trees} drawn at random from the draft's distribution"
                if self.sampled_trees == self.trees
                else f"{self.sampled_trees} of them drawn at random"
                if self.sampled_trees
                else "greedy"
            )
            lines.append(
                f"token tree: {self.trees} trees ({how}), {self.nodes / self.trees:.1f} nodes and "
                f"{self.branches / self.trees:.2f} branches per tree, a side branch won {self.side_wins} rounds "
                f"(branch where the draft's next choice has p >= {self.threshold}; "
                f"at most {self.max_branches} branches, {self.max_nodes} nodes)"
            )
        return lines

    def reset(self) -> None:
        self.model.reset()
