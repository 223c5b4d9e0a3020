"""Chi-square checks shared by the distribution tests: does the loop sample what the target says?"""

from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def first_token_chi2(firsts: np.ndarray, p, runs: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Observed first tokens against the target's distribution p (a sampling.Dist).

    Returns (chi-square, observed counts, expected counts) over p's tokens; cells expected
    fewer than 5 times are pooled into one.
    """
    obs = np.array([(firsts == t).sum() for t in p.ids], dtype=float)
    exp = p.probs * runs
    big = exp >= 5
    chi2 = ((obs[big] - exp[big]) ** 2 / exp[big]).sum() + (obs[~big].sum() - exp[~big].sum()) ** 2 / max(exp[~big].sum(), 1e-9)
    return float(chi2), obs, exp


def masked_chi2(counts: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    """Chi-square of counts against expected counts over the cells expected more than 5 times; (chi2, dof)."""
    mask = expected > 5
    return float((((counts - expected) ** 2 / expected)[mask]).sum()), int(mask.sum() - 1)
