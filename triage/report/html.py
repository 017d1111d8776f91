"""The report's HTML: the Jinja template rendered from :func:`~triage.report.view.context`.

The same template renders the HTML page and the PDF's source (``for_pdf``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jinja2
from markupsafe import Markup

from triage.outputs.atomic import atomic_write_text
from triage.report.figures import draw_figures
from triage.report.formatting import short_number, study_date, url_path
from triage.report.view import Figures, ImageSource, context
from triage.results.records import ScanResult

TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"


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


def render_html(
    result: ScanResult,
    *,
    for_pdf: bool = False,
    max_cases: int | None = None,
    image_src: ImageSource | None = None,
    figures: Figures | None = None,
) -> str:
    """Render the report template to a string (the HTML page, or the PDF's source).

    Args:
        result: The run to report.
        for_pdf: Render the PDF variant: embedded images, page margin boxes, case limit.
        max_cases: The most flagged cases to show; ``None`` shows them all.
        image_src: Each image's relative path -> what the page shows (default: the path
            as a URL); the PDF gives the ``data:`` URIs it embeds.
        figures: Figures already drawn for this result (default: drawn here).

    Returns:
        The HTML text.
    """
    if for_pdf and image_src is None:
        raise ValueError("the PDF variant needs image_src: the images it embeds")
    page = context(result, for_pdf=for_pdf, max_cases=max_cases, image_src=image_src or url_path,
                   figures=figures or draw_figures(result, max_cases))
    css = Markup(template_source(STYLESHEET))
    return _environment().get_template(TEMPLATE).render(**page, css=css)


def template_source(name: str) -> str:
    """The text of a file in ``triage.templates`` (installed) or ``templates/`` (source tree)."""
    try:
        from importlib.resources import files

        return files("triage.templates").joinpath(name).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        # A source checkout that was never installed has no ``triage.templates`` package:
        # the folder sits at the top level, beside ``triage/``.
        return (Path(__file__).resolve().parents[2] / "templates" / name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(template_source),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["css_string"] = _css_string
    env.filters["urlpath"] = url_path
    env.filters["intcomma"] = lambda n: f"{n:,}"
    env.filters["prob"] = lambda p: "—" if p is None else f"{p:.3f}"
    env.filters["num"] = short_number
    env.filters["study_date"] = study_date
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
