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
    export = _Export(result, folder, report_dir, list(earlier))
    for case in result.cases:
        export.case(case)
    for study in result.studies:
        export.study(study)
    return DicomExport(str(folder.resolve()), tuple(sorted(export.objects.values(), key=_order)),
                       **export.counts, failures=tuple(export.failures))


class _Export:
    """One run's export: the objects so far (an earlier run's, replaced case by case), counts, failures."""

    def __init__(self, result: ScanResult, folder: Path, report_dir: Path,
                 earlier: list[DicomObject]) -> None:
        self.result, self.folder, self.report_dir = result, folder, report_dir
        self.version = result.versions.get("triage", __version__)
        self.rows = _rows_by_case(result)
        self.earlier: dict[str | None, list[DicomObject]] = defaultdict(list)
        for obj in earlier:
            self.earlier[obj.case_id if obj.kind != "pdf" else f"pdf:{obj.study_uid}"].append(obj)
        self.objects = {obj.sop_instance_uid: obj for obj in earlier if (folder / obj.file).is_file()}
        self.counts = {"cases": 0, "no_study": 0, "not_scored": 0}
        self.failures: list[tuple[str, str]] = []
        self.sources: dict[str, Source] = {}  # a study's source, read for a case written this run
        self.members: dict[str, list[CaseSummary]] = defaultdict(list)  # a study's cases with objects

    def _intact(self, key: str) -> bool:
        """An earlier run wrote objects for ``key`` (a case, or ``pdf:<study>``) and their files are there."""
        objects = self.earlier[key]
        return bool(objects) and all(obj.sop_instance_uid in self.objects for obj in objects)

    def case(self, case: CaseSummary) -> None:
        why_not = _why_no_objects(case, self.rows.get(case.case_id, []))
        if why_not:
            self.counts[why_not] += 1
            return
        self.counts["cases"] += 1
        self.members[case.study_uid].append(case)
        if not case.new and self._intact(case.case_id):
            return  # carried over unchanged: its objects are still in the folder
        try:
            source = self._source(case)
            made = _case_objects(case, source, self.result, self.report_dir, self.version)
        except (SourceError, OSError, ValueError, TypeError, AttributeError, KeyError) as err:
            self._failed(case.case_id, err)
            return
        self.sources.setdefault(case.study_uid, source)
        self._replace(case.case_id, [_save(self.folder, kind, case.case_id, ds) for kind, ds in made])

    def study(self, study: StudySummary) -> None:
        """The study's PDF, when one of its cases was written this run or its PDF is gone."""
        key, written = f"pdf:{study.study_uid}", study.study_uid in self.sources
        if not self.members.get(study.study_uid) or (not written and self._intact(key)):
            return
        try:
            source = self.sources.get(study.study_uid) or self._source(self.members[study.study_uid][0])
            pdf = _study_pdf(study, source, self.result, self.report_dir, self.version)
        except (SourceError, OSError, ValueError) as err:
            self._failed(study.study_uid, err)
            return
        self._replace(key, [_save(self.folder, "pdf", None, pdf)])

    def _source(self, case: CaseSummary) -> Source:
        paths = [row.path for row in self.rows[case.case_id]]
        return read_source(Path(self.result.input_dir), paths, case.study_uid)

    def _failed(self, what: str, err: Exception) -> None:
        self.failures.append((what, short_reason(err)))
        log.warning("no DICOM objects for %s: %s", what, short_reason(err))

    def _replace(self, key: str, fresh: list[DicomObject]) -> None:
        """This run's objects of a case (or study) in place of an earlier run's; unwanted files removed."""
        uids = {obj.sop_instance_uid for obj in fresh}
        for obj in self.earlier[key]:
            self.objects.pop(obj.sop_instance_uid, None)
            if obj.sop_instance_uid not in uids:
                (self.folder / obj.file).unlink(missing_ok=True)
        self.objects.update((obj.sop_instance_uid, obj) for obj in fresh)


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


def _study_pdf(study: StudySummary, source: Source, result: ScanResult, report_dir: Path,
               version: str) -> Dataset:
    """The study's Encapsulated PDF: the report of its cases alone."""
    from triage.report import draw_figures, render_pdf

    members = set(study.case_ids)
    own = dataclasses.replace(result, rows=tuple(row for row in result.rows if row.case_id in members),
                              cases=tuple(case for case in result.cases if case.case_id in members),
                              studies=(study,), dicom=None)
    pdf = render_pdf(own, report_dir, max_cases=settings.MAX_REPORT_CASES, figures=draw_figures(own))
    return study_pdf(study.study_uid, source, pdf, result.model, version)


def _save(folder: Path, kind: str, case_id: str | None, dataset: Dataset) -> DicomObject:
    """Write one object atomically; return its record."""
    relative = f"{dataset.StudyInstanceUID}/{kind}_{dataset.SOPInstanceUID}.dcm"
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    atomic_write_bytes(folder / relative, buffer.getvalue())
    return DicomObject(kind, case_id, str(dataset.StudyInstanceUID), str(dataset.SOPClassUID),
                       str(dataset.SOPInstanceUID), relative)


def _order(obj: DicomObject) -> tuple[str, str, str, str]:
    return obj.study_uid, obj.case_id or "~", obj.kind, obj.file
