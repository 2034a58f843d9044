"""Signed-rank tests over items' gains: one statistic (Wilcoxon), or several at once with their maximum.

The probe asks one question of a benchmark ("does the model link these questions to their answers more than
its reference does?") with several statistics: answer windows of several lengths, on the model as it is and
amplified. Taking the best of them and doubling or tripling its p-value (Bonferroni) throws away what is
known: the statistics are computed on the same items and move together. Under the null each item's gains
are symmetric about zero, so flipping an item's sign (all its statistics at once) is as likely as not; the
signed-rank sums are then jointly near normal with a covariance the ranks give exactly. The p-value of the
largest z is that joint normal's tail (`max_signed_rank`), between the single test's p-value and
Bonferroni's, nearer the first the more the statistics agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def wilcoxon_greater(diffs: Sequence[float]) -> float:
    """One-sided Wilcoxon signed-rank p-value for "the differences lean positive" (zeros and NaN dropped,
    average ranks for ties with the tie-corrected variance, normal approximation with continuity
    correction: the probe needs min_items >= 20, where it is accurate): `max_signed_rank` of one column."""
    return max_signed_rank([list(diffs)]).p_value


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    from scipy.stats import rankdata

    return np.asarray(rankdata(values), dtype=np.float64)


@dataclass(frozen=True)
class MaxTest:
    """The joint test: `p_value` of the largest z, `best` the statistic it came from, every `z`."""

    p_value: float
    best: int
    z: tuple[float, ...]


def max_signed_rank(columns: Sequence[Sequence[float]]) -> MaxTest:
    """One-sided test of several signed-rank statistics over the same items (`columns[j][i]`: statistic
    j's gain on item i; NaN or zero leaves the item out of that statistic). With one column it is the
    Wilcoxon test (its variance, sum r^2 / 4, is the tie-corrected one). The p-value is P(max_j Z_j >= the
    observed largest z) under the joint normal of the sign-flip null (covariance sum_i r_ij r_ik s_ij s_ik
    / 4, r ranks and s signs), kept between that z's own p-value and m times it, where the normal
    integral's numerical error could take it out."""
    from scipy.stats import multivariate_normal, norm

    data = np.nan_to_num(np.asarray(columns, dtype=np.float64), nan=0.0)
    signs = np.sign(data)
    ranks = np.zeros_like(data)
    for j, row in enumerate(data):
        kept = signs[j] != 0
        if kept.any():
            ranks[j, kept] = _ranks(np.abs(row[kept]))
    signed = ranks * signs
    covariance = signed @ signed.T / 4
    spread = np.sqrt(np.diag(covariance))
    live = np.flatnonzero(spread > 0)  # a statistic with no nonzero gain says nothing
    z = np.full(len(data), -math.inf)
    z[live] = ((ranks[live] * (signs[live] > 0)).sum(1) - ranks[live].sum(1) / 2 - 0.5) / spread[live]
    if not len(live):
        return MaxTest(1.0, 0, tuple(float(v) for v in z))
    best = int(live[np.argmax(z[live])])
    single = float(norm.sf(z[best]))
    p_value = single
    if len(live) > 1:
        correlation = covariance[np.ix_(live, live)] / np.outer(spread[live], spread[live])
        joint = multivariate_normal(np.zeros(len(live)), correlation, allow_singular=True, seed=0)
        tail = 1.0 - float(joint.cdf(np.full(len(live), z[best])))
        p_value = min(max(tail, single), len(live) * single, 1.0)
    return MaxTest(p_value, best, tuple(float(v) for v in z))
