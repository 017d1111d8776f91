"""Calibrated probabilities: the map, its measures, and the columns of scan and evaluate."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from triage.cli import EXIT_MODEL, EXIT_OK, main
from triage.labelled.calibration import BINS, calibration_metrics
from triage.model.calibration import CALIBRATION_FILE, CalibrationMap, fit_calibration, read_calibration
from triage.model.card import CARD_FILE, RELIABILITY_FILE, read_card
from triage.results.tables import read_csv
from triage.testing import IMAGE_SIZE, blob_image

README = Path(__file__).resolve().parents[1] / "README.md"


def _overconfident(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn with P(tumour) = expit(z), scores expit(3 z): right order, three times too sure."""
    z = rng.normal(0, 1.5, n)
    return (rng.random(n) < expit(z)).astype(int), expit(3 * z)


# --------------------------------------------------------------------------- the map and its measures


def test_platt_map_undoes_overconfidence_on_fresh_draws() -> None:
    rng = np.random.default_rng(7)
    labels, raw = _overconfident(rng, 400)
    fitted = fit_calibration(raw, labels)
    assert fitted is not None and fitted.fitted_on == 400
    assert fitted.slope == pytest.approx(1 / 3, abs=0.1)  # logit(raw) = 3 z, the truth is z
    fresh_labels, fresh_raw = _overconfident(rng, 4000)
    before = calibration_metrics(fresh_labels, fresh_raw, rounds=10)
    after = calibration_metrics(fresh_labels, fitted.apply(fresh_raw), rounds=10)
    assert after["ece"]["value"] < before["ece"]["value"] / 2
    assert after["brier"]["value"] < before["brier"]["value"]


def test_the_map_is_increasing_so_decisions_do_not_change() -> None:
    rng = np.random.default_rng(1)
    raw = np.concatenate([rng.random(2000).astype(np.float32), [0.0, 1.0, 1e-30]])
    threshold = 0.4137
    for slope, intercept in ((0.2, -1.0), (1.0, 0.0), (4.0, 2.5)):
        mapped = CalibrationMap(slope, intercept, fitted_on=10)
        assert np.array_equal(mapped.apply(raw) >= mapped.apply(threshold), raw >= threshold)
        assert np.all(np.diff(mapped.apply(np.sort(raw[:2000]))) >= 0)


def test_scores_that_do_not_rank_tumours_get_no_map() -> None:
    labels, raw = _overconfident(np.random.default_rng(2), 300)
    assert fit_calibration(1 - raw, labels) is None


def test_brier_and_ece_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    labels, prob = rng.integers(0, 2, 300), np.round(rng.random(300), 2)  # ties on bin edges too
    measured = calibration_metrics(labels, prob, seed=4)
    assert measured["brier"]["value"] == pytest.approx(brier_score_loss(labels, prob))
    observed, predicted = calibration_curve(labels, prob, n_bins=BINS)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, BINS + 1)[1:-1], prob), minlength=BINS)
    expected = float(np.sum(counts[counts > 0] / len(prob) * np.abs(observed - predicted)))
    assert measured["ece"]["value"] == pytest.approx(expected)
    for name in ("brier", "ece"):
        assert measured[name]["n"] == 300
        assert measured[name]["ci_low"] <= measured[name]["value"] <= measured[name]["ci_high"]
    assert calibration_metrics(labels, prob, seed=4) == measured  # seeded


def test_a_map_file_that_is_not_an_increasing_map_is_refused(tmp_path: Path) -> None:
    from triage.errors import ModelError

    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(
        {"slope": -1.0, "intercept": 0.0, "fitted_on": 5, "method": "platt"}))
    with pytest.raises(ModelError, match="not an increasing Platt map"):
        read_calibration(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text("{")
    with pytest.raises(ModelError, match="cannot be read"):
        read_calibration(tmp_path)
    assert read_calibration(tmp_path / "none") is None


# --------------------------------------------------------------------------- training


def test_training_stores_the_map_beside_the_model_and_in_the_card(trained_model: Path) -> None:
    card = read_card(trained_model)
    stored = read_calibration(trained_model)
    assert stored is not None and stored == card.calibration.fitted
    assert stored.fitted_on == card.split.train.n  # out-of-fold predictions of the training part
    assert card.threshold == pytest.approx(float(stored.apply(card.calibration.raw_threshold)))
    assert card.validation_metrics["threshold"] == card.threshold
    measured = card.calibration.validation
    assert measured["n"] == card.split.validation.n
    for when in ("before", "after"):
        for name in ("brier", "ece"):
            assert measured[when][name]["n"] == card.split.validation.n
            assert 0 <= measured[when][name]["value"] <= 1
    assert (trained_model / RELIABILITY_FILE).stat().st_size > 10_000


def test_readme_applies_the_stored_map_to_plain_keras_output(trained_model: Path) -> None:
    """model.keras alone gives the raw output; the README's lines turn it into the CSV's probability."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    block = textwrap.dedent(next(b for b in blocks if "calibration.json" in b))
    assert len(block.strip().splitlines()) == 4  # an import and three lines
    rng = np.random.default_rng(9)
    images = np.stack([blob_image(rng, i % 2 == 0, size=IMAGE_SIZE) for i in range(6)]).astype(np.float32)
    namespace = {"images": images}
    exec(block.replace("models/vgg19-20261125-101500-ab12cd", str(trained_model)), namespace)
    raw, probability = namespace["raw"], namespace["probability"]
    assert np.allclose(probability, read_calibration(trained_model).apply(raw), atol=1e-6)
    assert not np.allclose(probability, raw, atol=1e-3)  # the map did something


# --------------------------------------------------------------------------- scan and evaluate


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calibration-input")
    rng = np.random.default_rng(12)
    for i in range(8):
        Image.fromarray(blob_image(rng, i % 2 == 0)).save(root / f"scan{i}.png")
    return root


def _scan(folder: Path, out: Path, model: Path, *args: str) -> list[dict[str, str]]:
    result = CliRunner().invoke(main, ["scan", str(folder), "--out", str(out / "report.html"),
                                       "--model", str(model), "--quiet", *args])
    assert result.exit_code == EXIT_OK, result.output
    return read_csv(out / "report.csv")


def test_scan_reports_the_calibrated_probability_and_the_raw_output(folder: Path, trained_model: Path,
                                                                    tmp_path: Path) -> None:
    card, stored = read_card(trained_model), read_calibration(trained_model)
    rows = _scan(folder, tmp_path, trained_model)
    raw = np.array([float(row["raw_probability"]) for row in rows])
    probability = np.array([float(row["probability"]) for row in rows])
    assert np.allclose(probability, stored.apply(raw), atol=1e-4)  # raw has 6 decimals in the CSV
    flagged = np.array([row["flagged"] == "true" for row in rows])
    assert np.array_equal(flagged, raw >= card.calibration.raw_threshold)  # the same decisions as raw
    assert 0 < flagged.sum() < len(rows)
    html = (tmp_path / "report.html").read_text()
    assert "Platt scaling fitted on" in html and "trained before calibration" not in html


def test_a_new_map_is_a_new_model_for_incremental_scans(folder: Path, trained_model: Path,
                                                        tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    _scan(folder, tmp_path / "out", model)
    stored = read_calibration(model)
    changed = CalibrationMap(stored.slope * 2, stored.intercept + 1, stored.fitted_on)
    (model / CALIBRATION_FILE).write_text(changed.to_json())
    rows = _scan(folder, tmp_path / "out", model)
    raw = np.array([float(row["raw_probability"]) for row in rows])
    assert np.allclose([float(row["probability"]) for row in rows], changed.apply(raw), atol=1e-4)


def _old_model(trained_model: Path, folder: Path) -> Path:
    """The trained model as a model trained before calibration: schema 2 card, no map."""
    shutil.copytree(trained_model, folder)
    (folder / CALIBRATION_FILE).unlink()
    card = json.loads((folder / CARD_FILE).read_text())
    card["threshold"] = card.pop("calibration")["raw_threshold"]
    card["schema_version"] = 2
    del card["certificate"]
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder


def test_a_model_trained_before_calibration_still_scans_and_evaluates(folder: Path, trained_model: Path,
                                                                      blob_dataset: Path,
                                                                      tmp_path: Path) -> None:
    old = _old_model(trained_model, tmp_path / "old")
    rows = _scan(folder, tmp_path / "scan", old)
    assert all(row["probability"] == row["raw_probability"] for row in rows)
    html = (tmp_path / "scan" / "report.html").read_text()
    assert html.count("trained before calibration") == 1
    result = CliRunner().invoke(main, ["evaluate", str(blob_dataset), "--model", str(old),
                                       "--out", str(tmp_path / "evaluation"), "--quiet"])
    assert result.exit_code == EXIT_OK, result.output
    predictions = read_csv(tmp_path / "evaluation" / "predictions.csv")
    assert all(row["probability"] == row["raw_probability"] for row in predictions)


def test_a_model_folder_without_its_map_is_refused(trained_model: Path, folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(trained_model, broken)
    (broken / CALIBRATION_FILE).unlink()
    result = CliRunner().invoke(main, ["scan", str(folder), "--out", str(tmp_path / "r.html"),
                                       "--model", str(broken), "--quiet"])
    assert result.exit_code == EXIT_MODEL
    assert "records a calibration map" in result.output and CALIBRATION_FILE in result.output


def test_evaluate_measures_calibration_before_and_after(trained_model: Path, tmp_path: Path) -> None:
    from triage.testing import make_blob_dataset

    fresh = make_blob_dataset(tmp_path / "fresh", per_class=15, seed=31)
    out = tmp_path / "evaluation"
    result = CliRunner().invoke(main, ["evaluate", str(fresh), "--model", str(trained_model),
                                       "--out", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    assert "brier before" in result.output and "ece   after" in result.output
    report = json.loads((out / "metrics.json").read_text())
    predictions = read_csv(out / "predictions.csv")
    labels = np.array([row["label"] == "yes" for row in predictions], dtype=int)
    raw = np.array([float(row["raw_probability"]) for row in predictions])
    probability = np.array([float(row["probability"]) for row in predictions])
    assert np.allclose(probability, read_calibration(trained_model).apply(raw), atol=1e-4)
    calibration = report["calibration"]
    assert calibration["n"] == len(predictions) == 30
    assert calibration["before"]["brier"]["value"] == pytest.approx(brier_score_loss(labels, raw), abs=1e-5)
    assert calibration["after"]["brier"]["value"] == pytest.approx(
        brier_score_loss(labels, probability), abs=1e-5)
    assert (out / "reliability_diagram.png").stat().st_size > 10_000
    assert json.loads((out / "run.json").read_text())["outputs"]["reliability_diagram"]
