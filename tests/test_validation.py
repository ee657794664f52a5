"""The validation split, the probes' folds, and the BCa and paired bootstrap intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import bootstrap

from vlcd_dist.evaluation.metrics import (
    auc_roc,
    bca_intervals,
    bootstrap_intervals,
    paired_intervals,
)
from vlcd_dist.evaluation.probes import stratified_folds
from vlcd_dist.evaluation.results import Paired
from vlcd_dist.train.eval_stage import validation_rows


def _studies(seed: int = 0, n_studies: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Rows of studies with 1-3 photographs each (a study's rows share labels): (study ids as
    int64 [N], labels [N, 2])."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for s in range(n_studies):
        y = (rng.random(2) < [0.3, 0.5]).astype(int)
        for _ in range(rng.integers(1, 4)):
            ids.append(1000 + 7 * s)
            labels.append(y)
    return np.array(ids, dtype=np.int64), np.array(labels)


def test_validation_rows_hold_whole_studies_out_stratified_and_fixed() -> None:
    studies, labels = _studies()
    held = validation_rows(studies, labels, 0.25)
    # Whole studies: no study has rows on both sides.
    assert not set(studies[held]) & set(studies[~held])
    # A quarter of the studies (to within one per label pattern: 4 patterns).
    n = len(np.unique(studies))
    assert abs(len(np.unique(studies[held])) - 0.25 * n) <= 4
    # Every label pattern has its share.
    first = {s: tuple(y) for s, y in zip(studies.tolist(), labels.tolist(), strict=True)}
    for pattern in set(first.values()):
        of = [s for s, p in first.items() if p == pattern]
        got = sum(s in set(studies[held].tolist()) for s in of)
        assert abs(got - 0.25 * len(of)) <= 1, pattern
    # Fixed by the studies alone: the same rows in another order give the same studies.
    order = np.random.default_rng(1).permutation(len(studies))
    again = validation_rows(studies[order], labels[order], 0.25)
    assert set(studies[order][again]) == set(studies[held])
    # 0: no validation split.
    assert not validation_rows(studies, labels, 0.0).any()


def test_a_study_is_positive_when_any_of_its_rows_is() -> None:
    # Study 5 has one positive and one negative row: it is stratified as positive, and its two
    # rows still go together.
    studies = np.array([5, 5] + list(range(10, 50)), dtype=np.int64)
    labels = np.array([[1], [0]] + [[i % 4 == 0] for i in range(40)], dtype=int)
    for fraction in (0.1, 0.3, 0.5):
        held = validation_rows(studies, labels, fraction)
        assert held[0] == held[1]


def test_probe_folds_keep_studies_together() -> None:
    studies, labels = _studies(2)
    folds = stratified_folds(labels[:, 1], 4, seed=0, groups=studies)
    assert len(folds) == 4
    seen = np.zeros(len(studies), dtype=int)
    for fit, val in folds:
        assert not set(studies[fit]) & set(studies[val])
        assert 0 < labels[val, 1].mean() < 1  # both classes in every validation fold
        seen[val] += 1
    assert (seen == 1).all()  # every row is validated exactly once
    # Without groups, rows are split alone (the test that groups matter: some study is split).
    plain = stratified_folds(labels[:, 1], 4, seed=0)
    assert any(set(studies[fit]) & set(studies[val]) for fit, val in plain)
    # Folds are capped by the studies of the minority class.
    one = np.array([1, 0, 0, 0, 1, 0])
    assert stratified_folds(one, 5, groups=np.array([1, 1, 2, 2, 1, 3])) == []


def _scores(seed: int, m: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((m, 3)) < 0.3).astype(int)
    good = y + rng.normal(size=(m, 3))
    worse = y + rng.normal(size=(m, 3)) * 2.5
    return y, good, worse


def test_a_model_paired_with_itself_is_exactly_zero() -> None:
    y, good, _ = _scores(0)
    delta, ci = paired_intervals(y, good, good, 200, 0.95, seed=3)
    assert delta.tolist() == [0.0] * 4
    assert ci == {"0": [0.0, 0.0], "1": [0.0, 0.0], "2": [0.0, 0.0], "mean": [0.0, 0.0]}
    assert Paired(0.0, (0.0, 0.0)).matches is True


def test_paired_interval_is_bca_of_the_difference_on_shared_resamples() -> None:
    y, good, worse = _scores(1)
    delta, ci = paired_intervals(y, worse, good, 300, 0.9, seed=5)
    aucs = [auc_roc(y[:, j], worse[:, j]) - auc_roc(y[:, j], good[:, j]) for j in range(3)]
    np.testing.assert_allclose(delta[:3], aucs, rtol=0, atol=1e-12)
    assert delta[3] == pytest.approx(np.mean(aucs), abs=1e-12)

    # Task 0 by hand with scipy: the same resamples (same rows, same generator).
    def diff0(rows):
        return auc_roc(y[rows, 0], worse[rows, 0]) - auc_roc(y[rows, 0], good[rows, 0])

    want = bootstrap(
        (np.arange(len(y)),),
        diff0,
        vectorized=False,
        n_resamples=300,
        confidence_level=0.9,
        method="BCa",
        random_state=np.random.default_rng(5),
    ).confidence_interval
    assert ci["0"] == pytest.approx([want.low, want.high], abs=1e-12)
    # The much noisier model is worse beyond the noise: the paired mean interval lies below 0.
    assert ci["mean"][1] < 0 and Paired(float(delta[3]), tuple(ci["mean"])).matches is False
    # Paired intervals are narrower than the difference of two unpaired ones would suggest.
    a = bootstrap_intervals(y, worse, 300, 0.9, seed=5)["mean"]
    b = bootstrap_intervals(y, good, 300, 0.9, seed=5)["mean"]
    assert ci["mean"][1] - ci["mean"][0] < (a[1] - a[0]) + (b[1] - b[0])


def test_bca_gives_constant_and_undefined_components_an_interval() -> None:
    values = np.arange(40.0)

    def stat(rows):
        # A varying mean, a constant, and a value undefined on resamples without row 0.
        return np.array([values[rows].mean(), 2.0, 1.0 if (rows == 0).any() else np.nan])

    out = bca_intervals(stat, 40, 200, 0.95, seed=0)
    assert out[0, 0] < values.mean() < out[0, 1]
    assert out[1].tolist() == [2.0, 2.0]
    assert out[2].tolist() == [1.0, 1.0]  # the finite resamples' percentiles


def test_unpaired_intervals_cover_their_auc_and_are_json_pairs() -> None:
    y, good, _ = _scores(4)
    ci = bootstrap_intervals(y, good, 200, 0.95, seed=0)
    assert sorted(ci) == ["0", "1", "2", "mean"]
    for j in range(3):
        auc = auc_roc(y[:, j], good[:, j])
        assert ci[str(j)][0] < auc < ci[str(j)][1]
    json.dumps(ci)  # plain floats
