"""The token-tree logic on hand-built trees: layout, greedy acceptance, pruning. No model."""

from __future__ import annotations

import pytest

from spec_cli.tokentree import (
    accept_tree_greedy,
    check_tree,
    depths,
    is_path,
    leaf_sets,
    leaves,
    on_first_branch,
    path_to,
    prune,
)
from spec_cli.verify import accept_greedy

# root -> 10 -> 11 -> 12        (nodes 0, 1, 2: the greedy chain)
#            \-> 21 -> 22       (nodes 3, 4: a side branch under node 0)
#      \-> 30 -> 31             (nodes 5, 6: a side branch under the root)
TOKENS = [10, 11, 12, 21, 22, 30, 31]
PARENTS = [-1, 0, 1, 0, 3, -1, 5]


def argmax_rows(after: dict[int, int], default: int = 99) -> list[int]:
    """Target argmax per row: row 0 after the root (key -1), row i + 1 after node i."""
    return [after.get(node, default) for node in range(-1, len(TOKENS))]


def test_layout():
    check_tree(TOKENS, PARENTS)
    assert depths(PARENTS).tolist() == [1, 2, 3, 2, 3, 1, 2]
    assert leaves(PARENTS) == [2, 4, 6]
    # leaf ordinals below each node: node 0 carries the chain's leaf and the side branch's
    assert leaf_sets(PARENTS) == [[0, 1], [0], [0], [1], [1], [2], [2]]
    assert path_to(PARENTS, 4) == [0, 3, 4]
    assert path_to(PARENTS, -1) == []
    assert is_path(PARENTS, [0, 3, 4]) and is_path(PARENTS, [])
    assert not is_path(PARENTS, [0, 4]) and not is_path(PARENTS, [3]) and not is_path(PARENTS, [0, 7])


@pytest.mark.parametrize(
    "tokens, parents, why",
    [
        ([1, 2], [-1], "parents"),
        ([1, 2], [-1, 1], "before its children"),
        ([1, 2], [-1, -2], "before its children"),
        ([1, 1], [-1, -1], "repeats token"),
    ],
)
def test_malformed_trees_are_refused(tokens, parents, why):
    with pytest.raises(ValueError, match=why):
        check_tree(tokens, parents)


def test_accepts_the_whole_chain_and_adds_the_bonus():
    path, extra = accept_tree_greedy(TOKENS, PARENTS, argmax_rows({-1: 10, 0: 11, 1: 12, 2: 7}))
    assert path == [0, 1, 2] and extra == 7
    assert on_first_branch(PARENTS, path)


def test_side_branch_under_a_node_wins():
    # the target agrees on 10, then prefers 21 (the draft's second choice) and 22
    path, extra = accept_tree_greedy(TOKENS, PARENTS, argmax_rows({-1: 10, 0: 21, 3: 22, 4: 5}))
    assert path == [0, 3, 4] and extra == 5
    assert not on_first_branch(PARENTS, path)


def test_side_branch_under_the_root_wins_then_is_rejected():
    path, extra = accept_tree_greedy(TOKENS, PARENTS, argmax_rows({-1: 30, 5: 8}))
    assert path == [5] and extra == 8


def test_nothing_matches():
    path, extra = accept_tree_greedy(TOKENS, PARENTS, argmax_rows({-1: 4}))
    assert path == [] and extra == 4
    assert on_first_branch(PARENTS, path)


def test_a_chain_is_a_tree_with_the_same_answer():
    drafts = [5, 6, 7, 8]
    parents = [-1, 0, 1, 2]
    for target in ([5, 6, 7, 8, 9], [5, 6, 1, 1, 1], [2, 2, 2, 2, 2]):
        path, extra = accept_tree_greedy(drafts, parents, target)
        n, e = accept_greedy(drafts, target)
        assert path == list(range(n)) and extra == e


def test_prune_by_depth_and_count():
    assert prune(TOKENS, PARENTS, 1, 99) == ([10, 30], [-1, -1])
    # the first four nodes in order: the chain and the side branch's first node
    assert prune(TOKENS, PARENTS, 3, 4) == ([10, 11, 12, 21], [-1, 0, 1, 0])
    # at depth 2 node 2 is dropped, so the kept nodes are renumbered
    t, p = prune(TOKENS, PARENTS, 2, 99)
    assert t == [10, 11, 21, 30, 31] and p == [-1, 0, 0, -1, 3]
    check_tree(t, p)
    assert prune(TOKENS, PARENTS, 0, 99) == ([], [])
    assert prune(TOKENS, PARENTS, 9, 99) == (TOKENS, PARENTS)
