"""DICOM results of a scan: SR, Secondary Captures and Encapsulated PDF in the source study, sent to a
storage SCP on 127.0.0.1 (pynetdicom's own), kept and sent again when it was down."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image
from pydicom.sr.codedict import codes
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pypdf import PdfReader

from triage.cli import EXIT_NOT_SENT, EXIT_OK, EXIT_USAGE, main
from triage.dicom_out.options import Peer
from triage.dicom_out.send import send_objects
from triage.dicom_out.sr import FLAGGED, SCORE, THRESHOLD, UNFAMILIAR
from triage.dicom_out.uids import derived_uid
from triage.errors import UsageError
from triage.results.dicom import DicomObject
from triage.results.tables import read_csv
from triage.testing import blob_image, write_series

STUDY = {"AccessionNumber": "ACC-2041", "StudyDescription": "MR BRAIN W/O", "PatientID": "LAB-0007",
         "StudyDate": "20240305"}
SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.104.1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One study of two series (t2 with bright discs, t1 without), its lab facts set, and a loose PNG."""
    root = tmp_path_factory.mktemp("study")
    study = generate_uid()
    write_series(root, study, "t2", 5, tumour_slices=(2, 3))
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
    assert "DICOM: 5 objects written" in output and "cases without a study: 1" in output


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
        [unfamiliar] = [e for e in group.get_qualitative_evaluations() if e.name == UNFAMILIAR]
        assert unfamiliar.value == (codes.SCT.Yes if case["unfamiliar"] == "true" else codes.SCT.No)
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
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert pdf.startswith(b"%PDF") and "Research use only" in text
    assert STUDY["AccessionNumber"] in text and STUDY["PatientID"] in text
    assert "loose.png" not in text  # the loose image belongs to no study: not in the study's pages


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


class Archive:
    """pynetdicom's storage SCP on 127.0.0.1 in a thread: keeps what it stores, refuses one SOP class."""

    def __init__(self, refuse: str | None = None, strict: bool = False) -> None:
        from pynetdicom import AE, evt

        self.received: list[pydicom.Dataset] = []
        self.refuse = refuse
        ae = AE(ae_title="ARCHIVE")
        ae.require_called_aet = strict  # reject an association that calls another AE title
        for uid in SOP_CLASSES:
            ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def _store(self, event: object) -> int:
        dataset = event.dataset  # type: ignore[attr-defined]
        if dataset.SOPClassUID == self.refuse:
            return 0xA700  # out of resources
        self.received.append(dataset)
        return 0x0000

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()


def closed_address() -> str:
    """127.0.0.1 and a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.slow
def test_a_down_archive_loses_nothing_and_the_next_run_sends_it_all(
        folder: Path, trained_model: Path, threshold: float, tmp_path: Path) -> None:
    out, dicom, log = tmp_path / "report.pdf", tmp_path / "dicom", tmp_path / "triage.log"
    common = ["--threshold", str(threshold), "--dicom-out", str(dicom), "--called-ae", "ARCHIVE", "--quiet",
              "--log-file", str(log)]
    down, result = scan(folder, out, trained_model, *common, "--send", closed_address(), code=EXIT_NOT_SENT)
    assert result.stdout.count("\n") == 1 and "0 stored" in result.stdout
    assert [line for line in result.stderr.splitlines() if line] == [result.stderr.strip()]  # one error line
    assert "were not sent" in result.stderr and "the next run sends them" in result.stderr
    assert {obj["sent"] for obj in objects(down)} == {"unreachable"}
    assert all((dicom / obj["file"]).is_file() for obj in objects(down))
    assert (tmp_path / "report_cases.csv").is_file() and (tmp_path / "report.pdf").is_file()

    with Archive() as archive:
        up, result = scan(folder, out, trained_model, *common, "--send", archive.address)
        assert result.stderr == ""
        assert sorted(ds.SOPInstanceUID for ds in archive.received) == sorted(
            obj["sop_instance_uid"] for obj in objects(down))
        assert all(obj["sent"] == "sent" and obj["sent_this_run"] and not obj["written_this_run"]
                   for obj in objects(up))  # carried over: sent from the files the first run wrote
        stored = {ds.SOPInstanceUID: ds for ds in archive.received}
        for obj in objects(up):
            assert stored[obj["sop_instance_uid"]].StudyInstanceUID == obj["study_uid"]

        again, result = scan(folder, out, trained_model, *common, "--send", archive.address)
        assert len(archive.received) == len(objects(down))  # nothing new: nothing sent
        assert not any(obj["sent_this_run"] for obj in objects(again)) and "0 stored" in result.stdout
    logged = log.read_text()
    assert "unreachable" in logged and logged.count(" sent ") >= len(objects(down))


def test_a_rerun_replaces_the_objects_instead_of_adding(exported, folder: Path, trained_model: Path,
                                                        threshold: float) -> None:
    base, first, _ = exported
    before = sorted(p.name for p in (base / "dicom").rglob("*.dcm"))
    again, _ = scan(folder, base / "report.pdf", trained_model, "--threshold", str(threshold), "--top-k", "2",
                    "--dicom-out", str(base / "dicom"), "--full")
    assert all(obj["written_this_run"] for obj in objects(again))
    assert sorted(o["sop_instance_uid"] for o in objects(again)) == sorted(
        o["sop_instance_uid"] for o in objects(first))
    assert sorted(p.name for p in (base / "dicom").rglob("*.dcm")) == before


def test_a_refused_object_is_kept_with_the_peers_status(folder: Path, trained_model: Path, threshold: float,
                                                       tmp_path: Path) -> None:
    with Archive(refuse=EncapsulatedPDFStorage) as archive:
        facts, result = scan(folder, tmp_path / "report.pdf", trained_model, "--threshold", str(threshold),
                             "--dicom-out", str(tmp_path / "dicom"), "--send", archive.address,
                             "--called-ae", "ARCHIVE", code=EXIT_NOT_SENT)
    [pdf] = objects(facts, "pdf")
    assert (pdf["sent"], pdf["detail"]) == ("refused", "status 0xA700")
    assert {obj["sent"] for obj in objects(facts) if obj["kind"] != "pdf"} == {"sent"}
    assert len(archive.received) == len(objects(facts)) - 1
    ledger = json.loads((tmp_path / ".report.dicom.json").read_text())
    assert [o["sent"] for o in ledger["objects"] if o["kind"] == "pdf"] == ["refused"]


def test_loose_images_write_no_object_and_the_summary_says_why(trained_model: Path, tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(blob_image(rng, True)).save(images / name)
    facts, result = scan(images, tmp_path / "out" / "r.pdf", trained_model, "--dicom-out",
                         str(tmp_path / "dicom"))
    assert "DICOM: no object written: cases from no DICOM study: 2" in result.stdout
    assert facts["dicom"]["objects"] == [] and facts["dicom"]["counts"]["no_study"] == 2
    assert not list((tmp_path / "dicom").rglob("*.dcm"))


@pytest.mark.parametrize("args, flag", [
    (["--send", "127.0.0.1:104", "--called-ae", "PACS"], "--dicom-out"),
    (["--dicom-out", "D", "--send", "127.0.0.1", "--called-ae", "PACS"], "--send"),
    (["--dicom-out", "D", "--send", "127.0.0.1:70000", "--called-ae", "PACS"], "--send"),
    (["--dicom-out", "D", "--send", "127.0.0.1:104"], "--called-ae"),
    (["--dicom-out", "D", "--send", "127.0.0.1:104", "--called-ae", "A_TITLE_TOO_LONG_"], "--called-ae"),
    (["--dicom-out", "D", "--send", "127.0.0.1:104", "--called-ae", "PACS", "--calling-ae", "A\\B"],
     "--calling-ae"),
    (["--dicom-out", "D", "--called-ae", "PACS"], "--send"),
])
def test_bad_sending_options_are_usage_errors(tmp_path: Path, args: list[str], flag: str) -> None:
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "in"), "--out", str(tmp_path / "o" / "r.pdf"),
                                       *[str(tmp_path / a) if a == "D" else a for a in args]])
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"({flag})" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "D").exists()


def test_a_dicom_folder_inside_the_input_is_refused(trained_model: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "in"), "--out", str(tmp_path / "o" / "r.pdf"),
                                       "--model", str(trained_model), "--dicom-out", str(tmp_path / "in/d")])
    assert result.exit_code == EXIT_USAGE and "(--dicom-out)" in result.stderr


def test_peer_and_uids() -> None:
    assert Peer.parse("pacs.lab:11112", "ARCHIVE") == Peer("pacs.lab", 11112, "ARCHIVE", "TRIAGE")
    assert str(Peer.parse("[::1]:104", "A", "ME")) == "A@::1:104"
    with pytest.raises(UsageError):
        Peer.parse("pacs.lab:0", "ARCHIVE")
    one = derived_uid("sr", "ab" * 32, ["1.2.3", "1.2.4"])
    assert one == derived_uid("sr", "ab" * 32, ["1.2.3", "1.2.4"]) and len(one) <= 64
    others = {derived_uid("sr", "cd" * 32, ["1.2.3", "1.2.4"]), derived_uid("sr", "ab" * 32, ["1.2.3"]),
              derived_uid("pdf", "ab" * 32, ["1.2.3", "1.2.4"])}
    assert len(others | {one}) == 4


@pytest.mark.slow
def test_a_series_still_arriving_is_deferred_and_nothing_is_written_for_it(
        folder: Path, trained_model: Path, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    shutil.copytree(folder, incoming)
    hour_ago = time.time() - 3600
    for path in incoming.rglob("*"):
        os.utime(path, (hour_ago, hour_ago))
    (incoming / "t1" / "IM0").touch()  # the receiver is still writing t1
    args = ["--dicom-out", str(tmp_path / "dicom"), "--settle", "600"]
    first, result = scan(incoming, tmp_path / "r.html", trained_model, *args)
    rows = read_csv(tmp_path / "r.csv")
    assert {row["status"] for row in rows if row["path"].startswith("t1/")} == {"deferred"}
    assert {row["status"] for row in rows if not row["path"].startswith("t1/")} == {"ok"}
    assert first["counts"]["deferred"] == 4 and first["counts"]["failed"] == 0
    assert "4 deferred" in result.stdout
    t1 = {row["case_id"] for row in rows if row["path"].startswith("t1/")}
    assert not t1 & {obj["case"] for obj in objects(first)} and objects(first, "sr")
    os.utime(incoming / "t1" / "IM0", (hour_ago, hour_ago))  # it has settled
    second, _ = scan(incoming, tmp_path / "r.html", trained_model, *args)
    assert second["counts"]["deferred"] == 0 and second["counts"]["scored_this_run"] == 4
    assert t1 <= {obj["case"] for obj in objects(second, "sr")}


@pytest.mark.slow
def test_patient_attributes_the_source_lacks_stay_empty_and_a_gone_file_is_rewritten(
        trained_model: Path, tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    write_series(incoming, generate_uid(), "t2", 5, tumour_slices=(2, 3))
    missing = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
               "ReferringPhysicianName", "StudyDate", "StudyTime")
    for path in incoming.rglob("IM*"):
        ds = pydicom.dcmread(path)
        for keyword in missing:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path)
    args = ["--dicom-out", str(tmp_path / "dicom"), "--threshold", "0"]  # flagged: an SR, overlays, a PDF
    first, _ = scan(incoming, tmp_path / "r.pdf", trained_model, *args)
    assert {obj["kind"] for obj in objects(first)} == {"sr", "overlay", "pdf"}
    assert not first["dicom"]["failures"]
    for obj in objects(first):
        ds = pydicom.dcmread(tmp_path / "dicom" / obj["file"])
        assert all(keyword in ds and not ds[keyword].value for keyword in missing), obj["kind"]
    [pdf] = objects(first, "pdf")
    (tmp_path / "dicom" / pdf["file"]).unlink()  # someone removed it; the cases are unchanged
    second, _ = scan(incoming, tmp_path / "r.pdf", trained_model, *args)
    assert [obj["file"] for obj in objects(second) if obj["written_this_run"]] == [pdf["file"]]
    assert (tmp_path / "dicom" / pdf["file"]).is_file()


def test_a_rejected_association_and_a_stop_send_nothing_and_say_why(tmp_path: Path) -> None:
    obj = DicomObject("sr", "case", "1.2.3", SOP_CLASSES[0], "1.2.3.4", "1.2.3/sr_1.2.3.4.dcm")
    with Archive(strict=True) as archive:
        [rejected] = send_objects([obj], tmp_path, Peer.parse(archive.address, "NOT_ARCHIVE"), timeout=5)
        [stopped] = send_objects([obj], tmp_path, Peer.parse(archive.address, "ARCHIVE"),
                                 should_stop=lambda: True, timeout=5)
    assert rejected.sent == "unreachable" and "rejected (check the AE titles)" in rejected.detail
    assert stopped.sent == "stopped" and archive.received == []
