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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
    new_index: dict[int, int] = {-1: -1}
    out_tokens: list[int] = []
    out_parents: list[int] = []
    d = depths(parents)
    for i, (t, p) in enumerate(zip(tokens, parents)):
        if len(out_tokens) >= max_nodes:
            break
        if d[i] > max_depth or p not in new_index:
            continue
        new_index[i] = len(out_tokens)
        out_tokens.append(int(t))
        out_parents.append(new_index[p])
    return out_tokens, out_parents


def on_first_branch(parents: Sequence[int], path: Sequence[int]) -> bool:
    """True when `path` stays on the first branch (nodes 0, 1, 2, ... each the child of the one before).

    The tree drafter builds its greedy chain first, so a path that leaves the first
    branch is a round that a side branch won.
    """
    return all(node == k and parents[node] == k - 1 for k, node in enumerate(path))
