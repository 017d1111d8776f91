"""A flagged case's top slice as a Secondary Capture: the slice and its Grad-CAM overlay side by side.

The research-use notice and what the image shows are burned into a band above
the pictures (``BurnedInAnnotation`` YES), so every viewer shows them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from triage.dicom_out import identity
from triage.dicom_out.source import Source
from triage.dicom_out.uids import derived_uid
from triage.results.records import CaseSummary, Row, ScanResult

MIN_WIDTH = 768  # pixels across the two pictures: small slices are enlarged so the text stays readable
_GAP = 8
RANDOM_LINE = "RANDOM BACKBONE - TEST MODEL, ITS SCORES MEAN NOTHING"
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def side_by_side(report_dir: Path, row: Row, caption: str, random_backbone: bool = False) -> np.ndarray:
    """RGB ``uint8``: a band with the notice and ``caption`` above the slice and its overlay.

    A model with a random backbone (tests only) says so in a third line.

    Raises:
        OSError: the display copy or the overlay cannot be read.
    """
    pictures = [_read_rgb(report_dir / name) for name in (row.original, row.heatmap) if name]
    if len(pictures) != 2:
        raise OSError("the slice has no overlay")
    height = max(picture.shape[0] for picture in pictures)
    width = sum(picture.shape[1] for picture in pictures) + _GAP
    scale = max(1.0, MIN_WIDTH / width)
    pictures = [cv2.resize(p, (round(p.shape[1] * scale), round(p.shape[0] * scale)),
                           interpolation=cv2.INTER_LINEAR) for p in pictures]
    height, gap = round(height * scale), round(_GAP * scale)
    row_of_pictures = np.zeros((height, sum(p.shape[1] for p in pictures) + gap, 3), np.uint8)
    row_of_pictures[:pictures[0].shape[0], :pictures[0].shape[1]] = pictures[0]
    row_of_pictures[:pictures[1].shape[0], pictures[0].shape[1] + gap:] = pictures[1]
    lines = [identity.BURNED_IN_NOTICE, caption] + ([RANDOM_LINE] if random_backbone else [])
    return np.vstack([_band(row_of_pictures.shape[1], lines), row_of_pictures])


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read {path.name}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _band(width: int, lines: list[str]) -> np.ndarray:
    """White text on black, each line scaled to fit the width."""
    line_height = max(24, width // 24)
    band = np.zeros((line_height * len(lines) + line_height // 2, width, 3), np.uint8)
    for number, text in enumerate(lines):
        (text_width, _), _ = cv2.getTextSize(text, _FONT, 1.0, 2)
        scale = min(line_height / 30, (width - 16) / max(text_width, 1))
        thickness = max(1, round(scale * 2))
        cv2.putText(band, text, (8, line_height * (number + 1)), _FONT, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return band


def overlay_capture(case: CaseSummary, row: Row, rank: int, pixels: np.ndarray, source: Source,
                    result: ScanResult, version: str) -> hd.sc.SCImage:
    """The Secondary Capture of the ``rank``-th top slice (from 1) of a flagged case."""
    model, uids = result.model, source.instance_uids
    slice_header = source.header(row.path)
    first = source.headers[0]
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source.reference, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=_orientation(slice_header),
        series_instance_uid=derived_uid("overlay-series", model.sha256, uids),
        series_number=identity.series_number("overlay", first.get("SeriesNumber")),
        sop_instance_uid=derived_uid(f"overlay-{rank}", model.sha256, uids), instance_number=rank,
        manufacturer=identity.MANUFACTURER, transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=identity.series_description("overlay", str(first.get("SeriesDescription") or "")),
        contributing_equipment=[identity.equipment(model, version)])
    image.ConversionType = "WSD"  # made on a workstation, not captured from a device
    image.BurnedInAnnotation = "YES"
    image.Laterality = ""  # type 2C: a brain is no paired structure, and the source says none
    image.ImageComments = f"Grad-CAM overlay of slice {row.slice_index}, probability {row.probability:.3f}"
    image.SourceImageSequence = [_source_image(slice_header)]
    image.DerivationDescription = "Grad-CAM heat map of the tumour score, blended over the slice"
    return image


def _source_image(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(
        codes.DCM.SourceImageForImageProcessingOperation)]
    return item


def _orientation(header: Dataset) -> tuple[str, str]:
    """The patient directions of the rows and columns (``L``, ``P``, ...) from ImageOrientationPatient."""
    try:
        cosines = [float(value) for value in header.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return "L", "P"  # no orientation: axial, as brain MRI is read
    return _direction(cosines[:3]), _direction(cosines[3:6])


def _direction(vector: list[float]) -> str:
    """The main patient axis of a direction cosine vector, as a PatientOrientation letter."""
    axis = int(np.argmax(np.abs(vector)))
    towards, away = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
    return towards if vector[axis] >= 0 else away
