"""What a scan has to do: discover()'s rows -> cases -> rows known without scoring, and cases to score.

DICOM series and NIfTI volumes are cases of several slices (:mod:`triage.inputs.cases`),
every other image a case of one; a file that is no image keeps discover()'s
status and belongs to no case. A case of the previous run is carried over whole
when its files are unchanged and all its rows were ``ok``; otherwise all of it
is scored again (a slice's pixels depend on its whole series: one window per case).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from triage.inputs.cases import Case, build_cases, image_case
from triage.inputs.discovery import FoundFile
from triage.results.records import Row

RowKey = tuple[str, int | None]
# Statuses that say a file is no image at all: such a loose file is no case.
NOT_IMAGES = frozenset({"unsupported", "empty"})


@dataclass
class Plan:
    """Every case in scoring order, the rows already known (by :attr:`Row.key`), the cases to score."""

    found: list[FoundFile]
    cases: list[Case] = field(default_factory=list)
    rows: dict[RowKey, Row] = field(default_factory=dict)
    to_score: list[Case] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Rows the run will have: those known and the slices to score."""
        return len(self.rows) + sum(len(case.slices) for case in self.to_score)


def case_fields(case: Case, slice_index: int | None = None) -> dict[str, Any]:
    """The fields a row takes from its case."""
    return {"case_id": case.case_id, "study_uid": case.study_uid or None,
            "series_uid": case.series_uid or None, "slice_index": slice_index}


def plan_scan(found: Sequence[FoundFile], reuse: dict[str, list[Row]], report_dir: Path, *,
              group_by: str = "auto", modalities: Sequence[str] = ("MR",), settle: float = 0.0) -> Plan:
    """Cases from the files found; rows for what is not scored and for unchanged cases.

    Args:
        found: discover()'s rows.
        reuse: The previous run's rows by path (see :func:`triage.scan.state.load_state`).
        report_dir: Folder the report lives in (carried rows' images must still be there).
        group_by, modalities: See :func:`triage.inputs.cases.build_cases`.
        settle: Seconds: a case with a file modified more recently is ``deferred`` to a later run.
    """
    built, loose = build_cases(found, group_by=group_by, modalities=modalities)
    images = [image_case(row) for row in loose if row.status is None]
    cases = sorted(built + images, key=_first_path)
    plan = Plan(list(found), [deferred(case, found, settle) for case in cases] if settle > 0 else cases)
    for row in loose:
        if row.status is not None:
            plan.rows[(row.relpath, None)] = Row(row.relpath, row.status, reason=row.reason)
    files = {item.relpath: item for item in found}
    counts = Counter(row.case_id for rows in reuse.values() for row in rows)
    for case in plan.cases:
        kept = refused_rows(case, files) if case.status is not None else _carried(
            case, reuse, counts[case.case_id], files, report_dir)
        if kept is None:
            plan.to_score.append(case)
        else:
            plan.rows.update((row.key, row) for row in kept)
    return plan


def deferred(case: Case, found: Sequence[FoundFile], settle: float) -> Case:
    """The case, ``deferred`` when one of its files was modified less than ``settle`` seconds ago."""
    if case.status is not None:
        return case
    paths = {slice_.relpath for slice_ in case.slices}
    newest = max((item.mtime_ns or 0 for item in found if item.relpath in paths), default=0)
    age = (time.time_ns() - newest) / 1e9
    if age >= settle:
        return case
    return replace(case, status="deferred", reason=f"a file changed {max(age, 0):.0f} s ago (less than the "
                                                   f"{settle:g} s to settle): a later run scores it")


def _first_path(case: Case) -> tuple[str, str]:
    return min(slice_.relpath for slice_ in case.slices), case.case_id


def refused_rows(case: Case, files: dict[str, FoundFile]) -> list[Row]:
    """One row per file of a case that is not scored, with the case's status and reason."""
    return [Row(path, str(case.status), reason=case.reason, size=files[path].size,
                       mtime_ns=files[path].mtime_ns, **case_fields(case))
            for path in dict.fromkeys(slice_.relpath for slice_ in case.slices)]


def _carried(case: Case, reuse: dict[str, list[Row]], previous_count: int,
             files: dict[str, FoundFile], report_dir: Path) -> list[Row] | None:
    """The previous run's rows of a case, when they still hold; None when it must be scored.

    They hold when the previous run had this very case (the same slices of the
    same files, no more: a file gone from a series changes its window) and
    every row is ``ok`` with its file and images unchanged.
    """
    wanted = {(slice_.relpath, slice_.slice_index) for slice_ in case.slices}
    rows = [row for path in {path for path, _ in wanted} for row in reuse.get(path, ())
            if row.case_id == case.case_id]
    if previous_count != len(wanted) or len(rows) != len(wanted) or {row.key for row in rows} != wanted:
        return None
    if not all(_unchanged(row, files[row.path], report_dir) for row in rows):
        return None
    return [replace(row, new=False) for row in rows]


def _row_order(key: RowKey) -> tuple[str, int]:
    path, slice_index = key
    return path, -1 if slice_index is None else slice_index


def _unchanged(old: Row, item: FoundFile, report_dir: Path) -> bool:
    """A previous ``ok`` row still holds: same size and mtime, and its images are still there.

    A failed row is never carried over: a permission fixed or a decoder installed
    since may let the same bytes be read now.
    """
    if not old.ok or (old.size, old.mtime_ns) != (item.size, item.mtime_ns):
        return False
    return all((report_dir / name).is_file() for name in (old.heatmap, old.original) if name)


def rows_in_path_order(rows: dict[RowKey, Row], found: Sequence[FoundFile]) -> list[Row]:
    """Every row, files in discover()'s (path) order, the slices of a file by slice index."""
    by_path: dict[str, list[Row]] = {}
    for row in rows.values():
        by_path.setdefault(row.path, []).append(row)
    ordered: list[Row] = []
    for item in found:
        ordered.extend(sorted(by_path.get(item.relpath, ()), key=lambda row: _row_order(row.key)))
    return ordered
