"""The probe's joint signed-rank test: one column is Wilcoxon's test, copies of a column count once, and
under the null (gains symmetric about zero) its p-values are uniform: the right share of false alarms."""

from __future__ import annotations

import numpy as np
import pytest

from mergeguard.auditor.signed_rank import max_signed_rank, wilcoxon_greater


def test_one_column_is_wilcoxons_test_and_copies_count_once() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.25, 0.5):
        gains = (rng.normal(size=80) + shift).round(1)  # rounding makes ties
        gains[5] = np.nan  # an item with no gain is left out
        kept = gains[np.isfinite(gains)]
        own = scipy_stats.wilcoxon(kept, alternative="greater", method="approx", correction=True).pvalue
        assert max_signed_rank([gains]).p_value == pytest.approx(own, rel=1e-9)
        assert wilcoxon_greater(gains.tolist()) == pytest.approx(own, rel=1e-9)
        assert max_signed_rank([gains, gains, gains]).p_value == pytest.approx(own, rel=1e-3)


def test_independent_columns_pay_for_the_choice_like_sidak() -> None:
    rng = np.random.default_rng(2)
    lean, noise = rng.normal(0.4, 1, size=200), rng.normal(0, 1, size=200)
    own = wilcoxon_greater(lean.tolist())
    test = max_signed_rank([noise, lean])
    assert test.best == 1 and test.z[1] > test.z[0]
    assert test.p_value == pytest.approx(1 - (1 - own) ** 2, rel=0.05)  # about independent: Sidak's


def test_no_gain_at_all_is_p_one() -> None:
    assert max_signed_rank([[0.0] * 30, [float("nan")] * 30]).p_value == 1.0


def test_null_p_values_are_uniform_over_correlated_windows() -> None:
    """Three windows sharing most of their noise (as nested answer windows do), 150 items, 600 draws:
    the share under 0.05 and under 0.2 stays near 0.05 and 0.2 (binomial bounds of about 4 sigma)."""
    rng = np.random.default_rng(3)
    p_values = []
    for _ in range(600):
        base = rng.standard_t(4, size=150)
        columns = [base + rng.normal(0, scale, size=150) for scale in (0.3, 0.6, 1.0)]
        p_values.append(max_signed_rank(columns).p_value)
    p = np.asarray(p_values)
    assert 0.015 <= (p < 0.05).mean() <= 0.09
    assert 0.14 <= (p < 0.2).mean() <= 0.27
