"""Unfamiliar images are never silently cleared: the familiarity index, its columns, report and refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from triage.model.familiarity import STATISTICS, Familiarity, image_statistics
from triage.results.tables import read_csv
from triage.testing import blob_image

RNG = np.random.default_rng(0)


def _cloud(n: int, centre: np.ndarray, spread: float = 0.3) -> np.ndarray:
    return centre + spread * RNG.normal(size=(n, len(centre)))


def _statistics(n: int, shift: float = 0.0) -> np.ndarray:
    return np.clip(0.3 + shift + 0.05 * RNG.normal(size=(n, len(STATISTICS))), 0, 1)


def test_far_images_are_unfamiliar_and_images_like_the_training_ones_are_not() -> None:
    centre, elsewhere = RNG.normal(size=64), RNG.normal(size=64)
    index = Familiarity.fit(_cloud(300, centre), _statistics(300), np.arange(300))
    held_out = index.distances(_cloud(300, centre), _statistics(300))
    assert (held_out > 1).mean() < 0.05  # about 1% by construction; 300 draws
    assert (index.distances(_cloud(50, elsewhere), _statistics(50)) > 1).all()
    # Familiar features with statistics no training image has (a blank frame's, say).
    assert (index.distances(_cloud(50, centre), _statistics(50, shift=0.6)) > 1).all()


def test_a_copy_does_not_vouch_for_its_twin() -> None:
    """Each training image is measured against other copy groups only: duplicates change nothing."""
    features, statistics = _cloud(120, RNG.normal(size=32)), _statistics(120)
    alone = Familiarity.fit(features, statistics, np.arange(120), neighbours=1)
    twice = np.concatenate([features, features]), np.concatenate([statistics, statistics])
    grouped = Familiarity.fit(*twice, np.concatenate([np.arange(120)] * 2), neighbours=1)
    ungrouped = Familiarity.fit(*twice, np.arange(240), neighbours=1)
    # The same distances, each twice (the quantile interpolates a little differently).
    assert grouped.feature_threshold == pytest.approx(alone.feature_threshold, rel=0.01)
    assert len(grouped.entries) == 120
    assert ungrouped.feature_threshold < 1e-3  # each image's nearest is its own copy


def test_image_statistics_equal_their_plain_formulas() -> None:
    """Indexes store these statistics of the training images: a faster formulation must give the
    same values, or older indexes would judge new scans by other numbers."""
    rng = np.random.default_rng(5)
    colour = rng.uniform(0, 255, (3, 40, 40, 3)).astype(np.float32)
    gray = np.repeat(rng.uniform(0, 255, (2, 40, 40, 1)), 3, axis=3).astype(np.float32)
    for images in (colour, gray):
        pixels = images / 255.0
        plain = pixels.mean(axis=3)
        found = image_statistics(images)
        spread = pixels.max(axis=3) - pixels.min(axis=3)
        np.testing.assert_array_equal(found[:, 0], spread.mean(axis=(1, 2)))
        np.testing.assert_array_equal(found[:, 1], plain.mean(axis=(1, 2)))
        np.testing.assert_array_equal(found[:, 2], plain.std(axis=(1, 2)))
        np.testing.assert_array_equal(found[:, 3], (plain < 0.06).mean(axis=(1, 2)).astype(np.float32))
    assert found[:, 0].max() == 0 and image_statistics(colour)[:, 0].min() > 0.3  # gray has no colour


def test_the_index_round_trips_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    index = Familiarity.fit(_cloud(40, RNG.normal(size=16)), _statistics(40), np.arange(40))
    path = tmp_path / "familiarity.npz"
    path.write_bytes(index.to_bytes())
    again = Familiarity.load(path)
    probe = _cloud(5, RNG.normal(size=16)), _statistics(5)
    np.testing.assert_allclose(again.distances(*probe), index.distances(*probe))
    with np.load(path) as data:
        arrays = dict(data)
    arrays["numbers"][2] = np.nan
    np.savez(path, **arrays)
    with pytest.raises(ValueError):
        Familiarity.load(path)


def _ct_slice() -> np.ndarray:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    pixels = dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(float)
    return np.repeat(((pixels - pixels.min()) / np.ptp(pixels) * 255).astype(np.uint8)[..., None], 3, axis=2)


def _colour_bars(side: int = 48) -> np.ndarray:
    colours = [(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0), (255, 0, 255), (255, 0, 0),
               (0, 0, 255), (0, 0, 0)]
    bars = np.zeros((side, side, 3), np.uint8)
    for i, colour in enumerate(colours):
        bars[:, i * side // 8:(i + 1) * side // 8] = colour
    return bars


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Blob scans the model never saw, and images that are nothing like them."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(12345)
    for i in range(8):
        Image.fromarray(blob_image(rng, tumour=i % 2 == 0)).save(folder / f"scan{i}.png")
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(folder / "blank.png")
    Image.fromarray(_ct_slice()).save(folder / "ct.png")
    Image.fromarray(_colour_bars()).save(folder / "bars.png")
    return folder


def _triage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "triage", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def scanned(trained_model: Path, mixed_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "report.html"
    done = _triage("scan", str(mixed_folder), "--model", str(trained_model), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert " need review (" in done.stdout and "unfamiliar)" in done.stdout
    return out


def test_non_scans_are_unfamiliar_and_new_scans_mostly_familiar(scanned: Path) -> None:
    rows = {row["path"]: row for row in read_csv(scanned.with_suffix(".csv"))}
    for name in ("blank.png", "ct.png", "bars.png"):
        assert rows[name]["unfamiliar"] == "true", rows[name]
        assert float(rows[name]["ood_distance"]) > 1
    familiar = [rows[f"scan{i}.png"]["unfamiliar"] == "false" for i in range(8)]
    assert sum(familiar) >= 6, rows


def test_an_unfamiliar_case_needs_review_and_has_its_own_section(scanned: Path) -> None:
    cases = {row["case_id"]: row for row in read_csv(scanned.with_name("report_cases.csv"))}
    blank = cases["blank.png"]
    assert blank["unfamiliar"] == "true" and blank["needs_review"] == "true"
    assert all(row["needs_review"] == str(row["flagged"] == "true" or row["unfamiliar"] == "true").lower()
               for row in cases.values())
    counts = json.loads(scanned.with_name("run.json").read_text())["counts"]
    unfamiliar_only = sum(r["unfamiliar"] == "true" and r["flagged"] == "false" for r in cases.values())
    assert counts["cases_unfamiliar"] == unfamiliar_only >= 1
    assert counts["cases_need_review"] == counts["cases_flagged"] + counts["cases_unfamiliar"]
    html = scanned.read_text()
    section = html[html.index('id="unfamiliar"'):html.index('id="failures"')]
    assert "score not trusted" in section
    for name, row in cases.items():
        assert (name in section) == (row["unfamiliar"] == "true" and row["flagged"] == "false"), name


def test_the_card_records_the_check(trained_model: Path) -> None:
    card = json.loads((trained_model / "model_card.json").read_text())["familiarity"]
    assert card["method"].startswith("knn") and card["neighbours"] >= 1 and card["quantile"] == 0.99
    assert card["feature_threshold"] > 0 and card["n_images"] == card["n_entries"] > 0
    assert 0 <= card["validation"]["value"] <= 1 and card["validation"]["n"] > 0
    assert (trained_model / card["file"]).is_file()


def _columns_empty(csv: Path) -> bool:
    return all(row["ood_distance"] == "" and row["unfamiliar"] == "" for row in read_csv(csv))


def test_no_familiarity_turns_the_check_off(trained_model: Path, mixed_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = _triage("scan", str(mixed_folder), "--model", str(trained_model), "--out", str(out), "--quiet",
                   "--no-familiarity")
    assert done.returncode == 0, done.stderr
    assert _columns_empty(out.with_suffix(".csv")) and "familiarity off" in done.stdout
    assert 'id="unfamiliar"' not in out.read_text()


def _older_model(trained_model: Path, folder: Path) -> Path:
    """The model as a version without the familiarity check would have written it."""
    shutil.copytree(trained_model, folder)
    card = json.loads((folder / "model_card.json").read_text())
    (folder / card.pop("familiarity")["file"]).unlink()
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


def test_a_model_without_an_index_still_scans_and_says_so_once(trained_model: Path, mixed_folder: Path,
                                                               tmp_path: Path) -> None:
    model = _older_model(trained_model, tmp_path / "older")
    out = tmp_path / "report.html"
    done = _triage("scan", str(mixed_folder), "--model", str(model), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert _columns_empty(out.with_suffix(".csv"))
    assert "no familiarity index" in done.stderr
    assert out.read_text().count("No familiarity check was possible") == 1


def test_an_altered_index_is_refused_in_one_sentence(trained_model: Path, mixed_folder: Path,
                                                     tmp_path: Path) -> None:
    model = tmp_path / "altered"
    shutil.copytree(trained_model, model)
    index = model / "familiarity.npz"
    index.write_bytes(index.read_bytes()[:-10] + b"0123456789")
    out = tmp_path / "report.html"
    done = _triage("scan", str(mixed_folder), "--model", str(model), "--out", str(out), "--quiet")
    assert done.returncode == 3
    assert "familiarity index" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_evaluate_reports_the_share_called_unfamiliar(trained_model: Path, blob_dataset: Path,
                                                      tmp_path: Path) -> None:
    from triage.evaluate.evaluation import evaluate_model

    result = evaluate_model(blob_dataset, tmp_path / "e", model=trained_model, device="cpu")
    share = result.unfamiliar
    assert share is not None and share["n"] == result.n_images
    assert share["ci_low"] <= share["value"] <= share["ci_high"] and share["value"] < 0.2
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["unfamiliar"] == share
    rows = read_csv(tmp_path / "e" / "predictions.csv")
    assert sum(row["unfamiliar"] == "true" for row in rows) == round(share["value"] * share["n"])
