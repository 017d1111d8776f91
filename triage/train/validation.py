"""Honest numbers: thresholds chosen on data the reported metrics never see, and nested folds.

A threshold picked on the validation set makes that set's sensitivity meet any
target by construction. Here a target sensitivity is met on out-of-fold
predictions of the training part only (folds that never split a copy group),
and the validation set then measures the model at that threshold, whatever it
finds. ``--folds`` repeats the whole rule inside each outer fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from triage import settings
from triage.errors import DataError
from triage.labelled.copies import CopyGroups, grouped_folds
from triage.labelled.metrics import binary_metrics, threshold_for_sensitivity
from triage.model.card import CrossValidation
from triage.train.head import fit_head, predict_head

if TYPE_CHECKING:
    from triage.train.config import TrainConfig

INNER_FOLDS = 5


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # "default", "fixed" or "out-of-fold"
    rule: str


def subset(groups: CopyGroups, rows: np.ndarray) -> CopyGroups:
    """The copy groups of some rows only, in their order."""
    return CopyGroups(tuple(int(g) for g in np.asarray(groups.group_of)[rows]), groups.method)


def out_of_fold(features: np.ndarray, labels: np.ndarray, groups: CopyGroups, config: "TrainConfig",
                folds: int) -> np.ndarray:
    """Each row's probability from a head that never saw it (nor a copy of it).

    Raises:
        DataError: a class has fewer images than folds.
    """
    if np.bincount(labels, minlength=2).min() < folds:
        raise DataError(f"{folds} folds need at least {folds} images of each class.", option="folds")
    predictions = np.zeros(len(labels))
    for train_idx, test_idx in grouped_folds(labels, groups, folds, config.seed):
        head, _ = fit_head(features[train_idx], labels[train_idx], config)
        predictions[test_idx] = predict_head(head, features[test_idx])
    return predictions


def choose_threshold(features: np.ndarray, labels: np.ndarray, groups: CopyGroups,
                     config: "TrainConfig") -> Threshold:
    """The model's threshold, from the training part alone (its validation labels are never read)."""
    if config.target_sensitivity is None:
        source = "default" if config.threshold == settings.THRESHOLD else "fixed"
        return Threshold(config.threshold, source, f"{source} {config.threshold:g}")
    folds = max(2, min(INNER_FOLDS, int(np.bincount(labels, minlength=2).min())))
    predictions = out_of_fold(features, labels, groups, config, folds)
    value = threshold_for_sensitivity(labels, predictions, config.target_sensitivity)
    return Threshold(value, "out-of-fold",
                     f"halfway below the score that gives sensitivity >= {config.target_sensitivity:g} "
                     f"on {folds}-fold out-of-fold predictions of the training part")


def cross_validate(features: np.ndarray, labels: np.ndarray, groups: CopyGroups,
                   config: "TrainConfig") -> CrossValidation:
    """K outer folds over all images (copy groups kept whole), the threshold rule nested in each."""
    k = int(config.folds or 0)
    predictions = out_of_fold(features, labels, groups, config, k)  # the same folds, in order
    thresholds, per_fold = np.zeros(len(labels)), []
    for train_idx, test_idx in grouped_folds(labels, groups, k, config.seed):
        threshold = choose_threshold(features[train_idx], labels[train_idx], subset(groups, train_idx),
                                     config)
        thresholds[test_idx] = threshold.value
        per_fold.append(threshold.value)
    return CrossValidation(
        folds=k, seed=config.seed, thresholds=tuple(per_fold),
        method="grouped stratified K-fold of the head on kept features, all images; each fold's "
               "threshold chosen by the same rule on its own training part",
        metrics=binary_metrics(labels, predictions, thresholds, seed=config.seed),
    )
