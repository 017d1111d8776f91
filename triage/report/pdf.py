"""The report's PDF: the top flagged cases, their images embedded, rendered by a sandboxed WeasyPrint.

The PDF holds downscaled JPEG copies of the images as ``data:`` URIs, and its
renderer may fetch nothing but ``data:`` URIs and files under the report's
folder. WeasyPrint, Pillow and numpy are imported inside the functions that
need them, so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from triage.outputs.atomic import atomic_write_bytes
from triage.report.html import render_html
from triage.report.view import Figures, shown_cases, shown_unfamiliar
from triage.results.records import ScanResult

# Embedded PDF images: longest side in pixels, first JPEG quality, and the byte budget one
# image may use before it is re-encoded at a lower quality (noisy images compress badly).
_PDF_IMAGE_SIDE = 360
_PDF_JPEG_QUALITIES = (75, 60, 45, 35)
_PDF_IMAGE_BUDGET = 40_000


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
    atomic_write_bytes(path, render_pdf(result, Path(path).resolve().parent, max_cases=max_cases,
                                        figures=figures))


def render_pdf(result: ScanResult, folder: Path, *, max_cases: int = 200,
               figures: Figures | None = None) -> bytes:
    """The PDF report's bytes, for a report in ``folder`` (where the heat-map paths are relative to).

    Raises:
        ValueError: If ``max_cases`` is negative.
    """
    if max_cases < 0:
        raise ValueError(f"max_cases must be 0 or more, got {max_cases}")
    from weasyprint import HTML

    wanted = [rel for case in shown_cases(result, max_cases) for row in case.top
              for rel in (row.original, row.heatmap) if rel]
    wanted += [case.top[0].original for case in shown_unfamiliar(result, max_cases)
               if case.top and case.top[0].original]
    images = _embed_images(folder, wanted)
    html = render_html(result, for_pdf=True, max_cases=max_cases, image_src=images.get, figures=figures)
    fetcher = _restricted_url_fetcher(folder)
    document = HTML(string=html, base_url=folder.as_uri() + "/", url_fetcher=fetcher)
    return document.write_pdf()


# --------------------------------------------------------------------------- embedded images


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


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


# --------------------------------------------------------------------------- fetching


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
