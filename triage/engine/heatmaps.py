"""Grad-CAM overlays and display copies of scans, written in background threads.

Each image is written to a temporary name and renamed, so a report never
points at half an image; the queue is bounded so memory stays flat.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

# Blending and PNG/JPEG encoding run in OpenCV, which releases the GIL: threads scale.
# One thread wrote about 75 overlays/s, too few for a GPU's scan with 10% flagged.
WRITE_THREADS = min(8, os.cpu_count() or 1)


class HeatmapWriter:
    """Writes overlay and display images in background threads, atomically, one file each."""

    def __init__(self, folder: Path, relative_to: Path, tag: str, threads: int = WRITE_THREADS) -> None:
        self.folder = folder
        self.relative_to = relative_to
        self.tag = tag  # the model's, so overlays of different models never share a name
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="triage-write")
        self._pending: list[Future[None]] = []
        self._submitted: set[str] = set()  # copies of one image share their files: written once

    def submit(self, sha256: str, pixels: np.ndarray, cam: np.ndarray, part: str = "") -> tuple[str, str]:
        """Queue the overlay and the image (a display copy); return their paths relative to the report.

        ``part`` tells apart images of one file (the slices of a volume, the frames of a DICOM file).
        """
        stem = f"{sha256[:20]}{part}-{self.tag}"
        overlay_path = self.folder / f"{stem}_gradcam.png"
        image_path = self.folder / f"{stem}_image.jpg"
        if stem not in self._submitted:
            self._submitted.add(stem)
            self._queue(pixels, cam, overlay_path, image_path)
        return os.path.relpath(overlay_path, self.relative_to), os.path.relpath(image_path, self.relative_to)

    def submit_image(self, sha256: str, pixels: np.ndarray, part: str = "") -> str:
        """Queue the display copy alone (an image shown without a heat map); return its path."""
        image_path = self.folder / f"{sha256[:20]}{part}-{self.tag}_image.jpg"
        if image_path.name not in self._submitted:
            self._submitted.add(image_path.name)
            self._queue(pixels, None, None, image_path)
        return os.path.relpath(image_path, self.relative_to)

    def _queue(self, pixels: np.ndarray, cam: np.ndarray | None, overlay_path: Path | None,
               image_path: Path) -> None:
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            future.result()  # a failed write stops the run here, not silently
        if len(self._pending) > 64:  # bound the queue so memory stays flat
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._write, pixels, cam, overlay_path, image_path))

    @staticmethod
    def _write(pixels: np.ndarray, cam: np.ndarray | None, overlay_path: Path | None,
               image_path: Path) -> None:
        from triage.engine.gradcam import overlay

        writes = [(image_path, pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])]
        if cam is not None and overlay_path is not None:
            writes.insert(0, (overlay_path, overlay(pixels, cam), [cv2.IMWRITE_PNG_COMPRESSION, 3]))
        for path, image, params in writes:
            ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise OSError(f"could not encode {path.name}")
            tmp = path.with_name(f".{path.name}.tmp")
            try:
                tmp.write_bytes(encoded.tobytes())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def close(self) -> None:
        """Wait for every write, then raise the first failure.

        The thread is joined before anything is raised, so no temporary file is
        being written once this returns, even when a write failed.
        """
        self._pool.shutdown(wait=True)
        for future in self._pending:
            future.result()
