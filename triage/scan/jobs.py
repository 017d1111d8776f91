"""What the predictor scores in a scan: one job per slice, and the decoder that reads it.

A job is a slice and what decoding it needs of its case (its kind and window), not
the case: on Ray a job travels alone, and a 300-slice series' jobs would otherwise
carry the series 300 times. :class:`SliceDecoder` reads each file once and is
picklable, so the Ray engine's decode tasks run the very same code.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage.engine.predictor import Decoded, decode_image, decode_pixels
from triage.hashing import sha256_file
from triage.inputs.cases import Case, CaseWindows, Slice, slice_pixels
from triage.inputs.decode import read_whole

FORMATS = {"series": "DICOM", "volume": "NIfTI"}


@dataclass(frozen=True)
class Job:
    """One slice to score, and what decoding it needs of its case, not the case itself: on Ray a job
    travels alone, and a 300-slice series' jobs would otherwise carry it 300 times.

    Attributes:
        kind: Its case's kind (``image``, ``series`` or ``volume``).
        window: Its case's window; None where the decoder measures it (the local engine, once per
            case) or where there is none (a loose image).
        shared: How many slices share its file (a volume's, a multi-frame file's): its decoding cost.
    """

    slice: Slice
    kind: str
    window: tuple[float, float] | None = None
    shared: int = 1


def jobs_of(case: Case, window: tuple[float, float] | None = None) -> list[Job]:
    """The jobs of a case's slices, with ``window`` (the case's own where it has one)."""
    window = case.window if case.window is not None else window
    return [Job(slice_, case.kind, window,
                len(case.slices) if case.kind == "volume" or slice_.frame is not None else 1)
            for slice_ in case.slices]


class FileDigests:
    """The sha256 of files read slice by slice: each hashed once, however many of its slices decode."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._digests: OrderedDict[Path, Future[str]] = OrderedDict()

    def __getstate__(self) -> dict[str, int]:
        return {"keep": self.keep}  # a copy sent to another process starts empty

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["keep"])  # type: ignore[misc]

    def get(self, path: Path) -> str:
        with self._lock:
            future = self._digests.get(path)
            mine = future is None
            if future is None:
                future = self._digests[path] = Future()
                while len(self._digests) > self.keep:
                    self._digests.popitem(last=False)
        if mine:
            try:
                future.set_result(sha256_file(path))
            except Exception as err:
                future.set_exception(err)
        return future.result()


class SliceDecoder:
    """Decodes a job for the model: a loose image as ever (file hash, display copy), a slice with
    its case's window. Every file is read once: a single-frame DICOM file's bytes are hashed and
    decoded together; a volume or multi-frame file is hashed once for all its slices, each of
    which reads its own part. Picklable, so the Ray engine's decode tasks run the very same code.

    Args:
        image_size: The model's input size.
        display: Keep display copies (for heat maps).
        cases: The cases by id, to measure the window of a job that has none (local engine only).
    """

    def __init__(self, image_size: int, display: bool = True, cases: dict[str, Case] | None = None) -> None:
        self.image_size = image_size
        self.display = display
        self.cases = cases if cases is not None else {}
        self.digests = FileDigests()
        self.windows = CaseWindows()  # the local engine's windows, measured once per case

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "cases": {}}  # a Ray job brings its window with it

    def __call__(self, job: Job) -> Decoded:
        return self._decode(job, self.display)

    def without_display(self) -> "SliceDecoder":
        """The same decoder keeping no display copies (what the Ray engine's decode tasks run)."""
        decoder = copy.copy(self)
        decoder.display = False
        return decoder

    def display_copy(self, job: Job) -> np.ndarray:
        """A job's display copy, decoded again: for the few slices that get a card on the Ray engine,
        whose decode tasks send none (see :func:`triage.scan.scorer.score_cases`)."""
        return self._decode(job, True).extra.display

    def _decode(self, job: Job, display: bool) -> Decoded:
        if job.kind == "image":
            return decode_image(job.slice.path, self.image_size, display)
        data = None
        if job.kind == "series" and job.slice.frame is None:
            digest, data = read_whole(job.slice.path)
        else:
            digest = self.digests.get(job.slice.path)
        return decode_pixels(lambda: slice_pixels(job.slice, job.kind, lambda: self._window(job), data),
                             _slice_cost(job), digest, FORMATS[job.kind], self.image_size, display)

    def _window(self, job: Job) -> tuple[float, float]:
        return job.window if job.window is not None else self.windows.get(self.cases[job.slice.case_id])


def _slice_cost(job: Job) -> int:
    """Bytes decoding a slice may hold, from its header (a volume's slice: the whole volume's);
    four times its share of its file when the header said nothing."""
    return job.slice.cost or 4 * os.stat(job.slice.path).st_size // job.shared


