"""Through the CLI: labelled folders for evaluate and train, output places, large overlays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from triage.cli import EXIT_OK, EXIT_USAGE, main
from triage.model.network import TINY_BACKBONE
from triage.testing import (
    IMAGE_SIZE,
    blob_image,
    csv_rows,
    make_blob_dataset,
    mr_slice,
    write_blob_images,
    write_nifti,
)


def evaluate(data: Path, model: Path, out: Path, *options: str) -> tuple[dict, list[dict[str, str]], str]:
    result = CliRunner().invoke(main, ["evaluate", str(data), "--model", str(model), "--out", str(out),
                                       *options])
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return report, csv_rows(out / "predictions.csv"), result.output


def check_predictions(report: dict, rows: list[dict[str, str]], threshold: float) -> None:
    """Each row's label is its folder; its prediction and the confusion matrix follow ``threshold``."""
    names = report["data"]["class_names"]
    for row in rows:
        assert row["label"] == row["path"].split("/")[0]
        expected = names["positive"] if float(row["probability"]) >= threshold else names["negative"]
        assert row["predicted"] == expected, row
    cm = report["metrics"]["confusion_matrix"]
    count = {(label, predicted): sum(1 for r in rows if (r["label"], r["predicted"]) == (label, predicted))
             for label in names.values() for predicted in names.values()}
    pos, neg = names["positive"], names["negative"]
    assert cm == {"tp": count[pos, pos], "fn": count[pos, neg], "fp": count[neg, pos], "tn": count[neg, neg]}


def test_evaluate_skips_unreadable_files_and_takes_a_threshold(tmp_path: Path, trained_model: Path) -> None:
    data = make_blob_dataset(tmp_path / "data", per_class=5, seed=3)
    (data / "yes" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    n_readable = 10
    card = json.loads((trained_model / "model_card.json").read_text())

    report, rows, output = evaluate(data, trained_model, tmp_path / "default")
    assert report["metrics"]["n"] == len(rows) == n_readable
    assert [s["path"] for s in report["data"]["skipped"]] == ["yes/corrupt.png"]
    assert "yes/corrupt.png" in output and "yes/corrupt.png" not in {r["path"] for r in rows}
    assert report["metrics"]["threshold"] == pytest.approx(card["threshold"])
    check_predictions(report, rows, card["threshold"])

    # A threshold just below the k highest scores: k positive predictions, unlike at the card's.
    flagged_by_card = sum(r["predicted"] == "yes" for r in rows)
    k = 1 if flagged_by_card != 1 else 2
    scores = sorted({float(r["probability"]) for r in rows})
    threshold = round((scores[-k - 1] + scores[-k]) / 2, 6)
    report, rows, _ = evaluate(data, trained_model, tmp_path / "chosen", "--threshold", str(threshold))
    assert report["metrics"]["threshold"] == pytest.approx(threshold)
    assert report["metrics"]["n"] == n_readable
    check_predictions(report, rows, threshold)
    assert sum(r["predicted"] == "yes" for r in rows) == k != flagged_by_card


def test_evaluate_counts_and_lists_the_scans_it_does_not_read(tmp_path: Path, trained_model: Path) -> None:
    data = make_blob_dataset(tmp_path / "data", per_class=5, seed=3)
    write_nifti(data / "yes" / "head.nii.gz", np.arange(64, dtype=np.int16).reshape(4, 4, 4), np.eye(4))
    mr_slice(data / "no" / "IM0001", study="1.2.3", series="1.2.3.4")  # DICOM without an extension
    (data / "no" / "notes.txt").write_text("a note")
    report, rows, output = evaluate(data, trained_model, tmp_path / "eval")
    not_read = {row["path"]: row["status"] for row in report["data"]["not_read"]}
    assert not_read == {"yes/head.nii.gz": "skipped", "no/IM0001": "skipped", "no/notes.txt": "unsupported"}
    assert "yes/head.nii.gz" in output and "no/IM0001" in output and "3 not read" in output
    assert len(rows) == report["metrics"]["n"] == 10
    run = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert run["counts"]["not_read"] == 3 and run["counts"]["found"] == 13


def test_evaluate_with_other_class_names(tmp_path: Path, trained_model: Path) -> None:
    data = make_blob_dataset(tmp_path / "data", per_class=3, seed=3, positive="tumour",
                             negative="healthy")
    refused = CliRunner().invoke(main, ["evaluate", str(data), "--model", str(trained_model),
                                        "--out", str(tmp_path / "refused")])
    assert refused.exit_code == EXIT_USAGE and "Traceback" not in refused.output
    assert not (tmp_path / "refused").exists()

    report, rows, _ = evaluate(data, trained_model, tmp_path / "eval", "--positive", "tumour")
    assert report["data"]["class_names"] == {"negative": "healthy", "positive": "tumour"}
    assert report["metrics"]["n"] == len(rows) == 6
    assert {r["label"] for r in rows} == {"tumour", "healthy"}
    assert {r["predicted"] for r in rows} <= {"tumour", "healthy"}
    check_predictions(report, rows, report["metrics"]["threshold"])
    cm = report["metrics"]["confusion_matrix"]
    assert cm["tp"] + cm["fn"] == 3 and cm["tn"] + cm["fp"] == 3


@pytest.mark.parametrize("outputs", [
    ["--out", "{input}/r.pdf"],
    ["--out", "{input}/reports/r.html"],
    ["--out", "{tmp}/reports/r.html", "--csv", "{input}/r.csv"],
    ["--out", "{tmp}/reports/r.html", "--csv", "{input}/sub/r.csv"],
])
def test_outputs_inside_the_input_folder_are_refused(tmp_path: Path, trained_model: Path,
                                                     outputs: list[str]) -> None:
    folder = tmp_path / "input"
    write_blob_images(folder / "sub", ["a.png"], seed=1)
    before = {p.relative_to(folder): (p.is_dir(), p.stat().st_mtime_ns, p.is_file() and p.read_bytes())
              for p in folder.rglob("*")}
    args = [a.format(input=folder, tmp=tmp_path) for a in outputs]
    result = CliRunner().invoke(main, ["scan", str(folder), *args, "--model", str(trained_model)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "input folder" in result.output and "Traceback" not in result.output
    after = {p.relative_to(folder): (p.is_dir(), p.stat().st_mtime_ns, p.is_file() and p.read_bytes())
             for p in folder.rglob("*")}
    assert after == before
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("width, height", [(1500, 1100), (1100, 1500)])
def test_overlays_of_large_images_are_capped_at_1024(tmp_path: Path, trained_model: Path,
                                                     width: int, height: int) -> None:
    folder = tmp_path / "input"
    folder.mkdir()
    yy, xx = np.mgrid[:height, :width]
    image = (40 + 30 * np.sin(xx / 90) + 20 * np.cos(yy / 70)).astype(np.uint8)
    image[(yy - height // 2) ** 2 + (xx - width // 3) ** 2 < 150**2] = 230
    Image.fromarray(image).save(folder / "big.png")
    out = tmp_path / "out" / "r.html"
    result = CliRunner().invoke(main, ["scan", str(folder), "--out", str(out), "--model", str(trained_model),
                                       "--explain", "all", "--threshold", "0"])
    assert result.exit_code == EXIT_OK, result.output
    (row,) = csv_rows(out.with_suffix(".csv"))
    assert (int(row["width"]), int(row["height"])) == (width, height)
    assert row["heatmap"]
    with Image.open(out.parent / row["heatmap"]) as overlay:
        assert overlay.format == "PNG"
        w, h = overlay.size
    assert max(w, h) == 1024
    scale = 1024 / max(width, height)
    assert abs(w - width * scale) <= 1 and abs(h - height * scale) <= 1, (w, h)


def test_training_reads_webp_files(tmp_path: Path) -> None:
    data = make_blob_dataset(tmp_path / "data", per_class=10, seed=5)
    rng = np.random.default_rng(11)
    Image.fromarray(blob_image(rng, True)).save(data / "yes" / "extra.webp", lossless=True)
    Image.fromarray(blob_image(rng, False)).save(data / "no" / "extra.WEBP", lossless=True)
    n_files = sum(1 for p in data.rglob("*") if p.is_file())
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "model"),
                                       "--backbone-weights", TINY_BACKBONE, "--image-size", str(IMAGE_SIZE),
                                       "--epochs", "1", "--val-split", "0.3"])
    assert result.exit_code == EXIT_OK, result.output
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["data"]["n_images"] == n_files
    assert not card["data"]["skipped"] and not card["data"].get("ignored")
