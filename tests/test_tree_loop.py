"""The token-tree drafter and tree verification on scripted fakes."""

from __future__ import annotations

import numpy as np
import pytest

from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.drafters.tree import TreeDrafter, top_two
from spec_cli.sampling import SamplingParams
from spec_cli.strategy import FixedStrategy
from spec_cli.tokentree import check_tree, depths, leaves
from tests.fakes import FakeModel, soft_lm, table_lm

V = 16
CYCLE = {i: i % 9 + 1 for i in range(1, 10)}  # the target: 1 -> 2 -> ... -> 9 -> 1


def hesitant_lm(first: dict[int, int], second: dict[int, int], n_vocab: int = V):
    """A draft whose next token depends on the last one: first[last] is its choice, and
    where second[last] exists it is a close runner-up (p about 0.45 against 0.55)."""

    def fn(history):
        out = np.zeros(n_vocab, dtype=np.float32)
        last = history[-1]
        out[first.get(last, 0)] = 10.0
        if last in second:
            out[second[last]] = 9.8
        return out

    return fn


# The draft agrees with the target except after 2, where it prefers 13 but hesitates with 3.
WRONG_AFTER_2 = {**CYCLE, 2: 13}
RUNNER_UP = {2: 3}


def target_only(prompt, n, n_ctx=512):
    t = FakeModel(table_lm(CYCLE, V), V, n_ctx=n_ctx)
    return Engine(t).generate(list(prompt), GenerateOptions(max_tokens=n, draft_len=0))


def run(drafter_cls, prompt=(1,), n=36, g=4, n_ctx=512, sampling=None, **kw):
    t = FakeModel(table_lm(CYCLE, V), V, n_ctx=n_ctx)
    d = FakeModel(hesitant_lm(WRONG_AFTER_2, RUNNER_UP), V, n_ctx=n_ctx)
    drafter = drafter_cls(d, **kw)
    strategy = FixedStrategy(drafter, g)
    opts = GenerateOptions(max_tokens=n, draft_len=g, sampling=sampling or SamplingParams())
    res = Engine(t, strategy=strategy).generate(list(prompt), opts)
    return res, t, d, drafter, strategy


def test_top_two():
    z = np.array([0.0, 3.0, 1.0, 2.9], dtype=np.float32)
    t1, p1, t2, p2 = top_two(z)
    p = np.exp(z) / np.exp(z).sum()
    assert (t1, t2) == (1, 3)
    assert p1 == pytest.approx(p[1]) and p2 == pytest.approx(p[3])


def test_side_branch_recovers_what_the_chain_loses():
    chain, *_ = run(ModelDrafter)
    tree, t, d, drafter, strategy = run(TreeDrafter)
    reference = target_only([1], 36).tokens
    assert chain.tokens == reference
    assert tree.tokens == reference
    # the chain stops at every 2; the tree's branch carries on through 3
    assert tree.stats.target_passes < chain.stats.target_passes
    assert tree.stats.tokens_per_pass > chain.stats.tokens_per_pass
    assert drafter.side_wins > 0
    assert any("a side branch won" in line for line in strategy.describe())
    # the target's cache holds the context minus its last token, as after a chain round
    assert t.tokens == ([1] + tree.tokens)[:-1]


def test_no_branch_without_hesitation():
    # a draft that is sure everywhere gives plain chains: one leaf per tree
    t = FakeModel(table_lm(CYCLE, V), V)
    d = FakeModel(hesitant_lm(CYCLE, {}), V)
    drafter = TreeDrafter(d)
    res = Engine(t, strategy=FixedStrategy(drafter, 4)).generate([1], GenerateOptions(max_tokens=20))
    assert res.tokens == target_only([1], 20).tokens
    assert drafter.branches == drafter.trees > 0


def test_tree_respects_its_budgets():
    # hesitation everywhere: every node offers a runner-up
    first = {i: (i % 9) + 1 for i in range(V)}
    second = {i: ((i + 4) % 9) + 1 for i in range(V)}
    d = FakeModel(hesitant_lm(first, second), V)
    for branches, nodes, depth, n_leaves in [(4, 12, 4, 4), (2, 12, 6, 2), (4, 5, 4, 2), (1, 12, 3, 1)]:
        drafter = TreeDrafter(d, max_branches=branches, max_nodes=nodes)
        prop = drafter.propose([1, 2, 3], depth, SamplingParams(), np.random.default_rng(0))
        check_tree(prop.tokens, prop.parents)
        assert len(prop.tokens) <= nodes
        assert len(leaves(prop.parents)) == n_leaves
        assert depths(prop.parents).max() <= depth
        # the first branch is the draft's greedy chain
        chain = [1, 2, 3]
        for k in range(min(depth, nodes)):
            chain.append(first[chain[-1]])
            assert prop.tokens[k] == chain[-1] and prop.parents[k] == k - 1


def test_tree_near_the_end_of_the_context_is_cut_to_fit():
    # n_ctx 24: trees of up to 12 nodes no longer fit near the end, and the fake
    # target refuses (ContextFull) anything that would overflow
    n_ctx = 24
    res, t, *_ = run(TreeDrafter, n=100, n_ctx=n_ctx)
    ref = target_only([1], 100, n_ctx=n_ctx)
    assert res.tokens == ref.tokens
    assert res.stats.stop_reason == ref.stats.stop_reason == "context"


def test_sampling_drafts_random_trees_and_verifies_them():
    t = FakeModel(table_lm(CYCLE, V), V)
    d = FakeModel(hesitant_lm(WRONG_AFTER_2, RUNNER_UP), V)
    drafter = TreeDrafter(d)
    strategy = FixedStrategy(drafter, 4)
    opts = GenerateOptions(max_tokens=30, sampling=SamplingParams(temperature=1.0), seed=3)
    res = Engine(t, strategy=strategy).generate([1], opts)
    assert res.stats.drafted > 0 and drafter.sampled_trees == drafter.trees > 0
    assert drafter.branches > drafter.trees, "no tree branched"
    assert any("drawn at random" in line for line in strategy.describe())
    assert t.tokens == ([1] + res.tokens)[:-1]


def test_sampled_tree_draws_siblings_without_replacement_from_q():
    d = FakeModel(soft_lm(V, seed=5), V)
    drafter = TreeDrafter(d, threshold=0.05, max_branches=4, max_nodes=12)
    params = SamplingParams(temperature=1.5, top_k=6)
    for seed in range(20):
        prop = drafter.propose([1, 2, 3], 4, params, np.random.default_rng(seed))
        check_tree(prop.tokens, prop.parents)  # distinct siblings
        assert len(prop.q) == len(prop.tokens)
        for i, (tok, par) in enumerate(zip(prop.tokens, prop.parents)):
            assert prop.q[i].prob(tok) > 0  # drawn from its q
            assert all(prop.q[j] is prop.q[i] for j, p in enumerate(prop.parents) if p == par)
        assert depths(prop.parents).max() <= 4 and len(prop.tokens) <= 12
    assert drafter.branches > drafter.trees


def test_sampled_tree_keeps_the_target_distribution_through_the_loop():
    """The loop on fakes: the first two tokens, drafted as random trees, against the target's own."""
    n = 5
    tlm, dlm = soft_lm(n, seed=11), soft_lm(n, seed=12, temperature=0.5)
    params = SamplingParams(temperature=1.0, top_k=0)
    t, d = FakeModel(tlm, n), FakeModel(dlm, n)
    drafter = TreeDrafter(d, threshold=0.1)
    engine = Engine(t, FixedStrategy(drafter, 3))
    runs = 3000
    counts = np.zeros(n * n)
    for seed in range(runs):
        t.reset()
        d.reset()
        out = engine.generate([0], GenerateOptions(max_tokens=2, draft_len=3, seed=seed, sampling=params)).tokens
        counts[out[0] * n + out[1]] += 1
    assert drafter.branches > drafter.trees
    from spec_cli.sampling import shape

    def p(history):
        return shape(tlm(history), params)

    want = np.array([p([0]).prob(a) * p([0, a]).prob(b) for a in range(n) for b in range(n)]) * runs
    cells = want > 5
    chi2 = ((counts[cells] - want[cells]) ** 2 / want[cells]).sum()
    assert chi2 < 52.6, chi2  # 99.9 % quantile of chi-square with <= 24 degrees of freedom
    qd = [shape(dlm(h), params) for h in ([0],)]
    draft_joint = np.array([qd[0].prob(a) * shape(dlm([0, a]), params).prob(b) for a in range(n) for b in range(n)]) * runs
    cq = draft_joint > 5
    assert ((counts[cq] - draft_joint[cq]) ** 2 / draft_joint[cq]).sum() > 52.6  # the draft's own fails it


def test_tree_rows_follow_their_own_branch():
    """The fake's eval_tree gives each node the logits of its own branch: a check on the fake itself."""
    seen = []

    def lm(history):
        seen.append(tuple(history))
        return np.zeros(V, dtype=np.float32)

    t = FakeModel(lm, V)
    t.eval([7, 8], logits="none")
    seen.clear()
    t.eval_tree(9, [1, 2, 3], [-1, 0, -1])
    assert seen == [(7, 8, 9), (7, 8, 9, 1), (7, 8, 9, 1, 2), (7, 8, 9, 3)]
    t.keep_branch([0, 1])
    assert t.tokens == [7, 8, 9, 1, 2]
