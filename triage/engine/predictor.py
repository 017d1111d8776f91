"""The one batched predictor: decode (prefetched) -> batch -> run -> one outcome per item.

Training's feature extraction, ``evaluate`` and ``scan`` all score through
:func:`predict`; they differ only in how an item is decoded and what runs on a
batch. It owns the failure classification, the prefetch depth, the padding of
the last batch, stop requests and progress.

Every batch is padded to ``batch_size``: the CPU kernels' results depend in the
last float bits on the batch's size (not on its other images), so a fixed size
gives a file the same numbers whichever batch it falls in, in a scan, an
incremental rescan or an evaluation.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Generic, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from triage.engine.prefetch import prefetch_map
from triage.errors import ImageLoadError
from triage.inputs.decode import decode_file, read_file
from triage.model.preprocess import display_copy, resize_for_model

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """Why an item could not be scored: its CSV status and a human reason."""

    status: str
    reason: str
    sha256: str | None = None


def classify_failure(error: BaseException) -> Failure:
    """The one mapping from an exception raised while decoding to a status and reason."""
    sha256 = getattr(error, "sha256", None)
    if isinstance(error, ImageLoadError):
        return Failure(error.kind, error.reason, sha256)
    if isinstance(error, OSError):
        return Failure("unreadable", error.strerror or str(error), sha256)
    return Failure("error", f"{type(error).__name__}: {error}", sha256)


@dataclass(frozen=True, eq=False)
class Decoded:
    """What decoding one item gave: the model input (None: nothing to run) and anything else."""

    pixels: np.ndarray | None
    extra: Any = None


@dataclass(frozen=True, eq=False)
class Outcome(Generic[T]):
    """One item's result: ``failure`` set, or ``extra`` and ``output`` (None when nothing ran)."""

    item: T
    extra: Any = None
    output: Any = None
    failure: Failure | None = None


@dataclass
class Stop:
    """Polled between batches; ``asked`` becomes True once the stream stopped early."""

    should_stop: Callable[[], bool] = lambda: False
    asked: bool = False


@dataclass(frozen=True, eq=False)
class ScanImage:
    """What scoring keeps of a decoded file: a display copy, never the full-resolution pixels."""

    sha256: str
    display: np.ndarray | None  # (h, w, 3) uint8 RGB, longest side <= DISPLAY_MAX_SIDE; None: not kept
    width: int  # of the decoded image, after EXIF rotation
    height: int
    format: str


class DecodeBudget:
    """Bytes of pixels that decoding threads may hold at once.

    An image whose decoding would take more than the whole budget waits until
    it can decode alone, so a folder of huge scans peaks at about one huge scan.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        size = min(size, self.limit)
        with self._changed:
            self._changed.wait_for(lambda: self._used + size <= self.limit)
            self._used += size
        try:
            yield
        finally:
            with self._changed:
                self._used -= size
                self._changed.notify_all()


DECODE_BUDGET = DecodeBudget(768 << 20)
_MMAP_THRESHOLD = 4 << 20


def _return_freed_buffers() -> None:
    """Have glibc give large freed buffers back to the system at once.

    A decoded 100-megapixel scan is hundreds of 16 MB Pillow blocks. glibc raises
    its mmap threshold after such frees, so later blocks come from per-thread
    arenas that keep them once freed: each decoding thread would then hold a
    whole scan's worth of memory forever. A fixed threshold turns that off.
    Elsewhere than glibc this does nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, _MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return


_return_freed_buffers()
_COPIES_WHILE_DECODING = 12  # bytes per pixel: the decoder's RGBA buffer, a rotated copy, the array


def _decoding_cost(data: bytes) -> int:
    """Bytes a decode of ``data`` may hold, from the image header; the file size where there is none."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # triage refuses bombs itself (formats.MAX_PIXELS)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
        with image:
            width, height = image.size
        return width * height * _COPIES_WHILE_DECODING
    except Exception:  # not a Pillow format (DICOM) or a corrupt header: decoding will say
        return 4 * len(data)


def decode_image(path: Path, image_size: int, display: bool = True) -> Decoded:
    """Read, hash and decode an image for the model; ``extra`` is its :class:`ScanImage`."""
    digest, data = read_file(path)
    return decode_for_model(path, digest, data, image_size, display)


def decode_for_model(path: Path, digest: str, data: bytes, image_size: int, display: bool = True) -> Decoded:
    """Decode bytes within :data:`DECODE_BUDGET`; keep the model input and a display copy only."""
    with DECODE_BUDGET.reserve(_decoding_cost(data)):
        image = decode_file(path, digest, data)
        return for_model(image.pixels, digest, image.format, image_size, display)


def decode_pixels(decode: Callable[[], np.ndarray], cost: int, digest: str, format: str,
                  image_size: int, display: bool = True) -> Decoded:
    """Run ``decode`` (-> RGB uint8) within :data:`DECODE_BUDGET`, holding ``cost`` bytes of it."""
    with DECODE_BUDGET.reserve(cost):
        return for_model(decode(), digest, format, image_size, display)


def for_model(pixels: np.ndarray, digest: str, format: str, image_size: int, display: bool = True) -> Decoded:
    """Decoded RGB pixels as the model input and a :class:`ScanImage`; the full-size pixels are not kept.

    ``display=False`` keeps no display copy: a scan that makes no heat maps needs none,
    and on Ray it would travel to the driver for nothing.
    """
    model_input = resize_for_model(pixels, image_size)
    kept = ScanImage(digest, display_copy(pixels) if display else None, int(pixels.shape[1]),
                     int(pixels.shape[0]), format)
    return Decoded(model_input, kept)


def predict(
    items: Sequence[T], decode: Callable[[T], Decoded],
    run: Callable[[np.ndarray, int], Sequence[Any]], *, batch_size: int,
    stop: Stop | None = None, progress: Callable[[int], None] | None = None,
) -> Iterator[Outcome[T]]:
    """Decode ``items`` ahead in threads, run full batches, yield one outcome per item handled.

    Args:
        items: What to score (paths, found files, ...).
        decode: Item -> :class:`Decoded`; an exception is the item's failure.
        run: ``(batch, n)`` -> the outputs of the first ``n`` rows of a
            ``(batch_size, ...)`` batch whose last rows may be padding.
        batch_size: Rows of every forward pass.
        stop: Polled before each batch; items not yet yielded when it says
            stop are never yielded (the caller accounts for them).
        progress: Called with the number of items just handled.

    Yields:
        Failures as soon as decoding fails, the rest batch by batch, in input order within each kind.
    """
    stop = stop or Stop()
    report = progress or (lambda n: None)
    pending: list[tuple[T, Decoded]] = []
    for entry in _split_failures(_decoded(items, decode, batch_size), report):
        if isinstance(entry, Outcome):
            yield entry
            continue
        pending.append(entry)
        if len(pending) == batch_size:
            if not (yield from _run_unless_stopped(pending, run, batch_size, stop, report)):
                return
            pending = []
    if pending:
        yield from _run_unless_stopped(pending, run, batch_size, stop, report)


def _run_unless_stopped(entries: list[tuple[T, Decoded]], run: Callable[[np.ndarray, int], Sequence[Any]],
                        batch_size: int, stop: Stop, report: Callable[[int], None],
                        ) -> Generator[Outcome[T], None, bool]:
    """Run one batch, unless a stop was asked for; False when it was."""
    if stop.should_stop():
        stop.asked = True
        return False
    yield from _run_batch(entries, run, batch_size, report)
    return True


def _decoded(items: Sequence[T], decode: Callable[[T], Decoded], batch_size: int) -> Iterator[Any]:
    return prefetch_map(decode, items, ahead=max(2 * batch_size, 8))


def _split_failures(ready: Iterable[tuple[T, Any]], report: Callable[[int], None]) -> Iterator[Any]:
    """Failures and items with nothing to run become outcomes at once; the rest go on to a batch."""
    for item, decoded in ready:
        if isinstance(decoded, BaseException):
            report(1)
            yield Outcome(item, failure=classify_failure(decoded))
        elif decoded.pixels is None:
            report(1)
            yield Outcome(item, extra=decoded.extra)
        else:
            yield item, decoded


def _run_batch(entries: list[tuple[T, Decoded]], run: Callable[[np.ndarray, int], Sequence[Any]],
               batch_size: int, report: Callable[[int], None]) -> Iterator[Outcome[T]]:
    inputs = np.stack([decoded.pixels for _, decoded in entries])
    if len(entries) < batch_size:
        padding = np.zeros((batch_size - len(entries), *inputs.shape[1:]), dtype=inputs.dtype)
        inputs = np.concatenate([inputs, padding])
    outputs = run(inputs, len(entries))
    for (item, decoded), output in zip(entries, outputs):
        yield Outcome(item, extra=decoded.extra, output=output)
    report(len(entries))
