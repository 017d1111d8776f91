"""DICOM headers grouped into ordered stacks, and the display values of one frame.

Grouping reads headers only (``stop_before_pixels``): a folder of series is
sorted into stacks without decoding a pixel. An image is a file, or one frame
of a multi-frame file; an enhanced multi-frame file keeps its per-frame
position, orientation, rescale and window in functional groups, which a
:class:`FrameView` reads before the file's own attributes, so that one code
path reads both kinds.
"""

from __future__ import annotations

import functools
import io
import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from triage.errors import ImageLoadError, short_reason
from triage.inputs.dicom import DICOM_DEFER_BYTES, check_pixel_data, check_size, deflated_header
from triage.inputs.discovery import FoundFile
from triage.inputs.formats import DICOM_FIRST_GROUPS, HEAD_BYTES
from triage.inputs.study import StudyFacts

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
# Functional groups of an enhanced multi-frame file that describe one frame.
_FRAME_GROUPS = (
    "PlanePositionSequence", "PlaneOrientationSequence", "PixelValueTransformationSequence",
    "FrameVOILUTSequence", "FrameContentSequence", "MREchoSequence", "MRImageFrameTypeSequence",
)
# Besides the orientation, what tells stacks of one series apart.
_STACK_KEYWORDS = (
    "EchoNumbers", "EffectiveEchoTime", "TemporalPositionIdentifier", "TemporalPositionIndex", "StackID",
)
LOCALIZER_MAX_SLICES = 3
# Two stacks whose normals meet at more than 60 degrees count as orthogonal.
_ORTHOGONAL_COS = 0.5
# Orientations whose direction cosines differ by no more than this are one orientation (noise in
# the last decimals); stacks of one series in other planes differ by far more.
ORIENTATION_TOLERANCE = 1e-3
# Bytes decoding one sample may hold: its stored value, and float64 values before the window.
_BYTES_PER_SAMPLE = 16
# Compressed bytes read to check a deflated data set's header before pydicom inflates it whole.
_DEFLATED_HEAD_BYTES = 1 << 20
# Value representations whose length field takes 4 bytes after 2 reserved ones (explicit VR).
_LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")


@dataclass(frozen=True)
class DicomImage:
    """One image (a file, or a frame of one) as its header describes it."""

    found: FoundFile
    frame: int | None  # None: a single-frame file
    study_uid: str
    series_uid: str
    modality: str
    description: str
    typed_localizer: bool  # ImageType or FrameType says LOCALIZER
    stack_key: tuple[str, ...]  # besides the orientation, what tells stacks of one series apart
    orientation: tuple[float, ...] | None
    normal: tuple[float, float, float] | None
    position: tuple[float, float, float] | None
    instance: int | None
    window: tuple[float, float] | None  # the stored window (lo, hi) of a grayscale image
    study: StudyFacts = StudyFacts()
    cost: int = 0  # bytes decoding it may hold


@dataclass(frozen=True)
class Stack:
    """Images of one series that form one stack, in order."""

    stack_id: str
    images: tuple[DicomImage, ...]
    sort_method: str
    localizer: bool


@dataclass(frozen=True)
class Header:
    """A file's data set without its pixel data, and where its pixel data lie.

    Attributes:
        ds: The data set, up to the pixel data.
        pixel_length: The length the pixel data element declares; None when undefined (compressed
            frames) or unknown (a deflated data set).
        available: Bytes the file holds from the start of the pixel data value; None when unknown.
    """

    ds: pydicom.Dataset
    pixel_length: int | None
    available: int | None

    @property
    def deflated(self) -> bool:
        return self.available is None


def read_header(path: Path) -> Header | None:
    """The file's header; None when the file is no DICOM (or so corrupt that it reads as none).

    A deflated data set is first checked from the start of its inflated data,
    since pydicom inflates it whole.

    Raises:
        ImageLoadError: a deflated data set whose frames are too large.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
            if head[128:132] != b"DICM" and head[:2] not in DICOM_FIRST_GROUPS:
                return None
            deflated = None
            if DeflatedExplicitVRLittleEndian.encode() in head:  # the file meta names the syntax
                deflated = deflated_header(head + handle.read(_DEFLATED_HEAD_BYTES))
            if deflated is not None and is_image(deflated):
                check_size(deflated)
            handle.seek(0)
            ds = pydicom.dcmread(handle, force=True, stop_before_pixels=True, defer_size=DICOM_DEFER_BYTES)
            if deflated is not None:
                return Header(ds, None, None)
            start = handle.tell()  # pydicom stopped at the pixel data element's tag, or at the end
            value = _pixel_value(handle.read(12), ds)
            size = os.fstat(handle.fileno()).st_size
    except ImageLoadError:
        raise
    except Exception:  # unreadable or not DICOM: the single-image path reports it
        return None
    if value is None:  # no pixel data element at all
        return Header(ds, 0, 0)
    length, header_size = value
    return Header(ds, length, max(size - start - header_size, 0))


def _pixel_value(raw: bytes, ds: pydicom.Dataset) -> tuple[int | None, int] | None:
    """(declared length, None when undefined; the element header's size) of the pixel data element
    whose header is ``raw``, read as pydicom reads it; None when the data set ends before one."""
    if len(raw) < 8:
        return None
    implicit, little = ds.original_encoding
    if implicit:
        field, size = raw[4:8], 8
    elif raw[4:6] in _LONG_VRS:
        field, size = raw[8:12], 12
    else:
        field, size = raw[6:8], 8
    length = int.from_bytes(field, "big" if little is False else "little")
    return (None if length == 0xFFFFFFFF else length), size


def is_dicomdir(ds: pydicom.Dataset) -> bool:
    meta = getattr(ds, "file_meta", None) or {}
    return meta.get("MediaStorageSOPClassUID") == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds


def is_image(ds: pydicom.Dataset) -> bool:
    return "Rows" in ds and "Columns" in ds


def modality(ds: pydicom.Dataset | FrameView) -> str:
    return str(ds.get("Modality") or "").upper()


def frame_count(ds: pydicom.Dataset) -> int:
    return max(_int(ds.get("NumberOfFrames")) or 1, 1)


def images_of(found: FoundFile, header: Header) -> list[DicomImage]:
    """One image per frame of a multi-frame file, else one for the file.

    Raises:
        ImageLoadError: frames too large, or pixel data that do not hold what the header declares.
    """
    ds = header.ds
    frames = check_size(ds)
    if not header.deflated:
        check_pixel_data(ds, header.pixel_length, header.available or 0)
    cost = _frame_cost(ds) + (_whole_cost(ds) if header.deflated else 0)  # deflated: inflated whole
    if frames == 1:
        return [_image(found, None, FrameView(ds, None), cost)]
    return [_image(found, frame, FrameView(ds, frame), cost) for frame in range(frames)]


def _frame_cost(ds: pydicom.Dataset) -> int:
    return int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) * int(ds.get("SamplesPerPixel") or 1) \
        * _BYTES_PER_SAMPLE


def _whole_cost(ds: pydicom.Dataset) -> int:
    return _frame_cost(ds) * frame_count(ds)


class FrameView:
    """One frame's attributes: its functional groups (per-frame, else shared) before the data set's own."""

    def __init__(self, ds: pydicom.Dataset, frame: int | None) -> None:
        self.ds = ds
        self.groups = [item for keyword in _FRAME_GROUPS
                       if (item := functional_group(ds, frame, keyword)) is not None]

    def get(self, keyword: str) -> Any:
        for item in self.groups:
            if keyword in item:
                return item.get(keyword)
        return self.ds.get(keyword)


def functional_group(ds: pydicom.Dataset, frame: int | None, keyword: str) -> pydicom.Dataset | None:
    """The item of one functional group for a frame (per-frame, else shared); None when there is none."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    index = frame or 0
    for groups in (per_frame[index:index + 1], shared[:1]):
        if groups and groups[0].get(keyword):
            return groups[0].get(keyword)[0]
    return None


def _image(found: FoundFile, frame: int | None, view: FrameView, cost: int) -> DicomImage:
    orientation = _floats(view.get("ImageOrientationPatient"), 6)
    return DicomImage(
        found=found, frame=frame,
        study_uid=str(view.get("StudyInstanceUID") or ""),
        series_uid=str(view.get("SeriesInstanceUID") or ""),
        modality=modality(view),
        description=str(view.get("SeriesDescription") or ""),
        typed_localizer="LOCALIZER" in _values(view, "ImageType") + _values(view, "FrameType"),
        stack_key=tuple(str(view.get(keyword) or "") for keyword in _STACK_KEYWORDS),
        orientation=orientation,
        normal=_normal(orientation),
        position=_floats(view.get("ImagePositionPatient"), 3),
        instance=_int(view.get("InstanceNumber")),
        window=stored_window(view),
        study=study_facts(view.ds),
        cost=cost,
    )


def study_facts(ds: pydicom.Dataset) -> StudyFacts:
    """The study's date, description, accession number and patient ID from a header."""
    return StudyFacts(*(str(ds.get(keyword) or "").strip() for keyword in
                        ("StudyDate", "StudyDescription", "AccessionNumber", "PatientID")))


def stored_window(view: pydicom.Dataset | FrameView) -> tuple[float, float] | None:
    """The first stored window (WindowCenter/Width) as (lo, hi), for grayscale images only."""
    if not str(view.get("PhotometricInterpretation") or "MONOCHROME2").upper().startswith("MONOCHROME"):
        return None
    center, width = _first_float(view.get("WindowCenter")), _first_float(view.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return center - width / 2, center + width / 2


def group_stacks(images: Sequence[DicomImage]) -> list[Stack]:
    """Images grouped by study and series, split into stacks, each ordered, localizers marked.

    A series without a SeriesInstanceUID cannot be told from others, so each of
    its files is a series of its own. A SeriesInstanceUID found in several
    studies (anonymisers and phantoms reuse them) is a series of each, its id
    qualified by the study's.
    """
    series: dict[tuple[str, str], list[DicomImage]] = defaultdict(list)
    for image in images:
        series[(image.study_uid, image.series_uid or image.found.relpath)].append(image)
    studies_of = defaultdict(set)
    for study, series_id in series:
        studies_of[series_id].add(study)
    stacks: list[tuple[str, list[DicomImage]]] = []
    for (study, series_id), members in series.items():
        name = series_id if len(studies_of[series_id]) == 1 else f"{study}/{series_id}"
        parts = split_stacks(members)
        stacks.extend((name if len(parts) == 1 else f"{name}/{number}", part)
                      for number, part in enumerate(parts, start=1))
    flags = localizer_flags([members for _, members in stacks])
    return [Stack(stack_id, *order_stack(members), flag) for (stack_id, members), flag in zip(stacks, flags)]


def split_stacks(images: Sequence[DicomImage]) -> list[list[DicomImage]]:
    """The stacks of one series: by echo, time and stack keys, then by orientation within a tolerance.

    Orientations are compared, not rounded: two values either side of a
    rounding boundary would otherwise split one stack into two interleaved ones.
    """
    by_key: dict[tuple[str, ...], list[DicomImage]] = defaultdict(list)
    for image in sorted(images, key=lambda image: (image.found.relpath, image.frame or 0)):
        by_key[image.stack_key].append(image)
    stacks: list[list[DicomImage]] = []
    for key in sorted(by_key):
        planes: list[tuple[tuple[float, ...] | None, list[DicomImage]]] = []
        for image in by_key[key]:
            plane = next((members for orientation, members in planes
                          if _same_orientation(orientation, image.orientation)), None)
            if plane is None:
                planes.append((image.orientation, plane := []))
            plane.append(image)
        stacks.extend(members for _, members in planes)
    return stacks


def _same_orientation(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return max(abs(x - y) for x, y in zip(a, b)) <= ORIENTATION_TOLERANCE


def single_stacks(images: Sequence[DicomImage]) -> list[Stack]:
    """Every image its own stack (one case per file or frame)."""
    return [Stack(image.found.relpath if image.frame is None else f"{image.found.relpath}#{image.frame}",
                  (image,), "", image.typed_localizer) for image in images]


def order_stack(images: Sequence[DicomImage]) -> tuple[tuple[DicomImage, ...], str]:
    """The stack in order along its normal; else by InstanceNumber; else by file name and frame.

    Positions (or instance numbers) are used only when every image has one and
    no two are equal, so the order never depends on the order files were found.
    """
    by_name = sorted(images, key=lambda image: (image.found.relpath, image.frame or 0))
    normal = by_name[0].normal
    if normal is not None and all(image.position is not None for image in by_name):
        depths = [float(np.dot(image.position, normal)) for image in by_name]
        if _distinct(np.round(depths, 4)):
            ordered = sorted(zip(depths, by_name), key=lambda pair: pair[0])
            return tuple(image for _, image in ordered), "position"
    instances = [image.instance for image in by_name]
    if None not in instances and _distinct(instances):
        return tuple(sorted(by_name, key=lambda image: image.instance)), "instance_number"
    return tuple(by_name), "file_name"


def localizer_flags(stacks: Sequence[Sequence[DicomImage]]) -> list[bool]:
    """Which stacks are localizers: typed LOCALIZER, or tiny and orthogonal to their study's main stack."""
    main: dict[str, Sequence[DicomImage]] = {}
    for stack in stacks:
        study = stack[0].study_uid
        if not _typed_localizer(stack) and len(stack) > len(main.get(study, ())):
            main[study] = stack
    return [_typed_localizer(stack) or _tiny_and_orthogonal(stack, main.get(stack[0].study_uid))
            for stack in stacks]


def _typed_localizer(stack: Sequence[DicomImage]) -> bool:
    return any(image.typed_localizer for image in stack)


def _tiny_and_orthogonal(stack: Sequence[DicomImage], main: Sequence[DicomImage] | None) -> bool:
    if main is None or len(stack) > LOCALIZER_MAX_SLICES or len(main) <= LOCALIZER_MAX_SLICES:
        return False
    a, b = stack[0].normal, main[0].normal
    return a is not None and b is not None and abs(float(np.dot(a, b))) < _ORTHOGONAL_COS


def frame_values(path: Path, frame: int | None, data: bytes | None = None) -> tuple[np.ndarray, str]:
    """A frame's values for display and its photometric interpretation.

    ``data``: the bytes of a single-frame file already read (and hashed), so it is not read again.

    Grayscale: after the modality LUT (rescale or LUT), and after a VOI LUT
    sequence when the image has one but no window. Colour: RGB (palette
    colour through its LUT). The window is applied by the caller, one per series.

    Raises:
        ImageLoadError: too large, or pixel data or LUTs that cannot be decoded.
    """
    source = io.BytesIO(data) if data is not None else path
    ds = _frame_header(path) if frame is not None else _dataset(source)
    check_size(ds)  # the file may have changed since its header was read
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        # A frame is read from the file alone; a single-frame file from its data set.
        pixels = pixel_array(path, index=frame) if frame is not None else pixel_array(ds)
    except Exception as err:  # no decoder for a compressed syntax, or bad pixel data
        raise ImageLoadError("unreadable", f"cannot decode DICOM pixel data: {short_reason(err)}") from err
    try:
        return _display_values(pixels, ds, frame, photometric), photometric
    except Exception as err:  # e.g. a bad LUT
        raise ImageLoadError("unreadable", f"bad DICOM display values ({short_reason(err)})") from err


def _display_values(pixels: np.ndarray, ds: pydicom.Dataset, frame: int | None,
                    photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        return apply_color_lut(pixels, ds)
    if pixels.ndim == 3:  # colour; pydicom has already converted YBR to RGB
        return pixels
    rescale = functional_group(ds, frame, "PixelValueTransformationSequence") or ds
    values = apply_modality_lut(pixels, rescale)
    if "VOILUTSequence" in ds and stored_window(FrameView(ds, frame)) is None:
        values = apply_voi(values, ds)
    return values


def _dataset(path: Path | io.BytesIO) -> pydicom.Dataset:
    """The whole data set, its pixel data read only when decoded (after the size check)."""
    try:
        return pydicom.dcmread(path, force=True, defer_size=DICOM_DEFER_BYTES)
    except Exception as err:
        raise ImageLoadError("unreadable", f"corrupt DICOM file ({short_reason(err)})") from err


_HEADER_LOCK = threading.Lock()


def _frame_header(path: Path) -> pydicom.Dataset:
    """A multi-frame file's header, read once for all its frames (threads share it, read-only)."""
    with _HEADER_LOCK:
        return _cached_header(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _cached_header(path: Path, _mtime_ns: int) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception as err:
        raise ImageLoadError("unreadable", f"corrupt DICOM file ({short_reason(err)})") from err


def _values(view: FrameView, keyword: str) -> list[str]:
    value = view.get(keyword)
    if value is None:
        return []
    return [str(item).upper() for item in ([value] if isinstance(value, str) else value)]


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(item) for item in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(np.isfinite(numbers)) else None


def _first_float(value: object) -> float | None:
    if value is not None and not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None  # type: ignore[index]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _normal(orientation: tuple[float, ...] | None) -> tuple[float, float, float] | None:
    """The unit normal of a slice plane: the cross product of its row and column directions."""
    if orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        return None
    return tuple(float(value) for value in normal / length)  # type: ignore[return-value]


def _distinct(values: Sequence[object] | np.ndarray) -> bool:
    return len(set(np.asarray(values).tolist())) == len(values)
