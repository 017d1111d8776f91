"""A threshold whose sensitivity is certified: at least S with probability at least C.

Learn-then-Test (Angelopoulos et al., 2021) over thresholds, on scores the
model gave to tumours it never saw (out-of-fold predictions). For a threshold
t the null hypothesis is "sensitivity at t is below S"; with k of n tumours
scored below t, its p-value is the exact binomial tail P(Binomial(n, 1 - S) <= k).
Thresholds are tested in a fixed sequence from the lowest up, each at level
1 - C, stopping at the first that fails; the last one passed is certified.

This computes the bound itself with scipy instead of calling MAPIE's
``BinaryClassificationController`` (risk="recall", fixed sequence): a missed
tumour is a 0/1 loss, for which the binomial tail is an exact p-value,
tighter than the Hoeffding-Bentkus p-value MAPIE uses for any bounded loss,
and it adds no dependency. Sensitivity falls as the threshold rises, so the
sequence reduces to an order statistic: the certified threshold is the
(k+1)-th lowest tumour score, k the most misses whose p-value is <= 1 - C, a
distribution-free lower confidence bound (one-sided Clopper-Pearson).

Copies of one scan are not independent draws: each copy group of tumours
counts once, at the lowest score of its members.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from triage.errors import DataError
from triage.labelled.copies import CopyGroups

METHOD = ("Learn-then-Test: exact binomial p-values, fixed sequence from the lowest threshold up, "
          "on out-of-fold predictions of the training part; each copy group of tumours counted once")


@dataclass(frozen=True)
class Certified:
    """A certified threshold: on the scores' scale, the tumours it rests on, how many fall below it."""

    threshold: float
    tumours: int
    missed: int


def sensitivity_bound(missed: int, tumours: int, confidence: float) -> float:
    """The highest S that ``missed`` of ``tumours`` certify at ``confidence`` (0 when none is).

    The largest S with P(Binomial(tumours, 1 - S) <= missed) <= 1 - confidence:
    the one-sided Clopper-Pearson lower bound of the sensitivity.
    """
    from scipy.stats import beta

    caught = tumours - missed
    return float(beta.ppf(1 - confidence, caught, missed + 1)) if caught > 0 else 0.0


def tumours_needed(target: float, confidence: float) -> int:
    """The fewest tumours, none missed, that certify sensitivity ``target`` at ``confidence``."""
    if target >= 1:
        raise ValueError("a sensitivity of 1 cannot be certified by any number of tumours")
    return math.ceil(math.log(1 - confidence) / math.log(target) - 1e-9)


def count_tumours(labels: np.ndarray, groups: CopyGroups) -> int:
    """Tumour images, each copy group counted once."""
    return len(set(np.asarray(groups.group_of)[np.asarray(labels) == 1].tolist()))


def tumour_scores(labels: np.ndarray, scores: np.ndarray, groups: CopyGroups) -> np.ndarray:
    """One score per copy group of tumours: the lowest of its members', sorted ascending."""
    group_of = np.asarray(groups.group_of)
    lowest: dict[int, float] = {}
    for group, score in zip(group_of[labels == 1], scores[labels == 1]):
        lowest[int(group)] = min(float(score), lowest.get(int(group), math.inf))
    return np.sort(np.fromiter(lowest.values(), dtype=np.float64, count=len(lowest)))


def check_certifiable(tumours: int, target: float, confidence: float, where: str) -> None:
    """Refuse, in one sentence, a target that ``tumours`` independent tumours cannot certify.

    Even with none missed, n tumours certify at most S = (1 - C) ** (1 / n).

    Raises:
        DataError: the target is out of reach.
    """
    if target**tumours <= 1 - confidence:  # the p-value of the lowest threshold, no tumour missed
        return
    most = sensitivity_bound(0, tumours, confidence)
    needed = (f"at least {max(1, tumours_needed(target, confidence) - tumours)} more tumour images "
              f"(more if any is missed)") if target < 1 else "more tumour images than any data set holds"
    raise DataError(f"Sensitivity {target:g} cannot be certified at {confidence:.0%} confidence from the "
                    f"{tumours} tumour images of {where}: the most it can certify is "
                    f"{math.floor(most * 1000) / 1000:.3f}, and {target:g} would need {needed}.",
                    option="target_sensitivity")


def certify_threshold(labels: np.ndarray, scores: np.ndarray, groups: CopyGroups, target: float,
                      confidence: float, where: str = "the training part") -> Certified:
    """The highest threshold whose sensitivity is >= ``target`` with probability >= ``confidence``.

    The threshold lies halfway between the certified tumour score and the next
    lower score of any image, never on a score, so a last-bit difference at scan
    time cannot move a case across it.

    Raises:
        DataError: the tumours are too few to certify ``target`` (see :func:`check_certifiable`).
    """
    from scipy.stats import binom

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    tumours = tumour_scores(labels, scores, groups)
    check_certifiable(len(tumours), target, confidence, where)
    missed = np.searchsorted(tumours, tumours, side="left")  # tumours below each candidate
    p_values = binom.cdf(missed, len(tumours), 1 - target)
    chosen = 0
    for j, p_value in enumerate(p_values):  # lowest threshold first; stop at the first not rejected
        if p_value > 1 - confidence:
            break
        chosen = j
    top = float(tumours[chosen])
    below = scores[scores < top]
    threshold = (top + float(below.max())) / 2 if below.size else top / 2
    return Certified(threshold, len(tumours), int((tumours < threshold).sum()))
