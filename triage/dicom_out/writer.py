"""Writing a run's DICOM objects into the DICOM folder: each case's, then each study's PDF.

Objects go to ``FOLDER/<StudyInstanceUID>/<kind>_<SOPInstanceUID>.dcm``, each
written atomically. A case carried over unchanged by an incremental run keeps
the objects an earlier run wrote for it, when their files are still there. A
case whose source cannot be read again, or whose objects cannot be built, is
listed with the reason; the other cases' objects are written all the same.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import pydicom
from pydicom.dataset import Dataset

from triage import __version__, settings
from triage.dicom_out.capture import overlay_capture, side_by_side
from triage.dicom_out.document import study_pdf
from triage.dicom_out.source import Source, SourceError, read_source
from triage.dicom_out.sr import verdict_sr
from triage.errors import short_reason
from triage.outputs.atomic import atomic_write_bytes
from triage.results.dicom import DicomExport, DicomObject
from triage.results.records import CaseSummary, Row, ScanResult, StudySummary

log = logging.getLogger(__name__)


def export_dicom(result: ScanResult, folder: Path, report_dir: Path,
                 earlier: Iterable[DicomObject]) -> DicomExport:
    """Write the objects of every scored DICOM case and of their studies; the export lists them all.

    Args:
        result: The run's results (its heat maps already written).
        folder: The DICOM folder.
        report_dir: The report's folder (the heat-map paths are relative to it).
        earlier: The objects an earlier run recorded (:func:`triage.dicom_out.ledger.load_ledger`).
    """
    version = result.versions.get("triage", __version__)
    kept = {obj.sop_instance_uid: obj for obj in earlier if (folder / obj.file).is_file()}
    earlier_by_case: dict[str | None, list[DicomObject]] = defaultdict(list)
    for obj in kept.values():
        earlier_by_case[obj.case_id].append(obj)
    rows = _rows_by_case(result)
    objects: dict[str, DicomObject] = dict(kept)
    sources: dict[str, Source] = {}
    counts = {"cases": 0, "no_study": 0, "not_scored": 0}
    failures: list[tuple[str, str]] = []
    for case in result.cases:
        why_not = _why_no_objects(case, rows.get(case.case_id, []))
        if why_not:
            counts[why_not] += 1
            continue
        counts["cases"] += 1
        if not case.new and earlier_by_case.get(case.case_id):
            continue  # carried over unchanged: its objects are still in the folder
        try:
            source = read_source(Path(result.input_dir), [row.path for row in rows[case.case_id]],
                                 case.study_uid)
            made = _case_objects(case, source, result, report_dir, version)
        except (SourceError, OSError, ValueError, TypeError, AttributeError, KeyError) as err:
            failures.append((case.case_id, short_reason(err)))
            log.warning("no DICOM objects for case %s: %s", case.case_id, short_reason(err))
            continue
        sources.setdefault(case.study_uid, source)
        fresh = [_save(folder, kind, case.case_id, dataset) for kind, dataset in made]
        _replace(objects, earlier_by_case.get(case.case_id, []), fresh, folder)
    for study in result.studies:
        if study.study_uid in sources:
            pdf = _study_pdf(study, sources[study.study_uid], result, report_dir, version, failures)
            if pdf is not None:
                before = [o for o in earlier_by_case.get(None, []) if o.study_uid == study.study_uid]
                _replace(objects, before, [_save(folder, "pdf", None, pdf)], folder)
    return DicomExport(str(folder.resolve()), tuple(sorted(objects.values(), key=_order)), **counts,
                       failures=tuple(failures))


def _rows_by_case(result: ScanResult) -> dict[str, list[Row]]:
    rows: dict[str, list[Row]] = defaultdict(list)
    for row in result.rows:
        if row.case_id is not None:
            rows[row.case_id].append(row)
    for case_rows in rows.values():
        case_rows.sort(key=lambda row: (row.slice_index or 0, row.path))
    return rows


def _why_no_objects(case: CaseSummary, rows: list[Row]) -> str | None:
    """``no_study`` (not from a DICOM study), ``not_scored``, or None when the case gets objects."""
    if case.kind != "series" or not case.study_uid:
        return "no_study"
    if case.status is not None or case.n_scored == 0 or any(row.status == "not_scanned" for row in rows):
        return "not_scored"
    return None


def _case_objects(case: CaseSummary, source: Source, result: ScanResult, report_dir: Path,
                  version: str) -> list[tuple[str, Dataset]]:
    """The case's SR, and for a flagged case the Secondary Capture of each top slice that has an overlay."""
    made: list[tuple[str, Dataset]] = [("sr", verdict_sr(case, source, result, version))]
    if not case.flagged:
        return made
    shown = [row for row in case.top if row.heatmap and row.original]
    for rank, row in enumerate(shown, start=1):
        caption = (f"{result.model.id[:40]}  p={row.probability:.3f}  slice {row.slice_index}"
                   f"  rank {rank} of {len(shown)}")
        pixels = side_by_side(report_dir, row, caption, random_backbone=result.model.random_backbone)
        made.append(("overlay", overlay_capture(case, row, rank, pixels, source, result, version)))
    return made


def _study_pdf(study: StudySummary, source: Source, result: ScanResult, report_dir: Path, version: str,
               failures: list[tuple[str, str]]) -> Dataset | None:
    """The study's Encapsulated PDF: the report of its cases alone."""
    from triage.report import draw_figures, render_pdf

    members = set(study.case_ids)
    own = dataclasses.replace(result, rows=tuple(row for row in result.rows if row.case_id in members),
                              cases=tuple(case for case in result.cases if case.case_id in members),
                              studies=(study,), dicom=None)
    try:
        pdf = render_pdf(own, report_dir, max_cases=settings.MAX_REPORT_CASES, figures=draw_figures(own))
        return study_pdf(study.study_uid, source, pdf, result.model, version)
    except (OSError, ValueError) as err:
        failures.append((study.study_uid, short_reason(err)))
        log.warning("no DICOM report of study %s: %s", study.study_uid, short_reason(err))
        return None


def _save(folder: Path, kind: str, case_id: str | None, dataset: Dataset) -> DicomObject:
    """Write one object atomically; return its record."""
    relative = f"{dataset.StudyInstanceUID}/{kind}_{dataset.SOPInstanceUID}.dcm"
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    atomic_write_bytes(folder / relative, buffer.getvalue())
    return DicomObject(kind, case_id, str(dataset.StudyInstanceUID), str(dataset.SOPClassUID),
                       str(dataset.SOPInstanceUID), relative)


def _replace(objects: dict[str, DicomObject], earlier: list[DicomObject], fresh: list[DicomObject],
             folder: Path) -> None:
    """This run's objects of a case (or study) in place of an earlier run's; unwanted files removed."""
    uids = {obj.sop_instance_uid for obj in fresh}
    for obj in earlier:
        objects.pop(obj.sop_instance_uid, None)
        if obj.sop_instance_uid not in uids:
            (folder / obj.file).unlink(missing_ok=True)
    objects.update((obj.sop_instance_uid, obj) for obj in fresh)


def _order(obj: DicomObject) -> tuple[str, str, str, str]:
    return obj.study_uid, obj.case_id or "~", obj.kind, obj.file
