"""Honest numbers: copies kept on one side of the split, thresholds chosen without validation labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.stats import binom

from triage.cli import EXIT_OK, main
from triage.testing import TINY_TRAINING, blob_image, make_blob_dataset
from triage.train.training import TrainConfig, train_model

QUICK = {**TINY_TRAINING, "epochs": 2}


@pytest.fixture(scope="module")
def with_copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[set[str]]]:
    """The blob set plus planted copies (re-encoded, resized, a drawn mark) of ten of its images."""
    root = make_blob_dataset(tmp_path_factory.mktemp("copies"), per_class=20, seed=11)
    planted = []
    for label in ("yes", "no"):
        for original in sorted((root / label).glob("*.png"))[:6]:
            image = Image.open(original).convert("RGB")
            stem = original.stem.replace(" ", "_")
            names = {f"{label}/{original.name}"}
            image.save(root / label / f"{stem}-q70.jpg", quality=70)
            image.resize((64, 64)).save(root / label / f"{stem}-big.png")
            names |= {f"{label}/{stem}-q70.jpg", f"{label}/{stem}-big.png"}
            if label == "yes":  # a mark drawn on a tumour scan (on pure noise it would be the content)
                marked = np.array(image)
                marked[20:22, 10:18] = 200
                Image.fromarray(marked).save(root / label / f"{stem}-marked.png")
                names.add(f"{label}/{stem}-marked.png")
            planted.append(names)
    return root, planted


def test_grouped_split_keeps_each_copy_group_on_one_side(tmp_path: Path, with_copies) -> None:
    root, planted = with_copies
    card = train_model(root, tmp_path / "m", TrainConfig(**QUICK)).card
    assert card.split.method == "grouped"
    assert card.copies.groups == len(planted)
    assert card.copies.files_in_groups == sum(len(group) for group in planted)
    assert card.copies.validation_with_copy_in_training == 0 and not card.copies.validation_files_with_copy
    validation = set(card.split.validation_files)
    for group in planted:
        assert group <= validation or not group & validation, group
    assert card.validation_metrics_clean is None
    n = card.split.train.n + card.split.validation.n
    assert abs(card.split.validation.n / n - 0.2) < 0.06  # as close to --val-split as groups allow


def test_keras_split_reports_copies_across_and_clean_metrics(tmp_path: Path, with_copies) -> None:
    root, planted = with_copies
    card = train_model(root, tmp_path / "m", TrainConfig(**QUICK, split="keras")).card
    assert card.split.method == "keras"
    crossing = card.copies.validation_files_with_copy
    assert card.copies.validation_with_copy_in_training == len(crossing) > 0
    in_a_group = set().union(*planted)
    assert set(crossing) <= in_a_group  # only planted copies cross (the blobs themselves are distinct)
    clean = card.validation_metrics_clean
    assert clean["n"] == card.split.validation.n - len(crossing)
    assert card.validation_metrics["n"] == card.split.validation.n


def test_threshold_does_not_change_when_validation_images_do(tmp_path: Path) -> None:
    """The threshold comes from the training part alone: turn every validation image into one of
    the other class (a disc drawn on noise, a disc scan replaced by noise) and train again on the
    same split: the same threshold, while the validation metrics collapse."""
    data = make_blob_dataset(tmp_path / "data", per_class=20, seed=3)
    config = TrainConfig(**{**QUICK, "epochs": 5, "learning_rate": 0.01}, split="keras",
                         target_sensitivity=0.8)
    honest = train_model(data, tmp_path / "a", config).card
    rng = np.random.default_rng(8)
    for relpath in honest.split.validation_files:
        path = data / relpath
        Image.fromarray(blob_image(rng, tumour=relpath.startswith("no/"))).save(path, quality=95)
    swapped = train_model(data, tmp_path / "b", config).card
    assert swapped.split.validation_files == honest.split.validation_files
    assert honest.threshold_source == swapped.threshold_source == "certified"
    assert swapped.threshold == honest.threshold
    assert swapped.calibration.fitted == honest.calibration.fitted  # nor the calibration map
    cert = honest.certificate
    assert (cert.sensitivity, cert.confidence, cert.tumours) == (0.8, 0.9, honest.split.train.positive)
    assert binom.cdf(cert.missed, cert.tumours, 1 - 0.8) <= 1 - 0.9  # the Learn-then-Test criterion
    assert honest.validation_metrics["roc_auc"]["value"] >= 0.9
    assert swapped.validation_metrics["roc_auc"]["value"] <= 0.1


@pytest.mark.slow
def test_folds_nest_the_threshold_rule_and_record_each_fold(tmp_path: Path, blob_dataset: Path) -> None:
    card = train_model(blob_dataset, tmp_path / "m", TrainConfig(
        **QUICK, target_sensitivity=0.9, folds=3)).card
    cv = card.cross_validation
    assert cv.folds == 3 and len(cv.thresholds) == 3
    assert all(0 < t < 1 for t in cv.thresholds) and cv.metrics["threshold"] is None
    assert cv.metrics["n"] == card.data.n_images
    assert cv.calibration["n"] == card.data.n_images  # each fold's own map on its held-out images


def test_fixed_and_default_threshold_sources(tmp_path: Path, blob_dataset: Path) -> None:
    """A fixed threshold is on the network's raw output; the card keeps it on the calibrated scale too."""
    fixed = train_model(blob_dataset, tmp_path / "f", TrainConfig(**QUICK, threshold=0.3)).card
    assert (fixed.calibration.raw_threshold, fixed.threshold_source) == (0.3, "fixed")
    assert fixed.threshold == pytest.approx(float(fixed.calibration.fitted.apply(0.3)))
    default = train_model(blob_dataset, tmp_path / "d", TrainConfig(**QUICK)).card
    assert (default.calibration.raw_threshold, default.threshold_source) == (0.5, "default")
    assert default.threshold == pytest.approx(float(default.calibration.fitted.apply(0.5)))


def test_evaluate_on_training_images_warns(tmp_path: Path, trained_model: Path, blob_dataset: Path) -> None:
    out = tmp_path / "evaluation"
    result = CliRunner().invoke(main, ["evaluate", str(blob_dataset), "--model", str(trained_model),
                                       "--out", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads((out / "metrics.json").read_text())
    card = json.loads((trained_model / "model_card.json").read_text())
    trained_on = card["split"]["train"]["n"]
    assert report["copies_of_training"] == trained_on  # the training images themselves
    assert report["metrics_without_copies"]["n"] == report["metrics"]["n"] - trained_on
    assert "copies of the model's training images" in result.output


def test_evaluate_on_new_images_finds_no_copies(tmp_path: Path, trained_model: Path) -> None:
    fresh = make_blob_dataset(tmp_path / "fresh", per_class=6, seed=99)
    out = tmp_path / "evaluation"
    result = CliRunner().invoke(main, ["evaluate", str(fresh), "--model", str(trained_model),
                                       "--out", str(out), "--quiet"])
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["copies_of_training"] == 0 and report["metrics_without_copies"] is None
