"""Verdicts from rows: each case's summary, each study's line, and copies among the files.

A case's score comes from its ``ok`` rows (:func:`triage.inputs.cases.case_score`), a
study's from its cases (:func:`triage.inputs.cases.study_score`). Files with the same
bytes are copies: each names the first of them, and a case whose rows are all
copies of an earlier case's rows is shown on that case's card.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Sequence

from triage.inputs.cases import Case, case_score, study_score
from triage.results.records import CaseSummary, Row, StudySummary


def mark_copies(rows: Sequence[Row]) -> list[Row]:
    """The rows with ``copy_of`` set: the first path, in path order, of another file with the same sha256."""
    first: dict[str, str] = {}
    for row in sorted(rows, key=lambda row: row.path):
        if row.sha256:
            first.setdefault(row.sha256, row.path)
    return [replace(row, copy_of=first[row.sha256] if row.sha256 and first[row.sha256] != row.path else None)
            for row in rows]


def slice_rank(row: Row) -> tuple[float, int]:
    """The order of a case's slices: highest probability first, then the lower slice index.

    It decides which slices a case's card shows and which get heat maps, so both use it.
    """
    return -(row.probability or 0.0), row.slice_index or 0


def case_verdict(case: Case, rows: Sequence[Row], threshold: float, aggregate: str,
              top_k: int) -> CaseSummary:
    """A case's verdict from its rows; its ``top`` rows are its ``top_k`` highest, highest first."""
    scored = sorted((row for row in rows if row.ok and row.probability is not None),
                    key=slice_rank)
    score = case_score([row.probability or 0.0 for row in scored], aggregate, top_k) if scored else None
    top = scored[0] if scored else None
    return CaseSummary(
        case_id=case.case_id, kind=case.kind, n_images=len(case.slices), n_scored=len(scored), score=score,
        flagged=score is not None and score >= threshold, aggregate=aggregate,
        first_path=case.slices[0].relpath, top_path=top.path if top else None,
        top_slice_index=top.slice_index if top else None, study_uid=case.study_uid,
        series_uid=case.series_uid, description=case.description, modality=case.modality,
        sort_method=case.sort_method, localizer=case.localizer, status=case.status, reason=case.reason,
        top=tuple(scored[:top_k]), new=any(row.new for row in rows), unfamiliar=_unfamiliar(scored),
        study=case.study)


def _unfamiliar(scored: Sequence[Row]) -> bool | None:
    """Most of a case's scored slices are unfamiliar; None when none was checked."""
    checked = [row.unfamiliar for row in scored if row.unfamiliar is not None]
    return 2 * sum(checked) > len(checked) if checked else None


def merge_copies(summaries: Sequence[CaseSummary],
                 rows_by_case: dict[str, list[Row]]) -> list[CaseSummary]:
    """Summaries with copies told: a case whose rows have the bytes of an earlier case's is its copy."""
    merged = list(summaries)
    owners: dict[tuple[str, ...], int] = {}
    for index, summary in enumerate(summaries):
        rows = rows_by_case.get(summary.case_id, [])
        content = tuple(row.sha256 or "" for row in rows)
        if not rows or not all(content):
            continue
        if content not in owners:
            owners[content] = index
            continue
        owner = owners[content]
        merged[owner] = replace(merged[owner], copies=merged[owner].copies + (summary.first_path,))
        merged[index] = replace(summary, copy_of=merged[owner].case_id)
    return merged


def study_summaries(summaries: Sequence[CaseSummary], threshold: float) -> tuple[StudySummary, ...]:
    """One line per DICOM study, in its cases' order; its score: its non-localizer cases' highest."""
    members: dict[str, list[CaseSummary]] = defaultdict(list)
    for summary in summaries:
        if summary.study_uid:
            members[summary.study_uid].append(summary)
    studies = []
    for uid, cases in members.items():
        score = study_score((case, case.score) for case in cases)
        studies.append(StudySummary(uid, score, score is not None and score >= threshold,
                                    tuple(case.case_id for case in cases), cases[0].study))
    return tuple(studies)


def verdicts(cases: Sequence[Case], rows: Sequence[Row], threshold: float, aggregate: str,
             top_k: int) -> tuple[list[CaseSummary], tuple[StudySummary, ...]]:
    """Every case's summary and the studies; a loose file that is no image has no case, so no summary."""
    by_case: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.case_id is not None:
            by_case[row.case_id].append(row)
    summaries = [case_verdict(case, by_case[case.case_id], threshold, aggregate, top_k)
                 for case in cases if case.case_id in by_case]
    for case_rows in by_case.values():
        case_rows.sort(key=lambda row: (row.slice_index or 0, row.path))
    summaries = merge_copies(summaries, by_case)
    return summaries, study_summaries(summaries, threshold)
