"""Cases, the unit of the verdict: a DICOM series (one stack of it), a NIfTI volume, or a loose image.

:func:`build_cases` turns :func:`~triage.inputs.discovery.discover`'s rows into cases
from headers alone; :func:`decode_slice` gives the model one slice as RGB with
one window for its whole case (:func:`case_window`), so the slices of a series
keep their relative brightness; :func:`case_score` and :func:`study_score`
turn the slices' probabilities into a verdict.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pydicom

from triage import settings
from triage.errors import ImageLoadError, Stopped, UsageError, short_reason
from triage.inputs import dicom_series
from triage.inputs import nifti as volumes
from triage.inputs.decode import read_image
from triage.inputs.discovery import FoundFile
from triage.inputs.pixels import gray_to_rgb, require_signal, scale
from triage.inputs.study import StudyFacts

# The window of a case without a stored one: these percentiles of all its values.
WINDOW_PERCENTILES = (0.5, 99.5)
_SAMPLES_PER_SLICE = 1 << 16  # values per slice that the percentiles are taken over, at most


@dataclass(frozen=True)
class Slice:
    """One image the model scores.

    Attributes:
        path: The file to read.
        relpath: The file's path relative to the input folder, as discover() gives it.
        frame: The frame of a multi-frame DICOM file; None for a single-frame file.
        slice_index: Position in its case's order, 0..n-1; None for a loose image.
        case_id: The case it belongs to.
        cost: Bytes decoding it may hold (a volume's slice: the whole volume); 0 when unknown.
    """

    path: Path
    relpath: str
    frame: int | None
    slice_index: int | None
    case_id: str
    cost: int = 0

    @property
    def key(self) -> tuple[str, int | None, int | None]:
        """What tells it apart from every other slice: its file, its frame there, its place in its case."""
        return self.relpath, self.frame, self.slice_index


@dataclass(frozen=True)
class Case:
    """A series, a volume or a loose image, with its slices in order.

    Attributes:
        kind: ``image`` (a loose 2D image), ``series`` (DICOM) or ``volume`` (NIfTI).
        sort_method: How the slices were ordered: ``position`` (along the stack's
            normal), ``instance_number``, ``file_name``; ``""`` for an image and
            for a case of one file or frame (``group_by="file"``).
        localizer: A localizer (scout): scored, but left out of its study's verdict.
        status: None when the case is to be scored, else the status of every one
            of its slices (``skipped``, ``unsupported``, ``too_large``, ...).
        reason: Why, when ``status`` is set.
        window: The stored (lo, hi) window of the series, or None: then
            :func:`case_window` measures one from the pixels.
        study: The study's date, description, accession number and patient ID (DICOM only).
    """

    case_id: str
    kind: str
    slices: tuple[Slice, ...]
    study_uid: str = ""
    series_uid: str = ""
    description: str = ""
    modality: str = ""
    sort_method: str = ""
    localizer: bool = False
    status: str | None = None
    reason: str = ""
    window: tuple[float, float] | None = None
    study: StudyFacts = StudyFacts()


def build_cases(found: Sequence[FoundFile], *, group_by: str = "auto",
                modalities: Sequence[str] = settings.MODALITIES,
                should_stop: Callable[[], bool] | None = None) -> tuple[list[Case], list[FoundFile]]:
    """Cases from DICOM and NIfTI files (told by their content, whatever their names), and the rest.

    Only headers are read. Every DICOM or NIfTI file lies in a case's slices:
    a DICOMDIR (``skipped``), another modality (``skipped``), a file too large
    (``too_large``), a refused volume, and a file that met an unexpected error
    (``error``) get a case with that status; the other files go on.

    Args:
        found: discover()'s rows.
        group_by: ``auto``: a DICOM stack or a NIfTI volume is one case;
            ``file``: every DICOM file and frame is a case of its own.
        modalities: DICOM modalities that are scored; :data:`~triage.settings.NO_MODALITY`
            stands for images whose header names none.
        should_stop: Polled for each file; True stops with :class:`~triage.errors.Stopped`.

    Returns:
        The cases, sorted by their first file's relpath; and the other rows (loose
        images, and rows with a status from discover()), for :func:`image_case`.
    """
    if group_by not in settings.GROUP_BY:
        raise UsageError(f"Group by must be one of {', '.join(settings.GROUP_BY)}, got {group_by!r}.",
                         option="group_by")
    wanted = {modality.upper() for modality in modalities}
    cases: list[Case] = []
    loose: list[FoundFile] = []
    images: list[dicom_series.DicomImage] = []
    for item in found:
        if should_stop is not None and should_stop():
            raise Stopped("the scan was stopped while it sorted the files; no output was changed")
        if item.status is not None:
            loose.append(item)
            continue
        try:
            _sort_file(item, cases, images, loose)
        except ImageLoadError as err:
            cases.append(_file_case(item, err.kind, err.reason))
        except Exception as err:  # a bug met on one file: its row says so, and the run goes on
            cases.append(_file_case(item, "error", f"{type(err).__name__}: {short_reason(err)}"))
    grouped = dicom_series.single_stacks if group_by == "file" else dicom_series.group_stacks
    cases.extend(_series_case(stack, wanted) for stack in grouped(images))
    cases.sort(key=lambda case: (min(s.relpath for s in case.slices), case.case_id))
    return cases, loose


def _sort_file(item: FoundFile, cases: list[Case], images: list[dicom_series.DicomImage],
               loose: list[FoundFile]) -> None:
    """One file into its place: a volume's case, a DICOM file's images, a refused case, or loose."""
    if volumes.is_nifti(item.path):
        cases.append(volume_case(item))
        return
    header = dicom_series.read_header(item.path)
    if header is None or not (dicom_series.is_dicomdir(header.ds) or dicom_series.is_image(header.ds)):
        loose.append(item)
    elif dicom_series.is_dicomdir(header.ds):
        cases.append(_file_case(item, "skipped", "DICOMDIR index"))
    else:
        try:
            images.extend(dicom_series.images_of(item, header))
        except ImageLoadError as err:
            cases.append(_file_case(item, err.kind, err.reason, header.ds))


def unique_case_ids(cases: Sequence[Case]) -> list[Case]:
    """The cases, each with an id of its own: a later case whose id an earlier one holds gets ``~2``, ...

    Ids come from headers and file names, which a folder may make clash (a
    SeriesInstanceUID spelled like a file's path); two cases never share a verdict.
    """
    taken: set[str] = set()
    unique = []
    for case in cases:
        case_id, number = case.case_id, 1
        while case_id in taken:
            number += 1
            case_id = f"{case.case_id}~{number}"
        taken.add(case_id)
        unique.append(case if case_id == case.case_id else replace(
            case, case_id=case_id, slices=tuple(replace(s, case_id=case_id) for s in case.slices)))
    return unique


def image_case(found: FoundFile) -> Case:
    """A loose 2D image as a case of one slice; it keeps discover()'s status."""
    slice_ = Slice(found.path, found.relpath, None, None, found.relpath)
    return Case(found.relpath, "image", (slice_,), status=found.status, reason=found.reason)


def volume_case(found: FoundFile) -> Case:
    """A NIfTI volume: its axial slices, inferior to superior; or refused, with the header's reason."""
    try:
        header = volumes.read_header(found.path)
    except ImageLoadError as err:
        slice_ = Slice(found.path, found.relpath, None, None, found.relpath)
        return Case(found.relpath, "volume", (slice_,), status=err.kind, reason=err.reason)
    slices = tuple(Slice(found.path, found.relpath, None, index, found.relpath, header.decoded_bytes)
                   for index in range(header.slices))
    return Case(found.relpath, "volume", slices, sort_method="position")


def _file_case(item: FoundFile, status: str, reason: str,
               header: pydicom.Dataset | None = None) -> Case:
    """A file that is not scored, as a case of its own."""
    get = header.get if header is not None else (lambda keyword: None)
    return Case(item.relpath, "series", (Slice(item.path, item.relpath, None, 0, item.relpath),),
                study_uid=str(get("StudyInstanceUID") or ""), series_uid=str(get("SeriesInstanceUID") or ""),
                description=str(get("SeriesDescription") or ""), modality=str(get("Modality") or ""),
                status=status, reason=reason,
                study=dicom_series.study_facts(header) if header is not None else StudyFacts())


def _series_case(stack: dicom_series.Stack, wanted: set[str]) -> Case:
    first = stack.images[0]
    slices = tuple(Slice(image.found.path, image.found.relpath, image.frame, index, stack.stack_id,
                         image.cost) for index, image in enumerate(stack.images))
    scored = (first.modality or settings.NO_MODALITY) in wanted
    if scored:
        reason = ""
    elif first.modality:
        reason = f"modality {first.modality}"
    else:
        reason = f"no Modality in the header (modality {settings.NO_MODALITY} scores it)"
    return Case(stack.stack_id, "series", slices, first.study_uid, first.series_uid, first.description,
                first.modality, stack.sort_method, stack.localizer,
                status=None if scored else "skipped", reason=reason, window=first.window, study=first.study)


def decode_slice(slice_: Slice, case: Case, windows: CaseWindows | None = None) -> np.ndarray:
    """One slice as ``(H, W, 3)`` ``uint8`` RGB for the model, with its case's window.

    MONOCHROME1 is inverted (low values white). Colour needs no window: it is
    shown over its full range, the same for every slice. A loose image decodes
    as :func:`~triage.inputs.decode.read_image` does.

    Args:
        slice_, case: The slice, and the case it belongs to.
        windows: Where its case's window is measured once and kept (a run's decoder has one); without
            it the window is measured for this call.

    Raises:
        ImageLoadError: the case's status when it is not scored, why the slice cannot be decoded, or
            (``skipped``) a gray slice that shows nothing: no value is a number, or all are one.
    """
    if case.status is not None:
        raise ImageLoadError(case.status, case.reason)
    if case.kind == "image":
        return read_image(slice_.path).pixels
    return slice_pixels(slice_, case.kind, lambda: (windows or CaseWindows()).get(case))


def slice_pixels(slice_: Slice, kind: str, window: Callable[[], tuple[float, float]],
                 data: bytes | None = None) -> np.ndarray:
    """A slice of a series or volume as RGB, in the window ``window()`` gives (asked only for gray).

    ``data``: the bytes of a single-frame DICOM file already read, so it is read once.
    """
    values, photometric = _slice_values(slice_, kind, data)
    if values.ndim == 3:  # colour, palette colour through its LUT: shown over its type's full range
        return np.ascontiguousarray(scale(values, 0, np.iinfo(values.dtype).max))
    require_signal(values)  # windowed, a slice with no signal would pass for a black one
    gray = scale(values, *window())
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return gray_to_rgb(gray)


def _slice_values(slice_: Slice, kind: str, data: bytes | None = None) -> tuple[np.ndarray, str]:
    """A slice's values before the window, and its photometric interpretation."""
    if kind == "volume":
        return volumes.axial_slice(slice_.path, int(slice_.slice_index or 0)), "MONOCHROME2"
    return dicom_series.frame_values(slice_.path, slice_.frame, data)


class CaseWindows:
    """Each case's window, measured once and kept by its id, so every slice of a case shows with it.

    A lookup costs the same however many slices the case has. A copy sent to
    another process (the Ray engine's decode tasks) starts empty.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # slices of one case decode in parallel; one of them measures
        self._measured: dict[str, tuple[float, float]] = {}

    def __getstate__(self) -> dict[str, object]:
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]

    def get(self, case: Case) -> tuple[float, float]:
        if case.window is not None:
            return case.window
        with self._lock:
            if case.case_id not in self._measured:
                self._measured[case.case_id] = case_window(case)
            return self._measured[case.case_id]


def case_window(case: Case) -> tuple[float, float]:
    """The (lo, hi) window of a whole series or volume.

    The stored window when the series has one, else the
    :data:`WINDOW_PERCENTILES` of the values of all its slices (every slice
    read once).
    """
    if case.window is not None:
        return case.window
    samples = np.concatenate([_slice_sample(slice_, case) for slice_ in case.slices])
    if samples.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(samples, WINDOW_PERCENTILES)
    if hi <= lo:  # mostly one value, e.g. background: fall back to the full range
        lo, hi = samples.min(), samples.max()
    return float(lo), float(hi)


def _slice_sample(slice_: Slice, case: Case) -> np.ndarray:
    """Up to :data:`_SAMPLES_PER_SLICE` finite values of a slice, evenly spread."""
    try:
        values = _slice_values(slice_, case.kind)[0]
    except (ImageLoadError, OSError):  # the slice reports its failure when it is decoded itself
        return np.empty(0)
    flat = values.ravel()[::max(1, values.size // _SAMPLES_PER_SLICE)].astype(np.float64)
    return flat[np.isfinite(flat)]


def case_score(probabilities: Sequence[float], aggregate: str = "max", top_k: int = 3) -> float:
    """A case's score from its slices' probabilities.

    ``max``: the highest; ``topk``: the mean of the ``top_k`` highest (of all
    of them when the case has fewer).
    """
    if not probabilities:
        raise ValueError("a case score needs at least one probability")
    if aggregate == "max":
        return float(max(probabilities))
    if aggregate != "topk":
        raise UsageError(f"The aggregate must be one of {', '.join(settings.AGGREGATES)}, got {aggregate!r}.",
                         option="aggregate")
    if top_k < 1:
        raise UsageError(f"Top k must be at least 1, got {top_k}.", option="top_k")
    highest = sorted(probabilities, reverse=True)[:top_k]
    return math.fsum(highest) / len(highest)


def study_score(cases_with_scores: Iterable[tuple[Case, float | None]]) -> float | None:
    """A study's score: the highest score of its non-localizer cases; None when none was scored."""
    scores = [score for case, score in cases_with_scores if not case.localizer and score is not None]
    return max(scores) if scores else None
