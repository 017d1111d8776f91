"""The report people read: HTML and PDF from one scan's results.

A view model of the results (flagged cases first, then the rest), the charts
(one matplotlib idiom), the Jinja template, and the PDF renderer sandboxed to
the run's own files.
"""
