"""The report's figures for one run: the probability histogram and each flagged stack's slice plot."""

from __future__ import annotations

import base64

from triage.report.charts import histogram_png, slice_plot_png
from triage.report.view import Figures, rows_of, shown_cases
from triage.results.records import CaseSummary, Row, ScanResult


def draw_figures(result: ScanResult, max_cases: int | None = None) -> Figures:
    """The histogram, and the slice plot of each flagged case shown (the first ``max_cases``)."""
    shown = shown_cases(result, max_cases)
    rows = rows_of(result, shown)
    plots = {case.case_id: plot for case in shown
             if (plot := _slice_plot(case, rows.get(case.case_id, []), result.threshold))}
    return Figures(_histogram(result), plots)


def _histogram(result: ScanResult) -> str | None:
    """The ``ok`` probabilities, threshold marked; None when nothing was scored."""
    scored = [row for row in result.rows if row.ok and row.probability is not None]
    if not scored:
        return None
    below = [row.probability for row in scored if not row.flagged]
    above = [row.probability for row in scored if row.flagged]
    return _data_uri(histogram_png(below, above, result.threshold))


def _slice_plot(case: CaseSummary, rows: list[Row], threshold: float) -> str | None:
    """Probability along a stack's slices; None for a case of fewer than two scored slices."""
    points = tuple((row.slice_index or 0, row.probability) for row in rows
                   if row.ok and row.probability is not None)
    top = tuple(row.slice_index or 0 for row in case.top)
    return _data_uri(slice_plot_png(points, top, threshold)) if len(points) > 1 else None


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
