"""Honest numbers: the calibration map and the threshold decided on the training part alone, and nested folds.

A threshold picked on the validation set makes that set's sensitivity meet any
target by construction. Here the training part decides, from out-of-fold
predictions (folds that never split a copy group): the calibration map (Platt
scaling, :mod:`triage.model.calibration`) and the threshold, fixed or certified
to give a target sensitivity with a stated confidence
(:mod:`triage.labelled.certify`). The validation set then measures the model
at that threshold, whatever it finds. ``--folds`` repeats the whole rule inside
each outer fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from triage import settings
from triage.errors import DataError
from triage.labelled.calibration import before_and_after
from triage.labelled.certify import METHOD, certify_threshold, check_certifiable, count_tumours
from triage.labelled.copies import CopyGroups, grouped_folds
from triage.labelled.metrics import binary_metrics
from triage.model.calibration import CalibrationMap, fit_calibration
from triage.model.card import Certificate, CrossValidation
from triage.train.head import fit_head, predict_head

if TYPE_CHECKING:
    from triage.train.config import TrainConfig

INNER_FOLDS = 5
TRAINING_PART = "the training part"


@dataclass(frozen=True)
class Threshold:
    value: float  # on the calibrated scale: the probability column's
    raw: float  # the same threshold on the network's raw output
    source: str  # "default", "fixed" or "certified"
    rule: str
    certificate: Certificate | None = None


@dataclass(frozen=True)
class Decision:
    """What the training part decides: the calibration map (None: none fitted, and why) and the threshold."""

    calibration: CalibrationMap | None
    threshold: Threshold
    note: str = ""

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, dtype=np.float64) if self.calibration is None else self.calibration.apply(raw)


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


def check_target(labels: np.ndarray, groups: CopyGroups, config: "TrainConfig", where: str) -> None:
    """Refuse at once a target sensitivity the tumours of a training part cannot certify.

    Raises:
        DataError: see :func:`triage.labelled.certify.check_certifiable`.
    """
    if config.target_sensitivity is not None:
        check_certifiable(count_tumours(labels, groups), config.target_sensitivity, config.confidence, where)


def check_targets(labels: np.ndarray, groups: CopyGroups, train: np.ndarray, config: "TrainConfig") -> None:
    """:func:`check_target` on the training part and on each fold's, before anything is fitted."""
    check_target(labels[train], subset(groups, train), config, TRAINING_PART)
    for i, (fold_train, _) in enumerate(_outer_folds(labels, groups, config), start=1):
        check_target(labels[fold_train], subset(groups, fold_train), config, _fold_part(i, config))


def decide(features: np.ndarray, labels: np.ndarray, groups: CopyGroups, config: "TrainConfig",
           where: str = TRAINING_PART) -> Decision:
    """The calibration map and the threshold, from out-of-fold predictions of one training part.

    Its labels are the only ones read: a validation set's never are.

    Raises:
        DataError: a target sensitivity these tumours cannot certify.
    """
    fewest = int(np.bincount(labels, minlength=2).min())
    if fewest < 2:  # one image of a class: no fold could hold it out
        if config.target_sensitivity is not None:
            raise DataError(f"Certifying a sensitivity needs at least 2 images of each class in {where}.",
                            option="target_sensitivity")
        return Decision(None, _fixed(config), f"too few images of a class in {where} to fit a map")
    folds = min(INNER_FOLDS, fewest)
    predictions = out_of_fold(features, labels, groups, config, folds)
    calibration = fit_calibration(predictions, labels)
    note = "" if calibration is not None else "the out-of-fold scores do not rank tumours higher"
    threshold = (_fixed(config) if config.target_sensitivity is None
                 else _certified(labels, predictions, groups, config, folds, where))
    if calibration is not None:
        value = float(calibration.apply(threshold.raw))
        threshold = Threshold(value, threshold.raw, threshold.source, threshold.rule, threshold.certificate)
    return Decision(calibration, threshold, note)


def _fixed(config: "TrainConfig") -> Threshold:
    source = "default" if config.threshold == settings.THRESHOLD else "fixed"
    return Threshold(config.threshold, config.threshold, source,
                     f"{source} {config.threshold:g} on the network's raw output")


def _certified(labels: np.ndarray, predictions: np.ndarray, groups: CopyGroups, config: "TrainConfig",
               folds: int, where: str) -> Threshold:
    target, confidence = float(config.target_sensitivity or 0), config.confidence
    certified = certify_threshold(labels, predictions, groups, target, confidence, where)
    certificate = Certificate(target, confidence, certified.tumours, certified.missed, METHOD)
    return Threshold(certified.threshold, certified.threshold, "certified",
                     f"the highest threshold with sensitivity >= {target:g} at {confidence:.0%} confidence, "
                     f"certified by Learn-then-Test on {folds}-fold out-of-fold predictions of {where} "
                     f"({certified.tumours} tumour images, {certified.missed} below it)", certificate)


def _outer_folds(labels: np.ndarray, groups: CopyGroups,
                 config: "TrainConfig") -> list[tuple[np.ndarray, np.ndarray]]:
    return list(grouped_folds(labels, groups, config.folds, config.seed)) if config.folds else []


def _fold_part(i: int, config: "TrainConfig") -> str:
    return f"the training part of fold {i} of {config.folds}"


def cross_validate(features: np.ndarray, labels: np.ndarray, groups: CopyGroups,
                   config: "TrainConfig") -> CrossValidation:
    """K outer folds over all images (copy groups kept whole), the whole rule nested in each.

    Each fold's map calibrates its held-out images and its threshold decides
    them, so the out-of-fold metrics and calibration are those of the rule.
    """
    k = int(config.folds or 0)
    raw = out_of_fold(features, labels, groups, config, k)  # the same folds, in order
    calibrated, thresholds, per_fold = np.zeros(len(labels)), np.zeros(len(labels)), []
    for i, (train_idx, test_idx) in enumerate(_outer_folds(labels, groups, config), start=1):
        decision = decide(features[train_idx], labels[train_idx], subset(groups, train_idx), config,
                          _fold_part(i, config))
        calibrated[test_idx] = decision.calibrate(raw[test_idx])
        thresholds[test_idx] = decision.threshold.value
        per_fold.append(decision.threshold.value)
    return CrossValidation(
        folds=k, seed=config.seed, thresholds=tuple(per_fold),
        method="grouped stratified K-fold of the head on kept features, all images; each fold's "
               "calibration map and threshold decided by the same rule on its own training part",
        metrics=binary_metrics(labels, calibrated, thresholds, seed=config.seed),
        calibration=before_and_after(labels, raw, calibrated, seed=config.seed),
    )
