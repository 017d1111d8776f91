"""The HTML and PDF reports of a scan, rendered from one :class:`~triage.results.records.ScanResult`.

Both formats share ``templates/report.html.j2``: the HTML holds every flagged case and
references the overlay images beside it; the PDF holds the top ``max_cases`` flagged cases
with downscaled JPEG copies of the images embedded as ``data:`` URIs, and its renderer may
fetch nothing but ``data:`` URIs and files under the report's folder.

WeasyPrint, matplotlib and Pillow are imported inside the functions that need them, so
importing this module stays cheap.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import os
import posixpath
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import jinja2
from markupsafe import Markup

from triage import RESEARCH_NOTICE, __version__
from triage.outputs.atomic import atomic_write_bytes, atomic_write_text
from triage.results.records import STATUSES, CaseSummary, Row, ScanResult

TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"

RANDOM_BACKBONE_WARNING = (
    "RANDOM BACKBONE — this model was built for tests and smoke runs; its scores mean nothing."
)

# Embedded PDF images: longest side in pixels, first JPEG quality, and the byte budget one
# image may use before it is re-encoded at a lower quality (noisy images compress badly).
_PDF_IMAGE_SIDE = 360
_PDF_JPEG_QUALITIES = (75, 60, 45, 35)
_PDF_IMAGE_BUDGET = 40_000
# A PDF lists at most this many failed files; the CSV holds them all.
_PDF_MAX_FAILURES = 500


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class Figures:
    """The report's drawn figures, PNG ``data:`` URIs: drawn once for the HTML and the PDF of a run."""

    histogram: str | None
    plots: dict[str, str] = field(default_factory=dict)  # case_id -> probability along the slices


def draw_figures(result: ScanResult, max_cases: int | None = None) -> Figures:
    """The histogram, and the slice plot of each flagged case shown (the first ``max_cases``)."""
    shown = _shown_cases(result, max_cases)
    rows = _rows_of(result, {case.case_id for case in shown if case.kind != "image"})
    plots = {case.case_id: plot for case in shown
             if (plot := _slice_plot(case, rows.get(case.case_id, []), result.threshold))}
    return Figures(_histogram_png(result), plots)


def write_html(result: ScanResult, path: str | os.PathLike[str], figures: Figures | None = None) -> None:
    """Write the full report as one self-contained HTML file.

    The page holds every flagged case. Images are referenced by the relative paths in
    ``case.original`` and ``case.heatmap`` (relative to the report's folder); the histogram
    and the stylesheet are embedded, so the page loads nothing from anywhere else.

    Args:
        result: The run to report.
        path: Where to write the HTML; written atomically.
        figures: Figures already drawn for this result (default: drawn here).
    """
    html = render_html(result, for_pdf=False, figures=figures)
    atomic_write_text(path, html)


def write_pdf(result: ScanResult, path: str | os.PathLike[str], *, max_cases: int = 200,
              figures: Figures | None = None) -> None:
    """Write the report as a PDF, with at most ``max_cases`` flagged cases.

    The PDF holds the top ``max_cases`` flagged cases (highest probability first) and says
    how many more the HTML and CSV hold. Images are downscaled (longest side 360 px) and
    JPEG-compressed before they are embedded as ``data:`` URIs. The renderer fetches only
    ``data:`` URIs and ``file:`` URLs under the report's folder, never the network.

    Args:
        result: The run to report.
        path: Where to write the PDF; rendered in memory, then written atomically.
        max_cases: The most flagged cases to show.
        figures: Figures already drawn for this result (default: drawn here).

    Raises:
        ValueError: If ``max_cases`` is negative.
    """
    if max_cases < 0:
        raise ValueError(f"max_cases must be 0 or more, got {max_cases}")
    from weasyprint import HTML

    folder = Path(path).resolve().parent
    html = render_html(result, for_pdf=True, max_cases=max_cases, image_root=folder, figures=figures)
    fetcher = _restricted_url_fetcher(folder)
    document = HTML(string=html, base_url=folder.as_uri() + "/", url_fetcher=fetcher)
    atomic_write_bytes(path, document.write_pdf())


def render_html(
    result: ScanResult,
    *,
    for_pdf: bool = False,
    max_cases: int | None = None,
    image_root: Path | None = None,
    figures: Figures | None = None,
) -> str:
    """Render the report template to a string (the HTML page, or the PDF's source).

    Args:
        result: The run to report.
        for_pdf: Render the PDF variant: embedded images, page margin boxes, case limit.
        max_cases: The most flagged cases to show; ``None`` shows them all.
        image_root: The folder that ``case.original``/``case.heatmap`` are relative to;
            needed only for the PDF, which reads the images to embed them.
        figures: Figures already drawn for this result (default: drawn here).

    Returns:
        The HTML text.
    """
    context = _context(result, for_pdf=for_pdf, max_cases=max_cases, image_root=image_root,
                       figures=figures or draw_figures(result, max_cases))
    return _environment().get_template(TEMPLATE).render(**context)


# --------------------------------------------------------------------------- templates


def _template_source(name: str) -> str:
    """The text of a file in ``triage.templates`` (installed) or ``templates/`` (source tree)."""
    try:
        from importlib.resources import files

        return files("triage.templates").joinpath(name).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        # A source checkout that was never installed has no ``triage.templates`` package:
        # the folder sits at the top level, beside ``triage/``.
        return (Path(__file__).resolve().parent.parent / "templates" / name).read_text(
            encoding="utf-8"
        )


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["css_string"] = _css_string
    env.filters["urlpath"] = _url_path
    env.filters["intcomma"] = lambda n: f"{n:,}"
    env.filters["prob"] = lambda p: "—" if p is None else f"{p:.3f}"
    env.filters["num"] = _short_number
    env.filters["plural"] = lambda n, one, many=None: one if n == 1 else (many or one + "s")
    return env


def _css_string(text: str) -> Markup:
    """A quoted CSS string for ``content:``; everything but plain characters is escaped."""
    out = []
    for char in str(text):
        if char.isascii() and (char.isalnum() or char in " .,:;_/()-"):
            out.append(char)
        else:
            out.append(f"\\{ord(char):x} ")  # the space ends the escape and is consumed
    return Markup('"' + "".join(out) + '"')


def _url_path(relative: str) -> str:
    """A relative file path as a URL path (``#``, ``?``, ``%``, spaces percent-encoded)."""
    return urllib.parse.quote(relative, safe="/")


def _short_number(value: float) -> str:
    """A threshold-like number with 2 or 3 decimals: 0.5 -> 0.50, 0.625 -> 0.625."""
    text = f"{value:.3f}"
    return text[:-1] if text.endswith("0") else text


# --------------------------------------------------------------------------- context


def _context(
    result: ScanResult,
    *,
    for_pdf: bool,
    max_cases: int | None,
    image_root: Path | None,
    figures: Figures,
) -> dict[str, Any]:
    flagged = [case for case in result.flagged_cases if case.copy_of is None]
    shown = _shown_cases(result, max_cases)
    image_src: Callable[[str], str | None]
    if for_pdf:
        if image_root is None:
            raise ValueError("the PDF variant needs image_root to read the images from")
        wanted = [rel for case in shown for row in case.top for rel in (row.original, row.heatmap) if rel]
        image_src = _embed_images(image_root, wanted).get
    else:
        image_src = _url_path
    rows = _rows_of(result, {case.case_id for case in shown if case.kind != "image"})
    cards = [_card(rank, case, result, rows.get(case.case_id, []), image_src, figures.plots.get(case.case_id))
             for rank, case in enumerate(shown, start=1)]
    failures = result.failures
    failures_shown = failures[:_PDF_MAX_FAILURES] if for_pdf else failures
    model = result.model
    return {
        "for_pdf": for_pdf,
        "notice": RESEARCH_NOTICE,
        "random_warning": RANDOM_BACKBONE_WARNING if model.random_backbone else None,
        "result": result,
        "model": model,
        "title": "Brain MRI triage report",
        "started": _when(result.started_at),
        "finished": _when(result.finished_at),
        "duration": _duration(result.seconds),
        "speed": _speed(result),
        "counts": result.counts(),
        "carried_over": result.scored - result.scored_this_run,
        "threshold_differs": not math.isclose(result.threshold, model.threshold),
        "model_rows": _model_rows(result),
        "histogram": figures.histogram,
        "cards": cards,
        "flagged_total": len(flagged),
        "flagged_hidden": len(flagged) - len(shown),
        "copies_merged": len(result.flagged_cases) - len(flagged),
        "aggregate": _aggregate_label(result.aggregate, result.top_k),
        "studies": sorted(result.studies, key=lambda s: (s.score is None, -(s.score or 0.0), s.study_uid)),
        "localizers": Counter(case.study_uid for case in result.cases if case.localizer),
        "failures": [
            {"case": case, "reason": case.reason or STATUSES.get(case.status, "")}
            for case in failures_shown
        ],
        "failures_total": len(failures),
        "failures_hidden": len(failures) - len(failures_shown),
        "failure_kinds": Counter(case.status for case in failures).most_common(),
        "statuses": STATUSES,
        "css": Markup(_template_source(STYLESHEET)),
        "triage_version": result.versions.get("triage", __version__),
        "versions": sorted(result.versions.items()),
    }


def _shown_cases(result: ScanResult, max_cases: int | None) -> list[CaseSummary]:
    """The flagged cases with a card (a copy of an earlier case has none), the first ``max_cases``."""
    flagged = [case for case in result.flagged_cases if case.copy_of is None]
    return flagged if max_cases is None else flagged[:max_cases]


def _rows_of(result: ScanResult, case_ids: set[str]) -> dict[str, list[Row]]:
    """The rows of the given cases, by case, in slice order."""
    rows: dict[str, list[Row]] = {}
    for row in result.rows:
        if row.case_id in case_ids:
            rows.setdefault(row.case_id, []).append(row)
    for case_rows in rows.values():
        case_rows.sort(key=lambda row: (row.slice_index or 0, row.path))
    return rows


def _card(rank: int, case: CaseSummary, result: ScanResult, rows: list[Row],
          image_src: Callable[[str], str | None], plot: str | None) -> dict[str, Any]:
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


def _image_view(relative: str | None, image_src: Callable[[str], str | None]) -> dict[str, Any]:
    if relative is None:
        return {"src": None, "note": "no image"}
    src = image_src(relative)
    return {"src": src, "href": _url_path(relative), "note": None if src else "image unavailable"}


def _when(stamp: str) -> str:
    """An ISO timestamp as ``2025-11-25 19:28:03 UTC``; anything else unchanged."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return stamp
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    offset = moment.utcoffset()
    if offset is None:
        return text
    if not offset:
        return text + " UTC"
    return text + " " + moment.strftime("%z")[:3] + ":" + moment.strftime("%z")[3:]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _speed(result: ScanResult) -> str:
    if result.seconds <= 0 or result.scored_this_run == 0:
        return "—"
    rate = result.images_per_second
    return f"{rate:.1f} images/s" if rate < 100 else f"{rate:,.0f} images/s"


def _metric(value: tuple[float, float, float, int] | None) -> str:
    """``0.94 (95% CI 0.80–0.98, n=31)``, or ``not recorded``."""
    if value is None:
        return "not recorded"
    point, low, high, n = value
    return f"{point:.2f} (95% CI {low:.2f}–{high:.2f}, n={n})"


def _measured_on(result: ScanResult) -> str:
    """What the validation figures are: at which threshold, on how many images, and whether they hold here."""
    model = result.model
    where = (f"at the model's threshold {_short_number(model.threshold)} ({model.threshold_source}) "
             f"on its validation set of {model.val_images if model.val_images is not None else '?'} images"
             + (f" ({model.val_split} split)" if model.val_split else ""))
    if not math.isclose(result.threshold, model.threshold):
        where += (f"; this run flags at {_short_number(result.threshold)}, where these figures "
                  f"do not apply")
    return where


def _model_rows(result: ScanResult) -> list[tuple[str, str]]:
    model = result.model
    threshold = _short_number(model.threshold)
    if not math.isclose(result.threshold, model.threshold):
        threshold += f" (this run used {_short_number(result.threshold)})"
    return [
        ("Model", model.id),
        ("Version", model.version),
        ("Trained on", model.trained_on or "not recorded"),
        ("Trained at", _when(model.trained_at) if model.trained_at else "not recorded"),
        ("Threshold", threshold),
        ("Input size", f"{model.image_size} × {model.image_size} px"),
        ("Validation sensitivity", _metric(model.val_sensitivity)),
        ("Validation specificity", _metric(model.val_specificity)),
        ("Measured", _measured_on(result)),
        ("Backbone weights", model.backbone_weights),
        ("Precision of this run", _PRECISION_LABELS.get(model.precision, model.precision)),
        ("Device of this run", "GPU" if model.device == "gpu" else "CPU"),
    ]


_PRECISION_LABELS = {
    "fp32": "fp32 (exact)",
    "bf16": "bf16 (mixed bfloat16 backbone; float32 head, probability and heat maps)",
    "fp16": "fp16 (mixed float16 backbone; float32 head, probability and heat maps)",
}


# --------------------------------------------------------------------------- images


def _histogram_png(result: ScanResult) -> str | None:
    """A histogram of the ``ok`` probabilities, threshold marked, as a PNG ``data:`` URI."""
    scored = [c for c in result.rows if c.ok and c.probability is not None]
    if not scored:
        return None
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    below = np.array([c.probability for c in scored if not c.flagged], dtype=float)
    above = np.array([c.probability for c in scored if c.flagged], dtype=float)
    bins = np.linspace(0.0, 1.0, 41)
    heights = np.histogram(np.concatenate([below, above]), bins=bins)[0]
    # One tall bar near 0 (most scans are clean) would flatten every other bar to nothing.
    nonzero = np.sort(heights[heights > 0])
    log_scale = nonzero.size > 1 and nonzero[-1] > 100 and nonzero[-1] > 20 * nonzero[-2]

    figure = Figure(figsize=(7.0, 2.3), dpi=150)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.075, 0.2, 0.9, 0.68))
    axes.hist(
        [below, above], bins=bins, stacked=True, color=["#8aa1b4", "#c0392b"],
        edgecolor="white", linewidth=0.5,
        label=[f"below threshold ({below.size:,})", f"flagged ({above.size:,})"],
    )
    axes.axvline(result.threshold, color="#1d2329", linestyle="--", linewidth=1.2)
    axes.annotate(
        f"threshold {_short_number(result.threshold)}", xy=(result.threshold, 1.0),
        xycoords=("data", "axes fraction"), xytext=(4, -4), textcoords="offset points",
        ha="left" if result.threshold < 0.8 else "right", va="top", fontsize=8,
    )
    axes.set_xlim(0, 1)
    if log_scale:
        axes.set_yscale("log")
        axes.set_ylim(bottom=0.8)
    else:
        axes.yaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel("tumour probability", fontsize=8)
    axes.set_ylabel("images (log scale)" if log_scale else "images", fontsize=8)
    axes.tick_params(labelsize=7)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.legend(
        fontsize=7, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2,
        borderaxespad=0.2,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _slice_plot(case: CaseSummary, rows: list[Row], threshold: float) -> str | None:
    """A stack's plot (see :func:`_slice_plot_png`), or None for a case of fewer than two scored slices."""
    points = tuple((row.slice_index or 0, row.probability) for row in rows
                   if row.ok and row.probability is not None)
    top = tuple(row.slice_index or 0 for row in case.top)
    return _slice_plot_png(points, top, threshold) if len(points) > 1 else None


def _slice_plot_png(points: tuple[tuple[int, float], ...], top: tuple[int, ...], threshold: float) -> str:
    """Probability along the slice index, threshold drawn, the top slices marked; a PNG ``data:`` URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    index = [i for i, _ in points]
    probability = [p for _, p in points]
    figure = Figure(figsize=(6.0, 1.5), dpi=150)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.075, 0.27, 0.9, 0.55))
    axes.plot(index, probability, color="#5b7fa6", linewidth=1.0, marker="o", markersize=2.2)
    marked = [(i, p) for i, p in points if i in top]
    axes.plot([i for i, _ in marked], [p for _, p in marked], linestyle="none", marker="o", markersize=4,
              color="#c0392b", label="slices shown")
    axes.axhline(threshold, color="#1d2329", linestyle="--", linewidth=0.9,
                 label=f"threshold {_short_number(threshold)}")
    axes.set_ylim(-0.04, 1.04)
    axes.set_xlim(min(index) - 0.5, max(index) + 0.5)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel("slice index", fontsize=7)
    axes.set_ylabel("probability", fontsize=7)
    axes.tick_params(labelsize=6)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.legend(fontsize=6, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.02), ncol=2,
                borderaxespad=0.0)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _embed_images(root: Path, relatives: list[str]) -> dict[str, str | None]:
    """Each relative path -> a downscaled JPEG ``data:`` URI (None when unreadable)."""
    unique = list(dict.fromkeys(relatives))
    if len(unique) < 8:
        return {rel: _embedded_image(root, rel) for rel in unique}
    # Decoding, resizing and encoding release the GIL: threads use every core.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(unique, pool.map(functools.partial(_embedded_image, root), unique)))


def _embedded_image(root: Path, relative: str) -> str | None:
    """A downscaled JPEG copy of ``root/relative`` as a ``data:`` URI, or None if unreadable."""
    source = root / relative
    if not _inside(root, source) or not source.is_file():
        return None
    data = _thumbnail_jpeg(source)
    if data is None:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def _thumbnail_jpeg(source: Path, side: int = _PDF_IMAGE_SIDE) -> bytes | None:
    """JPEG bytes of the image at ``source``, longest side at most ``side`` px."""
    from PIL import Image

    try:
        with Image.open(source) as opened:
            opened.draft("RGB", (side, side))  # JPEG: decode at a reduced scale, much faster
            image = _displayable(opened)
            image.thumbnail((side, side), Image.Resampling.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    data = b""
    for quality in _PDF_JPEG_QUALITIES:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
        data = buffer.getvalue()
        if len(data) <= _PDF_IMAGE_BUDGET:
            break
    return data


def _displayable(image: Any) -> Any:
    """The image as 8-bit ``L`` (grey, also RGB with equal channels) or ``RGB``."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit or float: stretch to 0..255 (a plain convert would clip at 255).
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else pixels * 0.0
        return Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode in ("1", "L", "LA", "La"):
        return image.convert("L")
    image = image.convert("RGB")
    pixels = np.asarray(image)
    if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(
        pixels[..., 1], pixels[..., 2]
    ):
        return image.convert("L")  # a grey scan saved as RGB needs no colour channels
    return image


# --------------------------------------------------------------------------- fetching


def _check_fetchable(root: Path, url: str) -> None:
    """Raise ``ValueError`` unless ``url`` is a ``data:`` URI or a file under ``root``."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return
    if scheme == "file":
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"refusing to fetch a file on another host: {url}")
        target = Path(urllib.request.url2pathname(urllib.parse.unquote(parts.path)))
        if target.is_absolute() and _inside(root, target):
            return
        raise ValueError(f"refusing to fetch a file outside the report's folder: {url}")
    raise ValueError(f"refusing to fetch {url!r}: only data: URIs and the run's files")


def _restricted_url_fetcher(root: Path) -> Any:
    """A WeasyPrint URL fetcher that allows ``data:`` URIs and files under ``root`` only.

    Anything else (``http:``, ``https:``, ``ftp:``, files elsewhere) raises ``ValueError``.
    The returned object is callable with one URL, like WeasyPrint's own fetchers.
    """
    root = Path(root).resolve()
    from weasyprint import urls

    if hasattr(urls, "URLFetcher"):  # WeasyPrint >= 68: fetchers are URLFetcher objects

        class _Fetcher(urls.URLFetcher):  # type: ignore[name-defined,misc]
            def fetch(self, url: str, headers: Any = None) -> Any:
                _check_fetchable(root, url)
                return super().fetch(url, headers)

        return _Fetcher(allowed_protocols=("data", "file"))

    def fetcher(url: str, *args: Any, **kwargs: Any) -> Any:  # older WeasyPrint: a function
        _check_fetchable(root, url)
        return urls.default_url_fetcher(url, *args, **kwargs)

    return fetcher
