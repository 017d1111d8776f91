"""Scanning a folder end to end: every file accounted for, report, run.json, exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from triage.cli import EXIT_MODEL, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main
from triage.results.tables import read_csv
from triage.testing import blob_image, copy_model, write_blob_images, write_dicom

NASTY = "odd <b>&\"' name.png"  # a failed file: the report's failure table shows it


@pytest.fixture(scope="module")
def incoming(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every kind of file a lab folder holds, good and bad."""
    root = tmp_path_factory.mktemp("incoming")
    rng = np.random.default_rng(5)
    (root / "nested" / "deeper").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(blob_image(rng, tumour=i % 2 == 0)).save(root / f"scan {i}.png")
    Image.fromarray(blob_image(rng, True)).save(root / "nested" / "ünïcode.jpg", quality=90)
    (root / "nested" / "deeper" / NASTY).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    sixteen = (blob_image(rng, True)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(root / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(blob_image(rng, True, size=40)[:, :20]).save(root / "rotated.jpg", exif=exif)
    write_dicom(root / "mr_slice.dcm", blob_image(rng, True)[..., 0].astype(np.uint16) * 16, BitsStored=12,
                HighBit=11)
    buffer = io.BytesIO()
    Image.fromarray(blob_image(rng, True)).save(buffer, "PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[:100])
    (root / "zero.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "Thumbs.db").write_bytes(b"\0" * 16)
    return root


@pytest.fixture(scope="module")
def scanned(incoming: Path, trained_model: Path, tmp_path_factory: pytest.TempPathFactory):
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in incoming.rglob("*") if p.is_file()}
    out = tmp_path_factory.mktemp("out")
    result = CliRunner().invoke(main, ["scan", str(incoming), "--out", str(out / "report.pdf"),
                                       "--model", str(trained_model), "--threshold", "0.5"])
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in incoming.rglob("*") if p.is_file()}
    assert before == after, "inputs must never be modified"
    return result, out


def test_every_file_is_accounted_for(scanned, incoming: Path) -> None:
    result, out = scanned
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    rows = {row["path"]: row for row in read_csv(out / "report.csv")}
    on_disk = {p.relative_to(incoming).as_posix() for p in incoming.rglob("*") if p.is_file()}
    assert set(rows) == on_disk
    assert list(rows) == sorted(rows)
    status = {path: row["status"] for path, row in rows.items()}
    assert status["truncated.png"] == "unreadable"
    assert status["zero.jpg"] == "empty"
    assert status["notes.txt"] == "unsupported"
    assert status[".DS_Store"] == status["Thumbs.db"] == "skipped"
    ok = [row for row in rows.values() if row["status"] == "ok"]
    assert len(ok) == 9
    for row in ok:
        assert 0 <= float(row["probability"]) <= 1
        assert row["flagged"] == ("true" if float(row["probability"]) >= 0.5 else "false")
        assert len(row["sha256"]) == 64
        assert row["model_id"] == "blob-model"
    assert rows["mr_slice.dcm"]["format"] == "DICOM"
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == ("40", "20")
    for row in rows.values():
        assert (row["reason"] == "") == (row["status"] == "ok")


def test_heatmaps_for_flagged_scans_only(scanned) -> None:
    _, out = scanned
    rows = read_csv(out / "report.csv")
    for row in rows:
        if row["flagged"] == "true":
            heatmap = out / row["heatmap"]
            assert heatmap.is_file()
            with Image.open(heatmap) as image:  # the overlay keeps the image's own size
                assert image.size == (int(row["width"]), int(row["height"]))
        else:
            assert row["heatmap"] == ""
    assert any(row["flagged"] == "true" for row in rows)


def test_run_json_agrees_with_csv(scanned, trained_model: Path) -> None:
    _, out = scanned
    facts = json.loads((out / "run.json").read_text())
    rows = read_csv(out / "report.csv")
    assert facts["counts"]["found"] == len(rows)
    assert facts["counts"]["scored"] == sum(r["status"] == "ok" for r in rows)
    assert facts["counts"]["flagged"] == sum(r["flagged"] == "true" for r in rows)
    assert facts["counts"]["failed"] == 4 and facts["counts"]["skipped"] == 2
    assert facts["cam_layer"] == "block5_conv4" and facts["threshold"] == 0.5
    from triage.hashing import sha256_file

    assert facts["model"]["sha256"] == sha256_file(trained_model / "model.keras")
    assert "tensorflow" in facts["versions"] and "triage" in facts["versions"]


def test_report_escapes_names_and_pdf_is_valid(scanned) -> None:
    from pypdf import PdfReader

    _, out = scanned
    html = (out / "report.html").read_text(encoding="utf-8")
    assert NASTY not in html and "odd &lt;b&gt;&amp;&#34;&#39; name.png" in html
    pdf = PdfReader(out / "report.pdf")
    assert len(pdf.pages) >= 2
    assert all("Research use only" in page.extract_text() for page in pdf.pages)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_scanning_twice_gives_identical_probabilities(scanned, incoming: Path, trained_model: Path,
                                                      tmp_path: Path) -> None:
    _, out = scanned
    again = CliRunner().invoke(main, ["scan", str(incoming), "--out", str(tmp_path / "again.html"),
                                      "--model", str(trained_model), "--batch-size", "3",
                                      "--threshold", "0.5", "--explain", "all"])
    assert again.exit_code == EXIT_SOME_FAILED, again.output
    first = {r["path"]: r["probability"] for r in read_csv(out / "report.csv")}
    second = {r["path"]: r["probability"] for r in read_csv(tmp_path / "again.csv")}
    assert first == second
    assert not (tmp_path / "again.pdf").exists()
    rows = read_csv(tmp_path / "again.csv")
    assert all(r["heatmap"] for r in rows if r["status"] == "ok")  # --explain all


def test_all_good_folder_exits_zero(tmp_path: Path, trained_model: Path) -> None:
    write_blob_images(tmp_path / "in", ["0.png", "1.png", "2.png"], seed=9)
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "in"), "--out", str(tmp_path / "r.html"),
                                       "--model", str(trained_model), "--quiet"])
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.count("\n") == 1 and "3 found, 3 scored" in result.stdout


def test_default_model_is_newest_under_models(tmp_path: Path, trained_model: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    # Folder names sort one way, creation dates another: the card's created_at decides.
    ages = {"a-middle": "2025-06-01T00:00:00+00:00", "b-newest": "2026-01-01T00:00:00+00:00",
            "c-oldest": "2024-01-01T00:00:00+00:00"}
    for name, created_at in ages.items():
        copy_model(trained_model, models / name, created_at=created_at, model_id=f"id-{name}")
    newest = max(ages, key=ages.__getitem__)
    monkeypatch.setenv("TRIAGE_MODELS", str(models))
    write_blob_images(tmp_path / "in", ["a.png"])
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "in"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == EXIT_OK, result.output
    assert read_csv(tmp_path / "r.csv")[0]["model_id"] == f"id-{newest}"


def test_missing_model_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_MODELS", str(tmp_path / "no-models-here"))
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "in"), "--out", str(tmp_path / "r.pdf")])
    assert result.exit_code == EXIT_MODEL
    assert "No trained model found" in result.output and "triage train" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r.pdf").exists() and not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["scan", "{tmp}/missing", "--out", "{tmp}/r.pdf"], "does not exist"),
    (["scan", "{tmp}", "--out", "{tmp}/r.docx"], "must end in .pdf or .html"),
    (["scan", "{tmp}", "--out", "{tmp}/r.pdf", "--threshold", "1.5"], "1.5"),
])
def test_usage_errors(tmp_path: Path, trained_model: Path, args: list[str], message: str) -> None:
    args = [a.format(tmp=tmp_path) for a in args] + ["--model", str(trained_model)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("damage", ["foreign", "cut"])
def test_broken_model_file_is_a_model_error_that_says_so(tmp_path: Path, trained_model: Path,
                                                          damage: str) -> None:
    (tmp_path / "model").mkdir()
    whole = (trained_model / "model.keras").read_bytes()
    damaged = b"not a zip" if damage == "foreign" else whole[:len(whole) // 2]
    (tmp_path / "model" / "model.keras").write_bytes(damaged)
    (tmp_path / "model" / "model_card.json").write_bytes((trained_model / "model_card.json").read_bytes())
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "in"), "--out", str(tmp_path / "r.pdf"),
                                       "--model", str(tmp_path / "model")])
    assert result.exit_code == EXIT_MODEL, result.output
    assert "not a whole Keras archive" in result.output and "Traceback" not in result.output
    assert "not found" not in result.output.lower()


def test_a_scan_without_heat_maps_makes_no_display_copies(tmp_path: Path, trained_model: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    write_blob_images(tmp_path / "in", ["scan0.png", "scan1.png", "scan2.png"], seed=8, tumour_every=3)
    out = tmp_path / "out" / "report.html"
    args = ["scan", str(tmp_path / "in"), "--out", str(out), "--model", str(trained_model), "--quiet"]
    assert CliRunner().invoke(main, [*args, "--explain", "all"]).exit_code == EXIT_OK
    with_maps = read_csv(out.with_suffix(".csv"))

    def no_copy(*args: object) -> None:
        raise AssertionError("a display copy was made")

    monkeypatch.setattr("triage.engine.predictor.display_copy", no_copy)
    result = CliRunner().invoke(main, [*args, "--explain", "none", "--full"])
    assert result.exit_code == EXIT_OK, result.output
    rows = read_csv(out.with_suffix(".csv"))
    assert [(r["path"], r["status"], r["probability"]) for r in rows] == \
        [(r["path"], r["status"], r["probability"]) for r in with_maps]


def test_the_tiny_test_model_is_marked_as_no_real_model(scanned, trained_model: Path) -> None:
    from triage.model.card import RANDOM_WARNING, read_card
    from triage.model.network import TINY_ARCHITECTURE

    card = read_card(trained_model)
    assert (card.backbone.architecture, card.backbone.weights, card.warning) == (
        TINY_ARCHITECTURE, "random", RANDOM_WARNING)
    _, out = scanned
    assert "RANDOM BACKBONE" in (out / "report.html").read_text(encoding="utf-8")


def test_the_real_vgg19_graph_trains_and_scans(vgg19_model: Path, tmp_path: Path) -> None:
    """The session's VGG19 model (random weights, 32 px, trained by train_model), scanned by the CLI."""
    from triage.hashing import sha256_file
    from triage.model.card import read_card

    card = read_card(vgg19_model)
    assert (card.backbone.architecture, card.backbone.weights) == ("VGG19", "random") and card.warning
    names = [f"scan{i}.png" for i in range(8)]
    write_blob_images(tmp_path / "in", names, seed=21)  # a disc on every other one
    out = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "in"), "--out", str(out), "--model",
                                       str(vgg19_model), "--explain", "all", "--quiet"])
    assert result.exit_code == EXIT_OK, result.output
    rows = {row["path"]: row for row in read_csv(out.with_suffix(".csv"))}
    assert sorted(rows) == names and all(row["status"] == "ok" for row in rows.values())
    tumours, noise = ([float(rows[name]["probability"]) for name in names[first::2]] for first in (0, 1))
    assert min(tumours) > max(noise)  # its scores tell discs from noise
    for row in rows.values():
        with Image.open(out.parent / row["heatmap"]) as overlay:
            assert overlay.size == (int(row["width"]), int(row["height"]))
    facts = json.loads((out.parent / "run.json").read_text())
    assert facts["model"]["sha256"] == sha256_file(vgg19_model / "model.keras")
    assert "RANDOM BACKBONE" in out.read_text(encoding="utf-8")
