"""Classification metrics with 95% confidence intervals.

Proportions (accuracy, sensitivity, specificity, precision) get Wilson score
intervals as scipy computes them; AUC and F1, which are not proportions, get a
seeded percentile bootstrap. On 50 validation images, 0.90 accuracy means
anything from 0.79 to 0.96, and a lab must see that.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

CONFIDENCE = 0.95


def wilson(successes: int, n: int) -> dict[str, Any]:
    """A proportion with its Wilson 95% interval; value None when n is 0."""
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    from scipy.stats import binomtest

    interval = binomtest(successes, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return {"value": successes / n, "ci_low": float(interval.low), "ci_high": float(interval.high),
            "n": n}


def _auc_rows(y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """ROC AUC of each row (Mann-Whitney U with tied ranks averaged); NaN for one-class rows.

    The same number as sklearn's ``roc_auc_score``, for thousands of bootstrap
    resamples in one vectorised pass instead of one call per resample.
    """
    from scipy.stats import rankdata

    ranks = rankdata(prob, axis=1)
    positives = y.sum(axis=1)
    negatives = y.shape[1] - positives
    u = (ranks * y).sum(axis=1) - positives * (positives + 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((positives > 0) & (negatives > 0), u / (positives * negatives), np.nan)


def _f1_rows(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    tp = (predicted & (y == 1)).sum(axis=1)
    denominator = 2 * tp + (predicted & (y == 0)).sum(axis=1) + (~predicted & (y == 1)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, 0.0)


def _bootstrap(y: np.ndarray, prob: np.ndarray, thresholds: np.ndarray, seed: int,
               rounds: int) -> dict[str, list[float]]:
    idx = np.random.default_rng(seed).integers(0, len(y), (rounds, len(y)))
    ys, ps = y[idx], prob[idx]
    aucs = _auc_rows(ys, ps)
    return {"auc": aucs[~np.isnan(aucs)].tolist(), "f1": _f1_rows(ys, ps >= thresholds[idx]).tolist()}


def _with_ci(value: float | None, samples: list[float], n: int) -> dict[str, Any]:
    if value is None or not samples:
        return {"value": value, "ci_low": None, "ci_high": None, "n": n}
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"value": value, "ci_low": float(low), "ci_high": float(high), "n": n}


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float | np.ndarray, *,
                   seed: int = 0, rounds: int = 2000) -> dict[str, Any]:
    """Accuracy, ROC AUC, sensitivity, specificity, precision, F1 and the confusion matrix.

    Args:
        y_true: 0/1 labels (1 = tumour).
        prob: Tumour probabilities.
        threshold: A case is positive when ``prob >= threshold``; one per case
            where they differ (each fold's own, in cross-validation: the
            returned ``threshold`` is then None).
        seed: Seed of the bootstrap (AUC and F1 intervals).
        rounds: Bootstrap resamples.

    Returns:
        A JSON-ready dict: each metric as ``{value, ci_low, ci_high, n}``, plus
        ``confusion_matrix`` ``{tn, fp, fn, tp}`` and ``threshold``.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64)
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), p.shape)
    predicted = p >= thresholds
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted.astype(int), labels=[0, 1]).ravel())
    both_classes = 0 < y.sum() < len(y)
    auc = float(roc_auc_score(y, p)) if both_classes else None
    samples = _bootstrap(y, p, thresholds, seed, rounds) if len(y) else {"auc": [], "f1": []}
    return {
        "threshold": float(threshold) if np.ndim(threshold) == 0 else None,
        "n": int(len(y)),
        "accuracy": wilson(tp + tn, len(y)),
        "roc_auc": _with_ci(auc, samples["auc"], len(y)),
        "sensitivity": wilson(tp, tp + fn),
        "specificity": wilson(tn, tn + fp),
        "precision": wilson(tp, tp + fp),
        "f1": _with_ci(float(_f1_rows(y[None], predicted[None])[0]) if len(y) else None,
                       samples["f1"], len(y)),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def format_metric(metric: dict[str, Any]) -> str:
    """``0.900 (95% CI 0.786-0.957, n=50)``, or ``n/a``."""
    if metric.get("value") is None:
        return f"n/a (n={metric.get('n', 0)})"
    if metric.get("ci_low") is None:
        return f"{metric['value']:.3f} (n={metric['n']})"
    return f"{metric['value']:.3f} (95% CI {metric['ci_low']:.3f}-{metric['ci_high']:.3f}, n={metric['n']})"


def metric_summary(metrics: Mapping[str, Any],
                   names: tuple[str, ...] = ("accuracy", "roc_auc", "sensitivity", "specificity")) -> str:
    """``accuracy 0.900 [0.786, 0.957], roc_auc ...``: metrics with their 95% CIs, for one summary line."""
    parts = []
    for name in names:
        metric = metrics[name]
        if metric.get("value") is None:
            parts.append(f"{name} n/a")
        elif metric.get("ci_low") is None:
            parts.append(f"{name} {metric['value']:.3f}")
        else:
            parts.append(f"{name} {metric['value']:.3f} [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]")
    return ", ".join(parts)
