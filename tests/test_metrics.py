"""Metrics and their confidence intervals against scipy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from triage.labelled.metrics import (
    _auc_rows,
    binary_metrics,
    format_metric,
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
