"""What the report template shows: the run, the model, a card per flagged case, the failures.

:func:`context` gathers it from one :class:`~triage.results.records.ScanResult` as
plain values and strings, so the template only lays them out.
"""

from __future__ import annotations

import math
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from triage import RESEARCH_NOTICE, __version__
from triage.report.formatting import duration, short_number, url_path, when
from triage.results.records import STATUSES, CaseSummary, Row, ScanResult

RANDOM_BACKBONE_WARNING = (
    "RANDOM BACKBONE — this model was built for tests and smoke runs; its scores mean nothing."
)
# A PDF lists at most this many failed files; the CSV holds them all.
PDF_MAX_FAILURES = 500
_PRECISION_LABELS = {
    "fp32": "fp32 (exact)",
    "bf16": "bf16 (mixed bfloat16 backbone; float32 head, probability and heat maps)",
    "fp16": "fp16 (mixed float16 backbone; float32 head, probability and heat maps)",
    "int8": "int8 (OpenVINO, quantised by NNCF; float32 head gradient for the heat maps)",
}

# A relative image path -> what an <img> shows (a URL, or a data: URI); None when unavailable.
ImageSource = Callable[[str], str | None]


@dataclass(frozen=True)
class Figures:
    """The report's drawn figures, PNG ``data:`` URIs: drawn once for the HTML and the PDF of a run."""

    histogram: str | None
    plots: dict[str, str] = field(default_factory=dict)  # case_id -> probability along the slices


def context(result: ScanResult, *, for_pdf: bool, max_cases: int | None,
            image_src: ImageSource, figures: Figures) -> dict[str, Any]:
    """Everything the template reads, by name.

    Args:
        result: The run to report.
        for_pdf: The PDF variant: at most :data:`PDF_MAX_FAILURES` failures listed.
        max_cases: The most flagged cases with a card; ``None`` for all of them.
        image_src: Where each card's images are shown from.
        figures: The histogram and the cases' slice plots.
    """
    return {
        "for_pdf": for_pdf,
        **_run_facts(result),
        **_model_facts(result),
        **_flagged(result, max_cases, image_src, figures),
        **_unfamiliar(result, max_cases, image_src),
        **_failures(result, PDF_MAX_FAILURES if for_pdf else None),
    }


def shown_cases(result: ScanResult, max_cases: int | None) -> list[CaseSummary]:
    """The flagged cases with a card (a copy of an earlier case has none), the first ``max_cases``."""
    flagged = [case for case in result.flagged_cases if case.copy_of is None]
    return flagged if max_cases is None else flagged[:max_cases]


def shown_unfamiliar(result: ScanResult, max_cases: int | None) -> list[CaseSummary]:
    """The unfamiliar cases that are not flagged, with a card: the first ``max_cases``."""
    unfamiliar = [case for case in result.unfamiliar_cases if case.copy_of is None]
    return unfamiliar if max_cases is None else unfamiliar[:max_cases]


def rows_of(result: ScanResult, cases: Iterable[CaseSummary]) -> dict[str, list[Row]]:
    """The rows of the series and volumes among ``cases``, by case, in slice order."""
    case_ids = {case.case_id for case in cases if case.kind != "image"}
    rows: dict[str, list[Row]] = {}
    for row in result.rows:
        if row.case_id in case_ids:
            rows.setdefault(row.case_id, []).append(row)
    for case_rows in rows.values():
        case_rows.sort(key=lambda row: (row.slice_index or 0, row.path))
    return rows


# --------------------------------------------------------------------------- the page's parts


def _run_facts(result: ScanResult) -> dict[str, Any]:
    """The run: when, how fast, how many of each status, its studies, and the versions used."""
    return {
        "notice": RESEARCH_NOTICE,
        "title": "Brain MRI triage report",
        "result": result,
        "started": when(result.started_at),
        "finished": when(result.finished_at),
        "duration": duration(result.seconds),
        "speed": _speed(result),
        "counts": result.counts(),
        "carried_over": result.scored - result.scored_this_run,
        "aggregate": _aggregate_label(result.aggregate, result.top_k),
        "studies": sorted(result.studies, key=lambda s: (s.score is None, -(s.score or 0.0), s.study_uid)),
        "localizers": Counter(case.study_uid for case in result.cases if case.localizer),
        "statuses": STATUSES,
        "triage_version": result.versions.get("triage", __version__),
        "versions": sorted(result.versions.items()),
    }


def _model_facts(result: ScanResult) -> dict[str, Any]:
    model = result.model
    return {
        "model": model,
        "random_warning": RANDOM_BACKBONE_WARNING if model.random_backbone else None,
        "threshold_differs": not math.isclose(result.threshold, model.threshold),
        "model_rows": _model_rows(result),
    }


def _flagged(result: ScanResult, max_cases: int | None, image_src: ImageSource,
             figures: Figures) -> dict[str, Any]:
    """The histogram, a card per flagged case shown, and how many are not shown."""
    flagged, shown = shown_cases(result, None), shown_cases(result, max_cases)
    rows = rows_of(result, shown)
    return {
        "histogram": figures.histogram,
        "cards": [_card(rank, case, result, rows.get(case.case_id, []), image_src,
                        figures.plots.get(case.case_id))
                  for rank, case in enumerate(shown, start=1)],
        "flagged_total": len(flagged),
        "flagged_hidden": len(flagged) - len(shown),
        "copies_merged": len(result.flagged_cases) - len(flagged),
    }


def _unfamiliar(result: ScanResult, max_cases: int | None, image_src: ImageSource) -> dict[str, Any]:
    """A card per unfamiliar case that is not flagged: its most probable slice, as it is, and its distance."""
    every, shown = shown_unfamiliar(result, None), shown_unfamiliar(result, max_cases)
    rows = rows_of(result, shown)
    cards = [{"case": case, "location": _location(case, rows.get(case.case_id, [])),
              "new": result.incremental and case.new, "facts": _case_facts(case, result),
              "row": case.top[0], "original": _image_view(case.top[0].original, image_src)}
             for case in shown if case.top]
    return {"familiarity": result.model.familiarity, "unfamiliar_cards": cards,
            "unfamiliar_total": len(every), "unfamiliar_hidden": len(every) - len(shown)}


def _failures(result: ScanResult, limit: int | None) -> dict[str, Any]:
    """The failed files (the first ``limit``), and how many failed of each kind."""
    failures = result.failures
    shown = failures if limit is None else failures[:limit]
    return {
        "failures": [{"case": case, "reason": case.reason or STATUSES.get(case.status, "")}
                     for case in shown],
        "failures_total": len(failures),
        "failures_hidden": len(failures) - len(shown),
        "failure_kinds": Counter(case.status for case in failures).most_common(),
    }


# --------------------------------------------------------------------------- a flagged case's card


def _card(rank: int, case: CaseSummary, result: ScanResult, rows: list[Row],
          image_src: ImageSource, plot: str | None) -> dict[str, Any]:
    """What one flagged case's card shows: its top slices with their overlays and, for a stack, a plot."""
    slices = [{"row": row, "original": _image_view(row.original, image_src),
               "heatmap": _image_view(row.heatmap, image_src)} for row in case.top]
    return {
        "rank": rank,
        "case": case,
        "new": result.incremental and case.new,
        "slices": slices,
        "location": _location(case, rows),
        "facts": _case_facts(case, result),
        "plot": plot,
    }


def _image_view(relative: str | None, image_src: ImageSource) -> dict[str, Any]:
    if relative is None:
        return {"src": None, "note": "no image"}
    src = image_src(relative)
    return {"src": src, "href": url_path(relative), "note": None if src else "image unavailable"}


def _location(case: CaseSummary, rows: list[Row]) -> str:
    """Where a case lies: its file, or the folder that holds a series' files (with their count)."""
    paths = sorted({row.path for row in rows})
    if case.kind != "series" or len(paths) < 2:
        return case.first_path
    folder = posixpath.commonpath([posixpath.dirname(path) for path in paths])
    return f"{folder}/ ({len(paths)} files)" if folder else f"{len(paths)} files from {paths[0]}"


def _case_facts(case: CaseSummary, result: ScanResult) -> str:
    """One line on a series or volume: what it is, how it was ordered and scored."""
    if case.kind == "image":
        return ""
    what = [case.description or ("DICOM series" if case.kind == "series" else "NIfTI volume")]
    what += [case.modality] if case.modality else []
    what.append(f"{case.n_scored} of {case.n_images} slices scored")
    what.append("score: " + _aggregate_label(case.aggregate, result.top_k))
    what += [f"ordered by {case.sort_method.replace('_', ' ')}"] if case.sort_method else []
    what += ["localizer (left out of its study's line)"] if case.localizer else []
    what += [f"series {case.series_uid}"] if case.series_uid else []
    return " · ".join(what)


def _aggregate_label(aggregate: str, top_k: int) -> str:
    return f"the mean of the top {top_k} slices" if aggregate == "topk" else "the highest slice"


# --------------------------------------------------------------------------- the run and the model


def _speed(result: ScanResult) -> str:
    if result.seconds <= 0 or result.scored_this_run == 0:
        return "—"
    rate = result.images_per_second
    return f"{rate:.1f} images/s" if rate < 100 else f"{rate:,.0f} images/s"


def _model_rows(result: ScanResult) -> list[tuple[str, str]]:
    model = result.model
    threshold = short_number(model.threshold)
    if not math.isclose(result.threshold, model.threshold):
        threshold += f" (this run used {short_number(result.threshold)})"
    return [
        ("Model", model.id),
        ("Version", model.version),
        ("Trained on", model.trained_on or "not recorded"),
        ("Trained at", when(model.trained_at) if model.trained_at else "not recorded"),
        ("Threshold", threshold),
        *([("Certified", model.certified)] if model.certified else []),
        ("Calibration", model.calibration or "not recorded"),
        ("Input size", f"{model.image_size} × {model.image_size} px"),
        ("Validation sensitivity", _metric(model.val_sensitivity)),
        ("Validation specificity", _metric(model.val_specificity)),
        ("Familiarity check", _familiarity_row(model)),
        ("Measured", _measured_on(result)),
        ("Backbone weights", model.backbone_weights),
        ("Precision of this run", _precision(result)),
        ("Device of this run", "GPU" if model.device == "gpu" else "CPU"),
    ]


def _precision(result: ScanResult) -> str:
    """What the forward pass ran in and, for a reduced precision, what its fp32 safety net did."""
    model = result.model
    said = _PRECISION_LABELS.get(model.precision, model.precision)
    said += " (chosen by auto)" if model.auto_precision else ""
    if model.precision == "fp32" or model.margin is None:
        return said
    return (f"{said}; {result.rescored_this_run} images near the threshold (logit within "
            f"{model.margin:.3g}) scored again in fp32, which decided them")


def _familiarity_row(model: Any) -> str:
    if model.familiarity == "off":
        return "off for this run (--no-familiarity)"
    if model.familiarity != "checked":
        return "not available: this model was trained without a familiarity index"
    alarms = model.val_unfamiliar
    if alarms is None:
        return "on"
    point, low, high, n = alarms
    return (f"on; it called {point:.0%} of the validation images unfamiliar "
            f"(95% CI {low:.0%}–{high:.0%}, n={n})")


def _metric(value: tuple[float, float, float, int] | None) -> str:
    """``0.94 (95% CI 0.80–0.98, n=31)``, or ``not recorded``."""
    if value is None:
        return "not recorded"
    point, low, high, n = value
    return f"{point:.2f} (95% CI {low:.2f}–{high:.2f}, n={n})"


def _measured_on(result: ScanResult) -> str:
    """What the validation figures are: at which threshold, on how many images, and whether they hold here."""
    model = result.model
    where = (f"at the model's threshold {short_number(model.threshold)} ({model.threshold_source}) "
             f"on its validation set of {model.val_images if model.val_images is not None else '?'} images"
             + (f" ({model.val_split} split)" if model.val_split else ""))
    if not math.isclose(result.threshold, model.threshold):
        where += (f"; this run flags at {short_number(result.threshold)}, where these figures "
                  f"do not apply")
    return where
