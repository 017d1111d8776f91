"""The two CSVs of a scan: one row per file or slice (``report.csv``), one per case (``report_cases.csv``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from triage.outputs.atomic import atomic_write_text
from triage.results.records import ScanResult

CSV_COLUMNS = (
    "path", "sha256", "status", "reason", "probability", "raw_probability", "flagged",
    "heatmap", "width", "height", "format", "model_id",
    "case_id", "study_uid", "series_uid", "slice_index", "copy_of", "heatmap_note",
    "ood_distance", "unfamiliar", "frame", "precision",
)
CASE_CSV_COLUMNS = (
    "case_id", "kind", "study_uid", "study_date", "study_description", "accession_number", "patient_id",
    "series_uid", "description", "modality", "n_images", "n_scored",
    "score", "flagged", "top_path", "top_slice_index", "aggregate", "sort_method", "localizer",
    "unfamiliar", "needs_review",
)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def csv_text(result: ScanResult) -> str:
    """The CSV of a run: one row per file found, in the run's (path-sorted) order.

    Lines end in ``\\r\\n`` (RFC 4180), so a field that holds a carriage return
    or a line feed (a file name may) is quoted, and read back whole.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in result.rows:
        writer.writerow([
            row.path, _cell(row.sha256), row.status, row.reason,
            _cell(row.probability), _cell(row.raw_probability), _cell(row.flagged) if row.ok else "",
            _cell(row.heatmap), _cell(row.width), _cell(row.height), _cell(row.format),
            result.model.id, _cell(row.case_id), _cell(row.study_uid), _cell(row.series_uid),
            _cell(row.slice_index), _cell(row.copy_of), _cell(row.heatmap_note),
            _cell(row.ood_distance), _cell(row.unfamiliar), _cell(row.frame), _cell(row.precision),
        ])
    return buffer.getvalue()


def cases_csv_text(result: ScanResult) -> str:
    """The cases CSV of a run: one row per case, in the run's (first path) order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CASE_CSV_COLUMNS)
    for case in result.cases:
        writer.writerow([
            case.case_id, case.kind, case.study_uid, case.study.date, case.study.description,
            case.study.accession, case.study.patient_id, case.series_uid, case.description, case.modality,
            case.n_images, case.n_scored, _cell(case.score), _cell(case.flagged) if case.n_scored else "",
            _cell(case.top_path), _cell(case.top_slice_index), case.aggregate, case.sort_method,
            _cell(case.localizer), _cell(case.unfamiliar), _cell(case.needs_review) if case.n_scored else "",
        ])
    return buffer.getvalue()


def write_csv(result: ScanResult, path: str | Path) -> None:
    """Write the run's CSV atomically."""
    atomic_write_text(path, csv_text(result))


def write_cases_csv(result: ScanResult, path: str | Path) -> None:
    """Write the run's cases CSV atomically."""
    atomic_write_text(path, cases_csv_text(result))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_csv` back as a list of row dicts, each field exactly."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
