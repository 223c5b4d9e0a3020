"""Backend sampling on real models: llama.cpp picks ids (or top-k candidates) inside its graph.

The numpy path (full logit rows) is the reference: the backend path must give the
same argmax ids and the same candidates, the loop on it must give the target's
greedy output (near-tie rule) and keep the target's distribution under sampling.
"""

from __future__ import annotations

import numpy as np
import pytest

from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.llama import backend_sampling_available
from spec_cli.sampling import SamplingParams, shape, shape_top_k, top_k_of
from spec_cli.strategy import FixedStrategy
from tests.chisquare import first_token_chi2
from tests.neartie import TIE_TOLERANCE, assert_same_or_near_tie

PROMPT = "The capital of France is Paris. The capital of Germany is"
CONTINUATION = " Berlin. The capital of Italy is Rome, and the capital of Spain is"


@pytest.fixture
def paths(target, draft, monkeypatch):
    """Yields a function that puts both models on the backend (True) or numpy (False) path.

    A llama.cpp without backend sampling has no backend path to compare: the tests skip, saying so."""
    monkeypatch.delenv("SPEC_BACKEND_SAMPLING", raising=False)
    if not backend_sampling_available():
        pytest.skip("this llama.cpp build has no backend sampling (llama_set_sampler)")

    def use(backend: bool) -> None:
        # the backend path on the CPU too, where spec uses it only with SPEC_BACKEND_SAMPLING=all
        target.use_backend_sampling(backend)
        draft.use_backend_sampling(backend)
        target.reset()
        draft.reset()

    before = [m.backend_sampling for m in (target, draft)]
    yield use
    for m, on in zip((target, draft), before):
        m.use_backend_sampling(on)
        m.reset()


def test_a_model_on_the_cpu_reads_rows_unless_told_otherwise(smollm2_path, monkeypatch):
    """On the CPU the sampler's graph nodes cost more than the row copy they save, so a model
    that is not offloaded to a GPU uses numpy unless SPEC_BACKEND_SAMPLING=all says otherwise."""
    from spec_cli.llama import Model

    monkeypatch.delenv("SPEC_BACKEND_SAMPLING", raising=False)
    available = backend_sampling_available()  # what this build has; without it both read rows
    for env, expected in (("1", False), ("all", available)):
        monkeypatch.setenv("SPEC_BACKEND_SAMPLING", env)
        m = Model(smollm2_path, n_ctx=64, n_gpu_layers=0)
        try:
            assert m.backend_sampling == expected, env
            assert m.eval_argmax(m.tokenize("Hello"), rows="last").shape == (1,)
            assert m.backend_sampler == ("argmax" if expected else None)
            m.reset()
            assert len(m.eval_top_k(m.tokenize("Hello"), 40, rows="last")[0][0]) == 40
            assert m.backend_sampler == ("top_k" if expected else None)
        finally:
            m.close()


def _rows(target, prompt, cont):
    target.reset()
    target.sync(prompt[:-1], logits="none")
    return target.eval([prompt[-1], *cont], logits="all").copy()


def test_argmax_ids_equal_numpy_argmax(target, paths):
    prompt = target.tokenize(PROMPT)
    cont = target.tokenize(CONTINUATION, add_bos=False)
    paths(False)
    rows = _rows(target, prompt, cont)
    paths(True)
    target.sync(prompt[:-1], logits="none")
    ids = target.eval_argmax([prompt[-1], *cont])
    assert target.backend_sampler == "argmax"
    assert len(ids) == len(cont) + 1
    for row, got in zip(rows, ids):
        # same logits, so the same id, unless two logits tie within the batch's rounding
        assert row.max() - row[got] <= TIE_TOLERANCE
    assert (ids == rows.argmax(axis=1)).mean() >= 0.9
    # the last row alone
    target.truncate(len(prompt) - 1)
    last = target.eval_argmax([prompt[-1], *cont], rows="last")
    assert last.shape == (1,) and last[0] == ids[-1]


def test_top_k_candidates_equal_numpy_top_k(target, paths):
    prompt = target.tokenize(PROMPT)
    cont = target.tokenize(CONTINUATION, add_bos=False)[:6]
    paths(False)
    rows = _rows(target, prompt, cont)
    paths(True)
    target.sync(prompt[:-1], logits="none")
    got = target.eval_top_k([prompt[-1], *cont], 40)
    assert target.backend_sampler == "top_k"
    for row, (ids, vals) in zip(rows, got):
        ref_ids, _ = top_k_of(row, 40)
        assert len(ids) == 40
        assert len(set(ids.tolist()) ^ set(ref_ids.tolist())) <= 2  # a tie at the 40th place may swap one
        np.testing.assert_allclose(vals, row[ids], rtol=1e-4, atol=1e-3)
        # the sampling distribution: from numpy's full row, and from the backend's candidates alone
        p_numpy = shape(row, SamplingParams(temperature=0.8, top_k=40, top_p=0.9))
        p_backend = shape_top_k(ids, vals, SamplingParams(temperature=0.8, top_k=40, top_p=0.9))
        common = np.intersect1d(p_numpy.ids, p_backend.ids)
        assert np.abs(p_numpy.probs_at(common) - p_backend.probs_at(common)).max() < 1e-3


def test_rows_after_backend_passes_are_fresh(target, paths):
    """Going back from ids to rows (bench, trees) must not read a stale logits buffer."""
    prompt = target.tokenize(PROMPT)
    paths(False)
    ref = _rows(target, prompt, [])[0]
    paths(True)
    target.sync(prompt[:-1], logits="none")
    target.eval_argmax([prompt[-1], 1234, 5678])
    target.truncate(len(prompt) - 1)
    row = target.eval([prompt[-1]], logits="last")[0]
    assert target.backend_sampler is None
    np.testing.assert_allclose(row, ref, atol=1e-3)


@pytest.mark.parametrize("backend", [True, False])
def test_greedy_speculation_equals_target_alone_on_both_paths(target, draft, paths, backend):
    prompt = target.tokenize("Here is a list of fruits:\n1. Apple\n2.")
    paths(False)
    reference = Engine(target).generate(prompt, GenerateOptions(max_tokens=32, draft_len=0)).tokens
    paths(backend)
    res = Engine(target, FixedStrategy(ModelDrafter(draft), 4)).generate(prompt, GenerateOptions(max_tokens=32, draft_len=4))
    assert res.stats.drafted > 0
    assert target.backend_sampler == ("argmax" if backend else None)
    assert draft.backend_sampler == ("argmax" if backend else None)
    assert_same_or_near_tie(target, prompt, reference, res.tokens)


def test_first_sampled_token_keeps_target_distribution_on_backend_top_k(target, draft, paths):
    """Chi-square, as in test_real_models, with the target and the draft handing back top-k candidates."""
    params = SamplingParams(temperature=1.0, top_k=8)
    prompt = target.tokenize("The capital of France is")
    paths(False)
    p = shape(target.sync(prompt)[1].copy(), params)  # the reference: numpy on the full row
    q = shape(draft.sync(prompt)[1].copy(), params)
    ids = np.union1d(p.ids, q.ids)
    assert 0.5 * np.abs(p.probs_at(ids) - q.probs_at(ids)).sum() > 0.2, "draft and target too alike for the power check"
    paths(True)
    runs = 400
    engine = Engine(target, FixedStrategy(ModelDrafter(draft), 2))
    firsts = []
    for seed in range(runs):
        res = engine.generate(prompt, GenerateOptions(max_tokens=2, draft_len=2, seed=seed, sampling=params))
        firsts.append(res.tokens[0])
    assert target.backend_sampler == "top_k" and draft.backend_sampler == "top_k"
    firsts = np.array(firsts)
    assert not np.isin(firsts, p.ids, invert=True).any(), "emitted a token outside the target's top-k"
    chi2, obs, exp = first_token_chi2(firsts, p, runs)
    # 99.9% quantile of chi-square with <= 8 degrees of freedom is < 26.2
    assert chi2 < 26.2, (chi2, obs, exp)
    # the draft's own distribution fails the same test (the check has power)
    chi2_q, _, _ = first_token_chi2(firsts, q, runs)
    assert chi2_q > 26.2, (chi2_q, obs)
