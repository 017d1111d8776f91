"""How far probabilities mean what they say: Brier score and expected calibration error.

Both with their n and a seeded bootstrap 95% interval, measured on labelled
images before and after the calibration map (the raw network output, then the
``probability`` column). The Brier score is the mean squared difference
between probability and outcome (0 is perfect; always answering 0.5 scores
0.25). The expected calibration error (ECE) cuts [0, 1] into :data:`BINS`
equal bins and averages, weighted by the images in each, the gap between the
mean probability and the share of tumours in the bin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from triage.labelled.metrics import format_metric

BINS = 10


def _bin_of(prob: np.ndarray) -> np.ndarray:
    """Each probability's bin: [0, 0.1], (0.1, 0.2], ... (0.9, 1], as scikit-learn's ``calibration_curve``
    cuts them, so that the ECE is the gap the reliability diagram shows."""
    return np.searchsorted(np.linspace(0, 1, BINS + 1)[1:-1], prob)


def _ece_rows(y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The ECE of each row of (resamples, images) arrays.

    A bin of k images weighs k/n and has the gap |sum(p - y)| / k, so each adds |sum(p - y)| / n.
    """
    rows, n = prob.shape
    flat = (np.arange(rows)[:, None] * BINS + _bin_of(prob)).ravel()
    gap = np.bincount(flat, weights=(prob - y).ravel(), minlength=rows * BINS).reshape(rows, BINS)
    return np.abs(gap).sum(axis=1) / n


def _summary(value: float, samples: np.ndarray, n: int) -> dict[str, Any]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"value": float(value), "ci_low": float(low), "ci_high": float(high), "n": n}


def calibration_metrics(y_true: np.ndarray, prob: np.ndarray, *, seed: int = 0,
                        rounds: int = 2000) -> dict[str, Any]:
    """``{"brier": {value, ci_low, ci_high, n}, "ece": {...}}`` of probabilities against 0/1 labels."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    if not len(y):
        empty = {"value": None, "ci_low": None, "ci_high": None, "n": 0}
        return {"brier": empty, "ece": dict(empty)}
    idx = np.random.default_rng(seed).integers(0, len(y), (rounds, len(y)))
    brier = ((p - y) ** 2)
    return {"brier": _summary(brier.mean(), brier[idx].mean(axis=1), len(y)),
            "ece": _summary(_ece_rows(y[None], p[None])[0], _ece_rows(y[idx], p[idx]), len(y))}


def before_and_after(y_true: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, *,
                     seed: int = 0) -> dict[str, Any]:
    """Brier and ECE of the raw output (``before``) and of the calibrated probability (``after``)."""
    return {"n": int(len(y_true)), "bins": BINS,
            "before": calibration_metrics(y_true, raw, seed=seed),
            "after": calibration_metrics(y_true, calibrated, seed=seed)}


def calibration_summary(measured: dict[str, Any]) -> str:
    """``Brier 0.112 -> 0.087, ECE 0.090 -> 0.041 (n=41)``: one line, before and after the map."""
    parts = []
    for name, label in (("brier", "Brier"), ("ece", "ECE")):
        before, after = measured["before"][name], measured["after"][name]
        if before["value"] is None:
            return f"n/a (n={measured['n']})"
        parts.append(f"{label} {before['value']:.3f} -> {after['value']:.3f}")
    return ", ".join(parts) + f" (n={measured['n']})"


def format_calibration(measured: dict[str, Any]) -> list[str]:
    """Lines with each figure and its interval, before and after the map."""
    return [f"{name:<5} {when:<6} {format_metric(measured[when][name])}"
            for name in ("brier", "ece") for when in ("before", "after")]
