"""How the report writes numbers, times and file paths."""

from __future__ import annotations

import urllib.parse
from datetime import datetime


def short_number(value: float) -> str:
    """A threshold-like number with 2 or 3 decimals: 0.5 -> 0.50, 0.625 -> 0.625."""
    text = f"{value:.3f}"
    return text[:-1] if text.endswith("0") else text


def url_path(relative: str) -> str:
    """A relative file path as a URL path (``#``, ``?``, ``%``, spaces percent-encoded)."""
    return urllib.parse.quote(relative, safe="/")


def when(stamp: str) -> str:
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


def duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def study_date(value: str) -> str:
    """A DICOM date ``20240305`` as ``2024-03-05``; ``—`` when there is none; anything else unchanged."""
    text = (value or "").strip()
    if not text:
        return "—"
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text
