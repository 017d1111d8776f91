"""Metrics and their confidence intervals against scipy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from triage.labelled.metrics import (
    _auc_rows,
    binary_metrics,
    format_metric,
    threshold_for_sensitivity,
    wilson,
)


def test_wilson_interval_of_the_issue_example() -> None:
    assert format_metric(wilson(45, 50)) == "0.900 (95% CI 0.786-0.957, n=50)"
    assert wilson(0, 0)["value"] is None


def test_vectorised_auc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (50, 40))
    prob = np.round(rng.random((50, 40)), 1)  # many ties
    ours = _auc_rows(y, prob)
    for row in range(50):
        assert ours[row] == pytest.approx(roc_auc_score(y[row], prob[row]), abs=1e-12)
    assert np.isnan(_auc_rows(np.ones((1, 5), int), rng.random((1, 5))))[0]


def test_binary_metrics_values_and_intervals() -> None:
    rng = np.random.default_rng(1)
    y = np.array([1] * 30 + [0] * 20)
    prob = np.clip(y * 0.4 + rng.random(50) * 0.6, 0, 1)
    m = binary_metrics(y, prob, 0.5, seed=3)
    predicted = prob >= 0.5
    cm = m["confusion_matrix"]
    assert cm["tp"] == int((predicted & (y == 1)).sum()) and sum(cm.values()) == 50
    assert m["sensitivity"]["n"] == 30 and m["specificity"]["n"] == 20
    assert m["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, prob))
    assert m["f1"]["value"] == pytest.approx(f1_score(y, predicted))
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1"):
        assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"], name
    assert binary_metrics(y, prob, 0.5, seed=3) == m  # seeded: reproducible


def test_threshold_for_sensitivity_lies_halfway_below_the_score_that_reaches_it() -> None:
    y = np.array([1, 1, 1, 1, 0, 0])
    prob = np.array([0.9, 0.8, 0.3, 0.6, 0.7, 0.1])
    assert threshold_for_sensitivity(y, prob, 0.75) == pytest.approx(0.45)  # between 0.6 and 0.3
    assert threshold_for_sensitivity(y, prob, 1.0) == pytest.approx(0.2)  # between 0.3 and 0.1
    for target in (0.25, 0.5, 0.75, 1.0):
        t = threshold_for_sensitivity(y, prob, target)
        assert t not in prob  # never on a score: a last-bit change cannot flip a case
        assert (prob[y == 1] >= t).mean() >= target
        next_score_up = prob[prob > t].min()
        assert (prob[y == 1] > next_score_up).mean() < target  # the highest such cut


def test_metrics_with_a_threshold_per_case() -> None:
    y = np.array([1, 1, 0, 0])
    prob = np.array([0.6, 0.4, 0.5, 0.2])
    m = binary_metrics(y, prob, np.array([0.5, 0.3, 0.55, 0.3]), seed=1)
    assert m["confusion_matrix"] == {"tn": 2, "fp": 0, "fn": 0, "tp": 2} and m["threshold"] is None
