"""The token-tree sampling rule on small synthetic distributions: exact enumeration and Monte-Carlo. No model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spec_cli.sampling import Dist, without
from spec_cli.tokentree import accept_tree_sampled, sibling_outcomes
from spec_cli.verify import accept_sampled

V = 4


def table(seed: int, zeros: bool) -> dict[int, Dist]:
    """A next-token distribution per last token (-1: the root), some with tokens left out (as top-k does)."""
    rng = np.random.default_rng(seed)
    out = {}
    for last in range(-1, V):
        w = rng.dirichlet(np.full(V, 0.7))
        if zeros and last % 2 == 0:
            w[rng.integers(V)] = 0.0
            w /= w.sum()
        ids = np.flatnonzero(w > 0)
        out[last] = Dist(ids, w[ids])
    return out


P = table(1, zeros=True)
Q = table(2, zeros=True)

# Tree shapes: a node is the list of its children's shapes.
SHAPES = {
    "chain": [[[]]],
    "two-leaves": [[], []],
    "wide": [[[], []], [[]], []],
    "deep-side": [[[]], [[[]], []]],
}


def draws(q: Dist, k: int, replace: bool):
    """Every ordered k-tuple of children drawn from q, with its probability (without or with replacement)."""
    for combo in itertools.product(q.ids.tolist(), repeat=k):
        if not replace and len(set(combo)) < k:
            continue
        prob, rest = 1.0, q
        for x in combo:
            prob *= rest.prob(x)
            if not replace:
                rest = without(rest, x)
        if prob > 0:
            yield combo, prob


def emitted(last: int, shape, depth: int, q_table, replace: bool, pick=None) -> np.ndarray:
    """Exact distribution of the next `depth` tokens the rule emits below a node (flat, V**depth cells).

    The children are drawn from q_table (or chosen by `pick`, a deliberately wrong drafter);
    the rule's probabilities come from sibling_outcomes. After a token from the residual the
    round ends, and the next round is the target itself.
    """
    out = np.zeros(V**depth)
    if depth == 0:
        return np.ones(1)
    k = len(shape)
    options = [(tuple(pick(q_table[last], k)), 1.0)] if pick else list(draws(q_table[last], k, replace))
    for combo, prob in options:
        accept, rest = sibling_outcomes(P[last], Q[last], combo)
        for x, a, child in zip(combo, accept, shape):
            if a > 0:
                out[x * V ** (depth - 1) : (x + 1) * V ** (depth - 1)] += (
                    prob * a * emitted(x, child, depth - 1, q_table, replace, pick)
                )
        for y, r in zip(rest.ids.tolist(), rest.probs):
            out[y * V ** (depth - 1) : (y + 1) * V ** (depth - 1)] += prob * (1 - sum(accept)) * r * target_joint(y, depth - 1)
    return out


def target_joint(last: int, depth: int) -> np.ndarray:
    """The target's own distribution of the next `depth` tokens after `last`."""
    if depth == 0:
        return np.ones(1)
    out = np.zeros(V**depth)
    for y, r in zip(P[last].ids.tolist(), P[last].probs):
        out[y * V ** (depth - 1) : (y + 1) * V ** (depth - 1)] = r * target_joint(y, depth - 1)
    return out


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("replace", [False, True], ids=["distinct", "duplicates"])
def test_tree_rule_is_exact(name, replace):
    """Children drawn from q (without replacement, or i.i.d. with repeats merged): the first two
    emitted tokens are distributed exactly as the target's."""
    got = emitted(-1, SHAPES[name], 2, Q, replace)
    assert got.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(got, target_joint(-1, 2), atol=1e-12)


def test_duplicate_siblings_do_occur_in_the_enumeration():
    combos = [c for c, _ in draws(Q[-1], 3, replace=True)]
    assert any(len(set(c)) < 3 for c in combos)


def top(q: Dist, k: int) -> list[int]:
    return [int(q.ids[i]) for i in np.argsort(-q.probs, kind="stable")[:k]]


@pytest.mark.parametrize("name", ["two-leaves", "wide"])
def test_the_exactness_check_has_power(name):
    """The same check fails a drafter that breaks the rule's premise: the draft's top choices
    (the greedy tree's branches) or children drawn from another distribution than the q given."""
    want = target_joint(-1, 2)
    deterministic = emitted(-1, SHAPES[name], 2, Q, False, pick=top)
    assert np.abs(deterministic - want).max() > 1e-3
    other = emitted(-1, SHAPES[name], 2, table(3, zeros=False), False)
    assert np.abs(other - want).max() > 1e-3


def build(shape, q_table, rng, replace: bool):
    """A random flat tree of the given shape: (tokens, parents, q per node, last token per node)."""
    tokens, parents, qs, lasts = [], [], [], []

    def grow(node: int, last: int, kids) -> None:
        rest = q_table[last]
        for child in kids:
            x = rest.sample(rng)
            if not replace:
                rest = without(rest, x)
            tokens.append(x)
            parents.append(node)
            qs.append(q_table[last])
            lasts.append(x)
            grow(len(tokens) - 1, x, child)

    grow(-1, -1, shape)
    return tokens, parents, qs, lasts


@pytest.mark.parametrize("name, replace", [("wide", True), ("deep-side", False)])
def test_sampled_rule_passes_chi_square_against_the_target(name, replace):
    """accept_tree_sampled itself, Monte-Carlo: the first two tokens of a round (the second from the
    target when the round ends after one) against the target's joint distribution."""
    rng = np.random.default_rng(7)
    runs = 6000
    counts = np.zeros(V * V)
    for _ in range(runs):
        tokens, parents, qs, lasts = build(SHAPES[name], Q, rng, replace)
        path, extra = accept_tree_sampled(tokens, parents, qs, lambda n, lasts=lasts: P[lasts[n] if n >= 0 else -1], rng)
        out = [tokens[i] for i in path] + [extra]
        if len(out) < 2:
            out.append(P[out[0]].sample(rng))
        counts[out[0] * V + out[1]] += 1
    want = target_joint(-1, 2) * runs
    cells = want > 5
    chi2 = ((counts[cells] - want[cells]) ** 2 / want[cells]).sum()
    assert chi2 < 42.3, chi2  # 99.99 % quantile of chi-square with <= 15 degrees of freedom
    # power: the draft's own joint distribution fails the same statistic
    q_joint = np.array([Q[-1].prob(a) * Q[a].prob(b) for a in range(V) for b in range(V)]) * runs
    cells_q = q_joint > 5
    assert ((counts[cells_q] - q_joint[cells_q]) ** 2 / q_joint[cells_q]).sum() > 42.3


def test_a_chain_is_accept_sampled_uniform_for_uniform():
    drafts = [0, 1, 3]
    parents = [-1, 0, 1]
    lasts = [-1, *drafts]
    q = [Q[lasts[i]] for i in range(3)]
    for seed in range(200):
        # tokens Q gives no mass are fine here: the rule must still match accept_sampled's choices
        path, extra = accept_tree_sampled(drafts, parents, q, lambda n: P[lasts[n + 1]], np.random.default_rng(seed))
        n_acc, e = accept_sampled(drafts, q, [P[x] for x in lasts], np.random.default_rng(seed))
        assert (len(path), extra) == (n_acc, e) and path == list(range(n_acc))


def test_without_renormalizes_and_empties():
    q = Dist(np.array([2, 5, 9]), np.array([0.5, 0.3, 0.2]))
    r = without(q, 2)
    assert r.ids.tolist() == [5, 9] and r.probs.tolist() == pytest.approx([0.6, 0.4])
    assert without(q, 7) is q
    assert len(without(Dist.point(4), 4).ids) == 0
