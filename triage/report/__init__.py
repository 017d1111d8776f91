"""The report people read: HTML and PDF from one scan's results.

A view model of the results (flagged cases first, then the rest), the charts
(one matplotlib idiom), the Jinja template, and the PDF renderer sandboxed to
the run's own files.
"""

from triage.report.figures import draw_figures
from triage.report.html import write_html
from triage.report.pdf import render_pdf, write_pdf
from triage.report.view import Figures

__all__ = ["Figures", "draw_figures", "render_pdf", "write_html", "write_pdf"]
