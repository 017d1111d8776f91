"""A certified sensitivity: the Learn-then-Test bound, its coverage over many draws, and `train`'s use."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import beta

from triage.cli import EXIT_USAGE, main
from triage.errors import DataError
from triage.labelled.certify import (
    certify_threshold,
    check_certifiable,
    sensitivity_bound,
    tumour_scores,
    tumours_needed,
)
from triage.labelled.copies import CopyGroups
from triage.testing import IMAGE_SIZE


def _singletons(n: int) -> CopyGroups:
    return CopyGroups(tuple(range(n)))


def test_the_bound_for_k_misses_of_n_equals_the_hand_computed_value() -> None:
    # No miss: the largest S with S**n <= 1 - C, i.e. (1 - C) ** (1 / n); 0.1 ** (1/45) = 10 ** -0.02222.
    assert sensitivity_bound(0, 45, 0.9) == pytest.approx(0.950119, abs=1e-6)
    assert sensitivity_bound(0, 22, 0.9) == pytest.approx(0.1 ** (1 / 22), rel=1e-12)
    # One miss of 10: S**10 + 10 (1 - S) S**9 = 0.1 at S = 0.66315 (0.016455 + 0.083583 = 0.100038).
    assert sensitivity_bound(1, 10, 0.9) == pytest.approx(0.66315, abs=5e-5)
    assert sensitivity_bound(10, 10, 0.9) == 0.0
    # The most tumours, none missed, needed for 0.99 at 90%: ln 0.1 / ln 0.99 = 229.1, so 230.
    assert tumours_needed(0.99, 0.9) == 230 and tumours_needed(0.9, 0.9) == 22


def test_the_threshold_is_the_certified_order_statistic_halfway_down() -> None:
    # 25 tumours at 0.04, 0.08, ... 1.00: 0.9 ** 25 = 0.072 <= 0.1 certifies no miss, while one miss has
    # p = 0.072 + 25 * 0.1 * 0.9 ** 24 = 0.271 > 0.1: the threshold stays below the lowest tumour,
    # halfway to the next lower score of any image (0.02).
    tumours = np.arange(1, 26) * 0.04
    scores = np.concatenate([tumours, [0.02, 0.5, 0.9]])
    labels = np.array([1] * 25 + [0] * 3)
    certified = certify_threshold(labels, scores, _singletons(28), 0.9, 0.9)
    assert certified.threshold == pytest.approx(0.03)
    assert (certified.tumours, certified.missed) == (25, 0)
    # At 50% confidence the same tumours certify one miss: binom.cdf(1, 25, 0.1) = 0.271 <= 0.5, while
    # binom.cdf(2, 25, 0.1) = 0.537 is not; the threshold lies halfway between 0.04 and 0.08.
    lenient = certify_threshold(labels, scores, _singletons(28), 0.9, 0.5)
    assert lenient.missed == 1 and lenient.threshold == pytest.approx(0.06)
    assert lenient.threshold not in scores


def test_copies_of_one_tumour_count_once_at_their_lowest_score() -> None:
    labels = np.array([1, 1, 1, 0])
    scores = np.array([0.9, 0.3, 0.7, 0.1])
    groups = CopyGroups((0, 0, 1, 2))  # the first two are copies of one scan
    assert tumour_scores(labels, scores, groups).tolist() == [0.3, 0.7]


def test_too_few_tumours_is_one_sentence_with_what_can_be_certified() -> None:
    with pytest.raises(DataError) as raised:
        check_certifiable(118, 0.99, 0.9, "the training part")
    message = str(raised.value)
    assert "the most it can certify is 0.980" in message  # 0.1 ** (1/118) = 0.98068
    assert "at least 112 more tumour images" in message  # 230 - 118
    assert message.endswith(".") and ". " not in message  # one sentence
    assert raised.value.option == "target_sensitivity"
    check_certifiable(22, 0.9, 0.9, "the training part")  # 0.9 ** 22 = 0.098: certifiable


@pytest.mark.parametrize("target, confidence", [(0.9, 0.9), (0.8, 0.95)])
def test_the_certified_bound_holds_in_at_least_c_of_many_draws(target: float, confidence: float) -> None:
    """Tumour scores ~ Beta(5, 2), so the true sensitivity at t is beta.sf(t, 5, 2). In R draws the bound
    holds a Binomial(R, >= C) number of times: below C by more than three standard errors is a failure.
    A point estimate (the highest threshold with sensitivity >= S on the sample) must fail the same test."""
    rng = np.random.default_rng(20261125)
    draws, n_tumours, n_other = 1000, 60, 40
    tolerance = 3 * math.sqrt(confidence * (1 - confidence) / draws)
    labels = np.array([1] * n_tumours + [0] * n_other)
    held = point_held = 0
    for _ in range(draws):
        scores = np.concatenate([rng.beta(5, 2, n_tumours), rng.beta(2, 5, n_other)])
        certified = certify_threshold(labels, scores, _singletons(len(labels)), target, confidence)
        held += beta.sf(certified.threshold, 5, 2) >= target
        sorted_tumours = np.sort(scores[:n_tumours])
        point = sorted_tumours[math.floor((1 - target) * n_tumours)]  # sample sensitivity just >= S
        point_held += beta.sf(point, 5, 2) >= target
    assert held / draws >= confidence - tolerance
    assert point_held / draws < confidence - tolerance  # the test can tell a point estimate


@pytest.mark.slow
def test_train_refuses_a_target_the_tumours_cannot_certify_and_writes_nothing(
        tmp_path: Path, blob_dataset: Path) -> None:
    out = tmp_path / "model"
    result = CliRunner().invoke(main, [
        "train", str(blob_dataset), "--out", str(out), "--epochs", "1", "--image-size", str(IMAGE_SIZE),
        "--backbone-weights", "random", "--target-sensitivity", "0.99", "--quiet"])
    assert result.exit_code == EXIT_USAGE, result.output
    # 80 images, 32 tumours in the training part: 0.1 ** (1/32) = 0.930; 0.99 needs 230.
    assert "the most it can certify is 0.930" in result.output
    assert "at least 198 more tumour images" in result.output and "(--target-sensitivity)" in result.output
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_a_confidence_without_a_target_sensitivity_is_refused(tmp_path: Path, blob_dataset: Path) -> None:
    result = CliRunner().invoke(main, ["train", str(blob_dataset), "--out", str(tmp_path / "m"),
                                       "--confidence", "0.95", "--quiet"])
    assert result.exit_code == EXIT_USAGE
    assert "(--target-sensitivity)" in result.output and not (tmp_path / "m").exists()
