"""DICOM results of a scan: SR, Secondary Captures and Encapsulated PDF in the source study, sent to a
storage SCP on 127.0.0.1 (pynetdicom's own), kept and sent again when it was down."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pypdf import PdfReader
from test_cases import write_series

from conftest import blob_image
from triage.cli import EXIT_OK, main
from triage.dicom_out.sr import FLAGGED, SCORE, THRESHOLD
from triage.results.tables import read_csv

STUDY = {"AccessionNumber": "ACC-2041", "StudyDescription": "MR BRAIN W/O", "PatientID": "LAB-0007",
         "StudyDate": "20240305"}
SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.104.1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One study of two series (t2 with bright discs, t1 without), its lab facts set, and a loose PNG."""
    root = tmp_path_factory.mktemp("study")
    study = generate_uid()
    write_series(root, study, "t2", 5)
    write_series(root, study, "t1", 4)
    for path in sorted(root.rglob("IM*")):
        ds = pydicom.dcmread(path)
        for keyword, value in STUDY.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    Image.fromarray(blob_image(np.random.default_rng(3), True)).save(root / "loose.png")
    return root


def scan(folder: Path, out: Path, model: Path, *args: str, code: int = EXIT_OK) -> tuple[dict, object]:
    """Run `triage scan`; its run.json and the click result."""
    result = CliRunner().invoke(main, ["scan", str(folder), "--out", str(out), "--model", str(model), *args])
    assert result.exit_code == code, result.output
    return json.loads((out.parent / "run.json").read_text()), result


@pytest.fixture(scope="module")
def threshold(folder: Path, trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """Between the two series' scores: one is flagged, the other not."""
    out = tmp_path_factory.mktemp("probe") / "r.html"
    scan(folder, out, trained_model, "--explain", "none")
    cases = read_csv(out.parent / "r_cases.csv")
    scores = sorted(float(row["score"]) for row in cases if row["kind"] == "series")
    assert len(scores) == 2 and scores[0] < scores[1], scores
    return (scores[0] + scores[1]) / 2


@pytest.fixture(scope="module")
def exported(folder: Path, trained_model: Path, threshold: float, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("out")
    facts, result = scan(folder, base / "report.pdf", trained_model, "--threshold", str(threshold),
                         "--top-k", "2", "--dicom-out", str(base / "dicom"))
    return base, facts, result.output


def objects(facts: dict, kind: str | None = None) -> list[dict]:
    return [obj for obj in facts["dicom"]["objects"] if kind is None or obj["kind"] == kind]


def sources(folder: Path) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in sorted(folder.rglob("IM*")))}


def test_each_case_gets_an_sr_a_flagged_one_overlays_and_the_study_one_pdf(exported, folder: Path) -> None:
    base, facts, output = exported
    cases = {row["case_id"]: row for row in read_csv(base / "report_cases.csv")}
    series = [case for case in cases.values() if case["kind"] == "series"]
    flagged = [case for case in series if case["flagged"] == "true"]
    assert len(series) == 2 and len(flagged) == 1
    assert sorted(obj["case"] for obj in objects(facts, "sr")) == sorted(case["case_id"] for case in series)
    assert {obj["case"] for obj in objects(facts, "overlay")} == {flagged[0]["case_id"]}
    assert len(objects(facts, "overlay")) == 2  # --top-k 2
    [pdf] = objects(facts, "pdf")
    assert pdf["case"] is None
    study = {ds.StudyInstanceUID for ds in sources(folder).values()}
    assert {obj["study_uid"] for obj in objects(facts)} == study
    assert all(obj["written_this_run"] and obj["sent"] is None for obj in objects(facts))
    written = sorted(p.relative_to(base / "dicom").as_posix() for p in (base / "dicom").rglob("*.dcm"))
    assert written == sorted(obj["file"] for obj in objects(facts))
    assert facts["dicom"]["counts"]["no_study"] == 1  # the loose PNG
    assert "DICOM: 5 objects written" in output and "1 cases without a study" in output


def test_every_object_joins_the_source_study_and_says_research(exported, folder: Path) -> None:
    base, facts, _ = exported
    source = next(iter(sources(folder).values()))
    for obj in objects(facts):
        ds = pydicom.dcmread(base / "dicom" / obj["file"])
        assert (ds.SOPClassUID, ds.SOPInstanceUID) == (obj["sop_class_uid"], obj["sop_instance_uid"])
        for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientSex", "StudyDate",
                        "StudyTime", "AccessionNumber", "StudyID"):
            assert ds.get(keyword) == source.get(keyword), keyword
        assert ds.SeriesDescription.startswith("RESEARCH ONLY triage")
        assert ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources(folder).values()}
        ours = [item for item in ds.ContributingEquipmentSequence if item.Manufacturer == "triage"]
        assert len(ours) == 1, obj["kind"]
        assert ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment
        assert ours[0].DeviceSerialNumber == facts["model"]["sha256"]
        assert facts["model"]["sha256"] in ours[0].ContributionDescription
        assert ours[0].ManufacturerModelName == f"triage {facts['model']['id']}"


def test_the_sr_holds_the_verdict_and_references_the_series(exported, folder: Path) -> None:
    base, facts, _ = exported
    cases = {row["case_id"]: row for row in read_csv(base / "report_cases.csv")}
    rows = read_csv(base / "report.csv")
    for obj in objects(facts, "sr"):
        sr = hd.sr.srread(base / "dicom" / obj["file"])  # highdicom parses what it wrote
        assert isinstance(sr, hd.sr.ComprehensiveSR)
        report = hd.sr.MeasurementReport.from_sequence(sr.content)
        [group] = report.get_image_measurement_groups()
        measured = {m.name: m.value for m in group.get_measurements()}
        case = cases[obj["case"]]
        assert measured[SCORE] == pytest.approx(float(case["score"]), abs=1e-6)
        assert measured[THRESHOLD] == pytest.approx(facts["threshold"])
        [flag] = [e for e in group.get_qualitative_evaluations() if e.name == FLAGGED]
        assert flag.value == (codes.SCT.Yes if case["flagged"] == "true" else codes.SCT.No)
        evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                    for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
        case_files = {row["path"] for row in rows if row["case_id"] == obj["case"]}
        expected = {uid for uid, ds in sources(folder).items()
                    if Path(ds.filename).relative_to(folder).as_posix() in case_files}
        assert evidence == expected and len(expected) == int(case["n_images"])
        texts = [item.TextValue for item in _walk(sr) if "TextValue" in item]
        assert "Research use only, not a diagnostic device." in texts
        assert any(facts["model"]["sha256"] in text for text in texts)  # the card's facts


def _walk(item: pydicom.Dataset):
    for child in item.get("ContentSequence", []):
        yield child
        yield from _walk(child)


def test_overlays_are_burned_in_secondary_captures_of_the_top_slices(exported, folder: Path) -> None:
    base, facts, _ = exported
    flagged = objects(facts, "overlay")[0]["case"]
    rows = [row for row in read_csv(base / "report.csv") if row["case_id"] == flagged]
    top = {row["path"] for row in sorted(rows, key=lambda row: -float(row["probability"]))[:2]}
    for number, obj in enumerate(sorted(objects(facts, "overlay"), key=lambda o: o["file"])):
        ds = pydicom.dcmread(base / "dicom" / obj["file"])
        assert (ds.BurnedInAnnotation, ds.Modality, ds.PhotometricInterpretation) == ("YES", "OT", "RGB")
        pixels = ds.pixel_array
        assert pixels.ndim == 3 and pixels.shape[1] >= 760 and pixels.shape[1] > pixels.shape[0] / 2
        band = pixels[: pixels.shape[0] // 8]
        assert (band > 200).any() and (band < 50).mean() > 0.5  # white text on black
        [referenced] = ds.SourceImageSequence
        source = sources(folder)[referenced.ReferencedSOPInstanceUID]
        assert Path(source.filename).relative_to(folder).as_posix() in top
        if number == 0:
            Image.fromarray(pixels).save(base / "overlay.png")


def test_the_study_pdf_is_that_studys_report(exported) -> None:
    base, facts, _ = exported
    [obj] = objects(facts, "pdf")
    ds = pydicom.dcmread(base / "dicom" / obj["file"])
    assert (ds.Modality, ds.MIMETypeOfEncapsulatedDocument) == ("DOC", "application/pdf")
    assert ds.BurnedInAnnotation == "YES"
    pdf = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    text = " ".join(page.extract_text() for page in PdfReader(__import__("io").BytesIO(pdf)).pages)
    assert pdf.startswith(b"%PDF") and "Research use only" in text
    assert STUDY["AccessionNumber"] in text and STUDY["PatientID"] in text
    assert "loose.png" not in (base / "report.html").read_text() or "loose.png" not in text


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_every_object_passes_dciodvfy(exported) -> None:
    base, facts, _ = exported
    for obj in objects(facts):
        check = subprocess.run(["dciodvfy", "-new", str(base / "dicom" / obj["file"])], capture_output=True,
                               text=True, timeout=60)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (obj["kind"], errors)


def test_studies_are_named_the_way_a_lab_finds_them(exported) -> None:
    base, _, _ = exported
    cases = [row for row in read_csv(base / "report_cases.csv") if row["kind"] == "series"]
    assert {(row["study_date"], row["study_description"], row["accession_number"], row["patient_id"])
            for row in cases} == {(STUDY["StudyDate"], STUDY["StudyDescription"], STUDY["AccessionNumber"],
                                   STUDY["PatientID"])}
    [loose] = [row for row in read_csv(base / "report_cases.csv") if row["kind"] == "image"]
    assert (loose["study_date"], loose["accession_number"], loose["patient_id"]) == ("", "", "")
    html = (base / "report.html").read_text()
    for text in ("2024-03-05", STUDY["StudyDescription"], STUDY["AccessionNumber"], STUDY["PatientID"]):
        assert text in html.replace("&#34;", '"')
