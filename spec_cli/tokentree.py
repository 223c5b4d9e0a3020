"""Token trees: several draft continuations verified in one target pass. numpy only.

A tree of drafted tokens is kept flat: node i has tokens[i] and parents[i], with
parents[i] < i (parents come first, so a batch in node order never sees a child
before its parent) and -1 for the children of the root. The root is not a draft:
it is the last token of the context, the first row of the verification batch.
So row 0 of the target's logits belongs to the root and row i + 1 to node i,
the same layout as a chain ([last] + drafts) with parents [-1, 0, 1, ...].

Greedy verification (SpecInfer, Miao et al. 2023; Medusa's tree attention):
start at the root and move to the child whose token is the target's argmax at
the current node, until no child matches. Every token on that walk is what plain
greedy decoding would have produced after the tokens before it, so the rule is
lossless; siblings carry distinct tokens, so the walk is unique and it ends on
the longest accepted branch.

Sampling (SpecInfer's multi-candidate rule, in the without-replacement form of
recursive rejection sampling, Jeon et al. 2024): at a node, p is the target's
distribution after it and q the draft's, both shaped by the same sampling
parameters, and the node's children x_1..x_k were drawn from q one after another
without replacement (each from q less its earlier siblings, renormalized: q_i).
The children are tested in node order: x_i is accepted with probability
min(1, p_i(x_i) / q_i(x_i)); on rejection p_{i+1} = normalize(max(p_i - q_i, 0))
and q_{i+1} = q_i without x_i; when every child is rejected the token is drawn
from p_{k+1}. An accepted child is where the walk goes on, by the same rule with
that node's p and q; a node without children (an accepted leaf) draws the bonus
token from its p.

Why the emitted token is distributed as p exactly. Claim: if, given everything
before it, candidate x_i is distributed as q_i, the rule emits y with probability
p_i(y). With no candidate left it draws from p_i. Otherwise it accepts y with
probability q_i(y) min(1, p_i(y) / q_i(y)) = min(p_i(y), q_i(y)), rejects with
probability b = sum max(p_i - q_i, 0), and whatever x_i was, by the claim one step
on, what follows a rejection emits p_{i+1} = max(p_i - q_i, 0) / b; in all,
min(p_i, q_i)(y) + max(p_i - q_i, 0)(y) = p_i(y). Taking x_i out of q loses
nothing: it is rejected only where p_i(x_i) < q_i(x_i), so p_{i+1}(x_i) = 0. What
the drafter must honour: each child is drawn from q less its earlier siblings, and
whether a child exists may depend on anything drawn before it (budgets, the
draft's probabilities so far), never on its own token. Below an accepted child
the children were drawn from the draft after it, independently of the coins
above, so the claim holds there too, and by induction every emitted token
follows the target's distribution after the ones before it.

Repeated siblings (children drawn i.i.d., with replacement) are merged into their
first occurrence: the rule skips a sibling whose token it has already tested. The
first occurrences of i.i.d. draws from q are draws without replacement (given the
tokens seen, the next new one is q restricted to the rest), and whether a new
one turns up depends only on those already seen, so the claim covers them. (Testing
a repeat again would move p once more by the rejected token's q and bias it.)
A chain, one child per node, is accept_sampled, uniform for uniform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .sampling import Dist, residual, without


def check_tree(tokens: Sequence[int], parents: Sequence[int]) -> None:
    """Raise ValueError unless (tokens, parents) is a well-formed tree with distinct siblings."""
    if len(tokens) != len(parents):
        raise ValueError(f"{len(tokens)} tokens but {len(parents)} parents")
    seen: set[tuple[int, int]] = set()
    for i, (t, p) in enumerate(zip(tokens, parents)):
        if not -1 <= p < i:
            raise ValueError(f"node {i} has parent {p}; a parent must come before its children")
        if (p, int(t)) in seen:
            raise ValueError(f"node {i} repeats token {t} under parent {p}")
        seen.add((p, int(t)))


def depths(parents: Sequence[int]) -> np.ndarray:
    """Depth of each node; the root's children are at depth 1."""
    d = np.zeros(len(parents), dtype=np.int64)
    for i, p in enumerate(parents):
        d[i] = 1 if p < 0 else d[p] + 1
    return d


def leaves(parents: Sequence[int]) -> list[int]:
    """Nodes without children, in node order."""
    has_child = np.zeros(len(parents), dtype=bool)
    for p in parents:
        if p >= 0:
            has_child[p] = True
    return [int(i) for i in np.flatnonzero(~has_child)]


def leaf_sets(parents: Sequence[int]) -> list[list[int]]:
    """For each node, the ordinals (0, 1, ... in `leaves` order) of the leaves at or below it.

    A branch of the tree is the path from the root to one leaf; the backend gives
    leaf k its own sequence id, and a node belongs to the sequences of every branch
    that passes through it.
    """
    sets: list[list[int]] = [[] for _ in parents]
    for k, leaf in enumerate(leaves(parents)):
        node = leaf
        while node >= 0:
            sets[node].append(k)
            node = parents[node]
    return sets


def path_to(parents: Sequence[int], node: int) -> list[int]:
    """Node indices from the root's child down to `node` (empty for the root, -1)."""
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def is_path(parents: Sequence[int], path: Sequence[int]) -> bool:
    """True when `path` runs from a child of the root down the tree, one level at a time."""
    prev = -1
    for node in path:
        if not 0 <= node < len(parents) or parents[node] != prev:
            return False
        prev = node
    return True


def accept_tree_greedy(tokens: Sequence[int], parents: Sequence[int], target_argmax: Sequence[int]) -> tuple[list[int], int]:
    """Greedy acceptance on a tree.

    target_argmax[0] is the target's argmax after the root, target_argmax[i + 1]
    after node i. Returns (accepted path as node indices from the root down, the
    token the target adds after it: the correction, or the bonus token at a leaf).
    """
    assert len(target_argmax) == len(tokens) + 1
    children: dict[int, dict[int, int]] = {}
    for i, p in enumerate(parents):
        children.setdefault(p, {})[int(tokens[i])] = i
    path: list[int] = []
    node = -1
    while True:
        want = int(target_argmax[node + 1])
        nxt = children.get(node, {}).get(want)
        if nxt is None:
            return path, want
        path.append(nxt)
        node = nxt


def prune(tokens: Sequence[int], parents: Sequence[int], max_depth: int, max_nodes: int) -> tuple[list[int], list[int]]:
    """The subtree of nodes at depth <= max_depth, cut to the first max_nodes of them in node order.

    A dropped node takes its descendants with it; the kept nodes are renumbered
    so that parents still come first.
    """
    kept, out_parents = prune_nodes(parents, max_depth, max_nodes)
    return [int(tokens[i]) for i in kept], out_parents


def prune_nodes(parents: Sequence[int], max_depth: int, max_nodes: int) -> tuple[list[int], list[int]]:
    """`prune` as (the kept nodes' old indices, their new parents), to carry per-node data along.

    Under sampling the cut stays exact: it keeps a node by its depth and its place in
    node order, both fixed before its token was drawn, and a node's earlier siblings
    come before it, so each node keeps a prefix of its children in drawing order.
    """
    new_index: dict[int, int] = {-1: -1}
    kept: list[int] = []
    out_parents: list[int] = []
    d = depths(parents)
    for i, p in enumerate(parents):
        if len(kept) >= max_nodes:
            break
        if d[i] > max_depth or p not in new_index:
            continue
        new_index[i] = len(kept)
        kept.append(i)
        out_parents.append(new_index[p])
    return kept, out_parents


def children_of(parents: Sequence[int]) -> dict[int, list[int]]:
    """parent -> its children in node order (-1: the root's)."""
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        kids.setdefault(int(p), []).append(i)
    return kids


def sibling_outcomes(p: Dist, q: Dist, tokens: Sequence[int]) -> tuple[list[float], Dist]:
    """The sampling rule at one node, as probabilities (see the module's docstring).

    `tokens` are the node's children in drawing order, drawn from q; p is the target's
    distribution at the node. Returns (for each child, the probability that the rule
    accepts it; the distribution drawn from when every child is rejected). A repeated
    token is merged into its first occurrence (probability 0).
    """
    accept: list[float] = []
    reach = 1.0
    seen: set[int] = set()
    for x in tokens:
        x = int(x)
        if x in seen or len(q.ids) == 0:
            accept.append(0.0)
            continue
        seen.add(x)
        qx, px = q.prob(x), p.prob(x)
        a = min(1.0, px / qx) if qx > 0 else 0.0
        accept.append(reach * a)
        reach *= 1.0 - a
        p, q = residual(p, q), without(q, x)
    return accept, p


def accept_tree_sampled(
    tokens: Sequence[int],
    parents: Sequence[int],
    q: Sequence[Dist],
    p_at: Callable[[int], Dist],
    rng: np.random.Generator,
) -> tuple[list[int], int]:
    """Lossless acceptance on a tree under sampling (the rule of the module's docstring).

    q[i] is the draft distribution node i was drawn from: the draft's at its parent,
    before its earlier siblings were taken out (all siblings share it). p_at(node) is
    the target's distribution after `node` (-1: the root), asked only for the nodes
    the walk reaches. Returns (accepted path from the root down, the token drawn after
    it: from the residual where every child was rejected, else the bonus from p at the
    accepted leaf). One uniform per tested child and one per drawn token, as
    accept_sampled spends them on a chain.
    """
    assert len(q) == len(tokens) == len(parents)
    kids = children_of(parents)
    path: list[int] = []
    node = -1
    while True:
        p = p_at(node)
        below = kids.get(node, [])
        nxt = None
        if below:
            qd = q[below[0]]
            seen: set[int] = set()
            for c in below:
                x = int(tokens[c])
                if x in seen or len(qd.ids) == 0:
                    continue  # a repeat is merged into its first occurrence
                seen.add(x)
                qx = qd.prob(x)
                if qx > 0 and rng.random() * qx < p.prob(x):  # u < p/q without dividing
                    nxt = c
                    break
                p, qd = residual(p, qd), without(qd, x)
        if nxt is None:
            return path, p.sample(rng)
        path.append(nxt)
        node = nxt


def on_first_branch(parents: Sequence[int], path: Sequence[int]) -> bool:
    """True when `path` stays on the first branch (nodes 0, 1, 2, ... each the child of the one before).

    The tree drafter builds its greedy chain first, so a path that leaves the first
    branch is a round that a side branch won.
    """
    return all(node == k and parents[node] == k - 1 for k, node in enumerate(path))
