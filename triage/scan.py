"""Scanning: discover -> decode (prefetched) -> batch -> one forward pass -> Grad-CAM -> results.

Decoding runs ahead in threads through a bounded window and heat maps are
written by a background thread, so the model rarely waits and memory does not
grow with the folder.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np

from triage import __version__
from triage.card import MODEL_FILE, find_model, read_card, summarise
from triage.errors import ImageLoadError, ModelError, UsageError
from triage.images import FoundFile, LoadedImage, discover, read_image
from triage.model import CAM_LAYER, load_classifier, sha256_file
from triage.preprocess import resize_for_model
from triage.results import CaseResult, ModelSummary, ScanResult
from triage.stream import batched, prefetch_map

log = logging.getLogger(__name__)

EXPLAIN_CHOICES = ("flagged", "all", "none")
HEATMAP_MAX_SIDE = 1024  # overlays larger than this are written downscaled


@dataclass(frozen=True)
class ScanOptions:
    """Settings of a scan; ``threshold`` None means the model card's threshold."""

    threshold: float | None = None
    explain: str = "flagged"
    batch_size: int = 16
    cam_layer: str = CAM_LAYER
    device: str = "auto"  # auto | cpu | gpu

    def validate(self) -> None:
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise UsageError(f"--threshold must be in [0, 1], got {self.threshold}.")
        if self.explain not in EXPLAIN_CHOICES:
            raise UsageError(f"--explain must be one of {', '.join(EXPLAIN_CHOICES)}.")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}.")


@dataclass
class LoadedModel:
    """A model ready to scan with: the network, its card, and the Grad-CAM built once."""

    folder: Path
    card: dict[str, Any]
    summary: ModelSummary
    gradcam: Any
    image_size: int
    on_gpu: bool


def _gpu_available() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def load_model(model: str | Path | None, options: ScanOptions) -> LoadedModel:
    """Find, load and prepare the model (mixed precision + XLA on a GPU, fp32 on CPU).

    Raises:
        ModelError: no usable model.
    """
    from triage.cam import GradCam
    from triage.model import with_dtype_policy

    folder = find_model(model)
    card = read_card(folder)
    network = load_classifier(folder / MODEL_FILE)
    on_gpu = options.device != "cpu" and _gpu_available()
    if options.device == "gpu" and not on_gpu:
        raise UsageError("--device gpu was asked for, but TensorFlow sees no GPU.")
    if on_gpu:
        network = with_dtype_policy(network, "mixed_float16")
    size = int(card["image_size"])
    if tuple(network.input.shape[1:]) != (size, size, 3):
        raise ModelError(f"Model card says image size {size}, the model takes {network.input.shape}.")
    summary = summarise(folder, card, sha256_file(folder / MODEL_FILE))
    gradcam = GradCam(network, options.cam_layer, jit_compile=on_gpu)
    log.info("model %s (%s), CAM layer %s, %s", summary.id, folder, options.cam_layer,
             "GPU, mixed precision, XLA" if on_gpu else "CPU, float32")
    return LoadedModel(folder, card, summary, gradcam, size, on_gpu)


def library_versions() -> dict[str, str]:
    """Versions of the tool and the libraries that decide its numbers."""
    from importlib.metadata import PackageNotFoundError, version

    import tensorflow as tf

    # tensorflow ships as several distributions (tensorflow, tensorflow-cpu, ...): ask the module.
    found = {"triage": __version__, "python": platform.python_version(), "tensorflow": tf.__version__}
    for name in ("keras", "numpy", "opencv-python-headless", "pillow", "pydicom",
                 "weasyprint", "jinja2"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


class HeatmapWriter:
    """Writes overlay and display images in a background thread, atomically, one file each."""

    def __init__(self, folder: Path, relative_to: Path, tag: str) -> None:
        self.folder = folder
        self.relative_to = relative_to
        self.tag = tag  # the model's, so overlays of different models never share a name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triage-write")
        self._pending: list[Future[None]] = []

    def submit(self, sha256: str, pixels: np.ndarray, cam: np.ndarray) -> tuple[str, str]:
        """Queue the overlay and the image; return their paths relative to the report."""
        stem = f"{sha256[:20]}-{self.tag}"
        overlay_path = self.folder / f"{stem}_gradcam.png"
        image_path = self.folder / f"{stem}_image.jpg"
        self._pending = [f for f in self._pending if not f.done()]
        if len(self._pending) > 64:  # bound the queue so memory stays flat
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._write, pixels, cam, overlay_path, image_path))
        return (os.path.relpath(overlay_path, self.relative_to),
                os.path.relpath(image_path, self.relative_to))

    @staticmethod
    def _write(pixels: np.ndarray, cam: np.ndarray, overlay_path: Path, image_path: Path) -> None:
        from triage.cam import overlay

        scale = HEATMAP_MAX_SIDE / max(pixels.shape[:2])
        if scale < 1:
            size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        blended = overlay(pixels, cam)
        for path, image, params in (
            (overlay_path, blended, [cv2.IMWRITE_PNG_COMPRESSION, 3]),
            (image_path, pixels, [cv2.IMWRITE_JPEG_QUALITY, 90]),
        ):
            ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise OSError(f"could not encode {path.name}")
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(encoded.tobytes())
            os.replace(tmp, path)

    def close(self) -> None:
        for future in self._pending:
            future.result()
        self._pool.shutdown(wait=True)


def _failed_case(found: FoundFile, error: BaseException) -> CaseResult:
    if isinstance(error, ImageLoadError):
        status, reason = error.kind, error.reason
    elif isinstance(error, OSError):
        status, reason = "unreadable", error.strerror or str(error)
    else:
        status, reason = "error", f"{type(error).__name__}: {error}"
    return CaseResult(found.relpath, status, sha256=getattr(error, "sha256", None), reason=reason,
                      size=found.size, mtime_ns=found.mtime_ns)


def _unchanged(old: CaseResult, item: FoundFile, report_dir: Path) -> bool:
    """A previous row still holds: same size and mtime, and its images are still there."""
    if (old.size, old.mtime_ns) != (item.size, item.mtime_ns) or old.status == "not_scanned":
        return False
    return all((report_dir / name).is_file() for name in (old.heatmap, old.original) if name)


def _predict_padded(loaded: LoadedModel, images: list[np.ndarray], batch_size: int) -> tuple[Any, np.ndarray]:
    """One forward pass on a full ``batch_size`` batch, the last one padded with zeros.

    The CPU kernels' results depend in the last float bits on the batch's size
    (not on its other images), so a fixed size makes each image's probability
    independent of which images it was batched with: an incremental run that
    scores only a few new files gives them the numbers a full scan would.

    Returns:
        Activations (``batch_size`` rows, padding included) and the ``len(images)`` probabilities.
    """
    batch = np.stack(images)
    if len(images) < batch_size:
        padding = np.zeros((batch_size - len(images), *batch.shape[1:]), dtype=batch.dtype)
        batch = np.concatenate([batch, padding])
    activations, probabilities = loaded.gradcam.predict(batch)
    return activations, probabilities[:len(images)]


def scan_folder(
    input_dir: Path, loaded: LoadedModel, options: ScanOptions, *,
    heatmap_dir: Path | None, report_dir: Path,
    reuse: dict[str, CaseResult] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_found: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """Score every image under ``input_dir`` and explain the flagged ones.

    Args:
        input_dir: Folder to scan (recursively).
        loaded: The model, from :func:`load_model`.
        options: Threshold, explain mode, batch size.
        heatmap_dir: Where overlay PNGs go (None: make no heat maps).
        report_dir: Folder the report lives in; image paths are relative to it.
        reuse: Rows of a previous run to carry over, by path; used only when
            the file's size and mtime are unchanged.
        should_stop: Polled between batches; True stops the scan, the rest are ``not_scanned``.
        on_found: Called once with the number of files found.
        progress: Called with the number of files just handled.

    Returns:
        The run's results, one case per file found, in path order.

    Raises:
        UsageError: ``input_dir`` is not a folder.
    """
    options.validate()
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise UsageError(f"Input folder {input_dir} does not exist or is not a folder.")
    started, clock = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    threshold = loaded.summary.threshold if options.threshold is None else options.threshold
    found = list(discover(input_dir))
    if on_found:
        on_found(len(found))
    reuse = reuse or {}
    cases: dict[str, CaseResult] = {}
    to_read: list[FoundFile] = []
    for item in found:
        old = reuse.get(item.relpath)
        if item.status is not None:
            cases[item.relpath] = CaseResult(item.relpath, item.status, reason=item.reason)
        elif old is not None and _unchanged(old, item, report_dir):
            cases[item.relpath] = replace(old, new=False)
        else:
            to_read.append(item)
    if progress and len(found) > len(to_read):
        progress(len(found) - len(to_read))

    writer = None
    if heatmap_dir and options.explain != "none":
        writer = HeatmapWriter(heatmap_dir, report_dir, loaded.summary.sha256[:8])
        heatmap_dir.mkdir(parents=True, exist_ok=True)

    def load(item: FoundFile) -> tuple[LoadedImage, np.ndarray]:
        image = read_image(item.path)
        return image, resize_for_model(image.pixels, loaded.image_size)

    def ok_stream() -> Iterable[tuple[FoundFile, LoadedImage, np.ndarray]]:
        for item, outcome in prefetch_map(load, to_read, ahead=max(2 * options.batch_size, 8)):
            if isinstance(outcome, BaseException):
                cases[item.relpath] = _failed_case(item, outcome)
                if progress:
                    progress(1)
            else:
                yield item, outcome[0], outcome[1]

    interrupted = False
    try:
        for batch in batched(ok_stream(), options.batch_size):
            if should_stop():
                interrupted = True
                break
            activations, probabilities = _predict_padded(loaded, [b[2] for b in batch], options.batch_size)
            explain = [options.explain == "all" or p >= threshold for p in probabilities]
            cams = loaded.gradcam.heatmaps(activations) if writer and any(explain) else None
            for row, ((item, image, _), probability) in enumerate(zip(batch, probabilities)):
                heatmap = original = None
                if cams is not None and explain[row]:
                    heatmap, original = writer.submit(image.sha256, image.pixels, cams[row])
                cases[item.relpath] = CaseResult(
                    item.relpath, "ok", sha256=image.sha256, probability=float(probability),
                    flagged=bool(probability >= threshold), heatmap=heatmap, original=original,
                    width=image.width, height=image.height, format=image.format,
                    size=item.size, mtime_ns=item.mtime_ns,
                )
            if progress:
                progress(len(batch))
    finally:
        if writer:
            writer.close()
    for item in found:  # whatever the interruption left unscored
        if item.relpath not in cases:
            cases[item.relpath] = CaseResult(item.relpath, "not_scanned",
                                             reason="the run was interrupted before this file")
    return ScanResult(
        input_dir=str(input_dir.resolve()),
        cases=tuple(cases[item.relpath] for item in found),
        model=loaded.summary, threshold=threshold, cam_layer=options.cam_layer,
        explain=options.explain,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        seconds=time.perf_counter() - clock, interrupted=interrupted,
        removed_since_last=len(set(reuse) - {item.relpath for item in found}),
        incremental=bool(reuse),
        versions=library_versions(),
    )
