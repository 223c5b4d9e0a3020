"""Sampling transforms and the acceptance rule, numpy only."""

from __future__ import annotations

import numpy as np
import pytest

from spec_cli.sampling import Dist, SamplingParams, residual, shape
from spec_cli.verify import accept_greedy, accept_sampled


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


# --- shape --------------------------------------------------------------------


def test_greedy_is_argmax_point_mass():
    d = shape(np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32), SamplingParams(temperature=0))
    assert d.ids.tolist() == [1] and d.probs.tolist() == [1.0]


def test_temperature_matches_softmax():
    z = np.array([1.0, 2.0, 0.5, -3.0], dtype=np.float32)
    d = shape(z, SamplingParams(temperature=0.7, top_k=0))
    assert np.allclose(d.dense(4), softmax(z.astype(np.float64) / 0.7))


def test_top_k_keeps_k_largest():
    z = np.array([5.0, 1.0, 4.0, 3.0, 0.0, 2.0], dtype=np.float32)
    d = shape(z, SamplingParams(temperature=1.0, top_k=3))
    assert d.ids.tolist() == [0, 2, 3]
    assert np.allclose(d.probs, softmax(np.array([5.0, 4.0, 3.0])))


def test_top_p_keeps_smallest_prefix_reaching_mass():
    z = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    d = shape(z.astype(np.float32), SamplingParams(temperature=1.0, top_k=0, top_p=0.8))
    assert d.ids.tolist() == [0, 1]  # 0.5 + 0.3 reaches 0.8
    d = shape(z.astype(np.float32), SamplingParams(temperature=1.0, top_k=0, top_p=0.81))
    assert d.ids.tolist() == [0, 1, 2]
    assert np.isclose(d.probs.sum(), 1.0)


def test_top_k_on_a_big_vocabulary_is_sparse():
    z = np.random.default_rng(0).normal(size=262144).astype(np.float32)
    d = shape(z, SamplingParams(temperature=0.8, top_k=40))
    assert len(d.ids) == 40 and np.all(np.diff(d.ids) > 0)
    assert d.argmax() == int(np.argmax(z))


def test_dist_lookup_and_sampling_frequencies():
    d = Dist(np.array([2, 5, 9]), np.array([0.2, 0.5, 0.3]))
    assert d.prob(5) == 0.5 and d.prob(3) == 0.0 and d.prob(100) == 0.0
    assert d.probs_at(np.array([9, 0, 2])).tolist() == [0.3, 0.0, 0.2]
    rng = np.random.default_rng(1)
    draws = np.array([d.sample(rng) for _ in range(20000)])
    for tok, p in zip([2, 5, 9], [0.2, 0.5, 0.3]):
        assert abs((draws == tok).mean() - p) < 0.015


def test_residual():
    p = Dist(np.array([0, 1, 2]), np.array([0.5, 0.3, 0.2]))
    q = Dist(np.array([0, 1, 3]), np.array([0.6, 0.1, 0.3]))
    r = residual(p, q)
    # max(p - q, 0) = [0, 0.2, 0.2] -> normalised on tokens 1 and 2
    assert r.ids.tolist() == [1, 2] and np.allclose(r.probs, [0.5, 0.5])
    assert residual(p, p) is p


# --- acceptance rule ------------------------------------------------------------


def test_accept_greedy():
    assert accept_greedy([4, 5, 6], [4, 5, 6, 7]) == (3, 7)
    assert accept_greedy([4, 5, 6], [4, 9, 6, 7]) == (1, 9)
    assert accept_greedy([4, 5, 6], [1, 5, 6, 7]) == (0, 1)
    assert accept_greedy([], [3]) == (0, 3)


def _first_token_histogram(p: Dist, q: Dist, n_vocab: int, draws: int, seed: int, g: int = 1) -> np.ndarray:
    """Run the acceptance rule with a draft sampled from q; count the first emitted token."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(n_vocab)
    bonus = Dist(np.arange(n_vocab), np.full(n_vocab, 1.0 / n_vocab))
    for _ in range(draws):
        drafts = [q.sample(rng) for _ in range(g)]
        n_acc, extra = accept_sampled(drafts, [q] * g, [p] * g + [bonus], rng)
        first = drafts[0] if n_acc > 0 else extra
        counts[first] += 1
    return counts


@pytest.mark.parametrize(
    "p_probs,q_probs",
    [
        # q has mass where p has none (tokens 3, 4) and misses some of p's mass
        ([0.5, 0.3, 0.2, 0.0, 0.0], [0.1, 0.1, 0.0, 0.4, 0.4]),
        # close distributions
        ([0.4, 0.3, 0.2, 0.1, 0.0], [0.35, 0.35, 0.15, 0.1, 0.05]),
        # point-mass draft (deterministic drafter)
        ([0.25, 0.25, 0.25, 0.25, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]),
    ],
)
def test_rejection_sampling_reproduces_target(p_probs, q_probs):
    n = len(p_probs)
    p = Dist(np.arange(n)[np.array(p_probs) > 0], np.array([x for x in p_probs if x > 0]))
    q = Dist(np.arange(n)[np.array(q_probs) > 0], np.array([x for x in q_probs if x > 0]))
    draws = 40000
    counts = _first_token_histogram(p, q, n, draws, seed=123)
    freq = counts / draws
    tv = 0.5 * np.abs(freq - np.array(p_probs)).sum()
    # with 40k draws the sampling noise in TV distance is ~0.005; a wrong rule is off by >0.1
    assert tv < 0.015, (freq, p_probs)
    assert counts[np.array(p_probs) == 0].sum() == 0  # never emits a token p forbids


def test_naive_acceptance_would_fail_the_same_check():
    """Guard that the statistical test has power: accepting every draft gives q, not p."""
    p_probs, q_probs = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.1, 0.8])
    rng = np.random.default_rng(0)
    q = Dist(np.arange(3), q_probs)
    freq = np.bincount([q.sample(rng) for _ in range(40000)], minlength=3) / 40000
    assert 0.5 * np.abs(freq - p_probs).sum() > 0.015


def test_all_accepted_gives_bonus_from_last_row():
    p = [Dist.point(3), Dist.point(4), Dist(np.array([7]), np.array([1.0]))]
    q = [Dist.point(3), Dist.point(4)]
    assert accept_sampled([3, 4], q, p, np.random.default_rng(0)) == (2, 7)


def test_second_position_distribution():
    """Over two drafted positions, the emitted second token follows p2 given an accepted first."""
    n = 4
    p1 = Dist(np.arange(n), np.array([0.7, 0.1, 0.1, 0.1]))
    q1 = Dist(np.arange(n), np.array([0.6, 0.2, 0.1, 0.1]))
    p2 = Dist(np.arange(n), np.array([0.1, 0.2, 0.3, 0.4]))
    q2 = Dist(np.arange(n), np.array([0.4, 0.3, 0.2, 0.1]))
    bonus = Dist(np.arange(n), np.full(n, 0.25))
    rng = np.random.default_rng(5)
    second = []
    for _ in range(40000):
        d = [q1.sample(rng), q2.sample(rng)]
        n_acc, extra = accept_sampled(d, [q1, q2], [p1, p2, bonus], rng)
        if n_acc >= 1:
            second.append(d[1] if n_acc == 2 else extra)
    freq = np.bincount(second, minlength=n) / len(second)
    assert 0.5 * np.abs(freq - p2.probs).sum() < 0.015


def test_top_k_of_is_exactly_the_k_highest_whatever_the_spread():
    """The threshold shortcut must return the same set as a full partition, peaked rows and flat ones alike."""
    from spec_cli.sampling import top_k_of

    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.choice([50, 1000, 70000, 262144]))
        row = (rng.normal(size=n) * rng.choice([0.05, 1.0, 5.0, 40.0])).astype(np.float32)
        if trial % 7 == 0:
            row[:] = 0.0
            row[rng.integers(n)] = 20.0  # one peak, the rest all tied far below it
        elif trial % 7 == 1:
            row = np.round(row).astype(np.float32)  # many ties, some of them at the threshold
        elif trial % 7 == 2:
            row[rng.random(n) < 0.98] = -np.inf  # a masked vocabulary: the sample's threshold is -inf
        elif trial % 7 == 3:
            # The row's best tokens exactly where top_k_of samples (every 97th): its threshold
            # then lets fewer than k through and the margin has to take over.
            on_sample = np.arange(0, n, 97)[:30]
            row[on_sample] = row.max() + 1.0 + rng.random(len(on_sample)).astype(np.float32)
        k = int(rng.choice([1, 3, 40, 45, 200, 1000]))
        k = min(k, n - 1)
        ids, vals = top_k_of(row, k)
        assert len(ids) == k and len(set(ids.tolist())) == k
        np.testing.assert_array_equal(vals, row[ids])
        np.testing.assert_array_equal(np.sort(vals), np.sort(row)[-k:])


def test_sample_top_k_draws_what_the_distribution_draws():
    """The plain-decoding shortcut must make the very draw shape_top_k(...).sample makes from the same
    random state: same token for every seed, whatever order the candidates come in (llama.cpp's graph
    and numpy hand them over in different orders), with and without top-p."""
    from spec_cli.sampling import sample_top_k, shape_top_k

    rng = np.random.default_rng(11)
    for trial in range(60):
        k = int(rng.choice([1, 2, 40, 300]))
        ids = rng.choice(262144, size=k, replace=False)
        z = (rng.normal(size=k) * rng.choice([0.3, 2.0, 8.0])).astype(np.float32)
        params = SamplingParams(temperature=float(rng.choice([0.2, 0.8, 1.5])), top_k=k, top_p=float(rng.choice([1.0, 0.9])))
        drawn = [sample_top_k(ids, z, params, np.random.default_rng(s)) for s in range(200)]
        reference = [shape_top_k(ids, z, params).sample(np.random.default_rng(s)) for s in range(200)]
        assert drawn == reference, (trial, k, params)
        # and the draws follow the distribution's probabilities (the comparison above has teeth)
        d = shape_top_k(ids, z, params)
        if k <= 40 and params.temperature >= 0.8:
            counts = np.array([drawn.count(int(t)) for t in d.ids])
            assert np.abs(counts / 200 - d.probs).max() < 0.15
