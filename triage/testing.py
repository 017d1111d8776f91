"""Generated inputs and tiny models for triage's tests and benchmarks (no pytest, no network).

Like ``numpy.testing``: the tests and ``bench/`` import these helpers from the
package. Images are 'scans' made of noise, with a bright disc where a tumour
should be; DICOM files are copies of pydicom's ``MR_small.dcm`` test file or
built from scratch; NIfTI volumes come from nibabel. The tiny model is the
``random-tiny`` backbone (:data:`triage.model.network.TINY_BACKBONE`): the real
training, scanning and Grad-CAM code on a two-layer CNN, marked on its card and
in its report as a random test model whose scores mean nothing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from triage.model.network import TINY_BACKBONE

if TYPE_CHECKING:
    import keras

    from triage.train.training import TrainResult

IMAGE_SIZE = 32  # the model input side of every test model
# The shared public data set, beside the project (tests that compare with Keras use it when present).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_tumor_dataset"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"  # SOP class of an enhanced (multi-frame) MR image
# The tiny model's training: the thesis's recipe (Adam 1e-3, L2 0.01) for 5 epochs at 32 px. On the
# blob set (make_blob_dataset, seed 0) it scores every disc above every noise image (validation
# accuracy 1.0), discs from about 0.6 to 0.95, noise about 0.4: scores that mean something, none
# saturated at 0 or 1.
TINY_TRAINING: dict[str, Any] = dict(epochs=5, image_size=IMAGE_SIZE, backbone_weights=TINY_BACKBONE,
                                     seed=1337)


# --------------------------------------------------------------------------- images


def blob_image(rng: np.random.Generator, tumour: bool, size: int = 48) -> np.ndarray:
    """A dark noisy 'scan' (uint8 RGB); with a tumour it has a bright disc somewhere."""
    image = rng.normal(40, 12, (size, size)).clip(0, 255)
    if tumour:
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        radius = rng.integers(size // 8, size // 4)
        yy, xx = np.mgrid[:size, :size]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = rng.uniform(200, 255)
    return np.repeat(image.astype(np.uint8)[..., None], 3, axis=2)


def write_blob_images(folder: Path, names: Sequence[str], *, seed: int = 0, size: int = 48,
                      tumour_every: int = 2) -> Path:
    """Blob 'scans' named ``names`` in ``folder`` (format by suffix); the 1st, and every
    ``tumour_every``-th after it, has a disc."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(blob_image(rng, tumour=i % tumour_every == 0, size=size)).save(folder / name)
    return folder


def make_blob_dataset(root: Path, per_class: int = 40, seed: int = 0, *, positive: str = "yes",
                      negative: str = "no") -> Path:
    """A labelled folder: ``positive``/ (bright disc) and ``negative``/ (none), mixing .png, .jpg,
    .JPG and .jpeg like the shared set."""
    rng = np.random.default_rng(seed)
    for label, tumour in ((positive, True), (negative, False)):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = (".png", ".jpg", ".JPG", ".jpeg")[i % 4]
            Image.fromarray(blob_image(rng, tumour)).save(folder / f"{label} {i}{suffix}", quality=95)
    return root


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- DICOM


def write_dicom(path: Path | io.BytesIO, pixels: np.ndarray, *, preamble: bool = True,
                syntax: str = "1.2.840.10008.1.2.1", **attributes: object) -> Path | io.BytesIO:
    """An MR DICOM file (or buffer) built from scratch: uint8 (..., rows, cols, 3) is RGB, else
    MONOCHROME2 of the array's bit depth; ``syntax`` the transfer syntax (default explicit VR
    little endian); ``attributes`` are set last (NumberOfFrames for several frames)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset("scan.dcm", {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    colour = pixels.dtype == np.uint8 and pixels.shape[-1] == 3
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=preamble)
    return path


def mr_slice(path: Path, *, study: str, series: str, z: float = 0.0, position: tuple | None = None,
             orientation: tuple = AXIAL, instance: int | None = 1, **edits: object) -> Path:
    """A copy of pydicom's MR_small.dcm (64x64, 16-bit) with other UIDs and geometry; ``edits``
    set attributes (None deletes one)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = list(position if position is not None else (0.0, 0.0, z))
    if instance is None:
        del ds.InstanceNumber
    else:
        ds.InstanceNumber = instance
    for keyword, value in edits.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def blob_slice(seed: int, tumour: bool, size: int = 64) -> np.ndarray:
    """A 16-bit (int16) blob 'scan' for a DICOM slice or a NIfTI volume."""
    return blob_image(np.random.default_rng(seed), tumour, size)[..., 0].astype(np.int16) * 8


def write_series(folder: Path, study: str, name: str, n: int, tumour_slices: Sequence[int] = ()
                 ) -> dict[str, float]:
    """``n`` axial 64x64 slices of one series under ``folder/name``, files named in shuffled
    order (IM<k>), no stored window, blobs on ``tumour_slices``.

    Returns:
        Each file's path relative to ``folder`` and its z.
    """
    from pydicom.uid import generate_uid

    series = generate_uid()
    order = np.random.default_rng(len(name)).permutation(n)
    positions = {}
    for index, shuffled in enumerate(order):
        path = folder / name / f"IM{shuffled}"
        pixels = blob_slice(100 * len(name) + index, index in tumour_slices)
        mr_slice(path, study=study, series=series, z=2.5 * index, instance=None,
                 SeriesDescription=name.upper(), WindowCenter=None, WindowWidth=None,
                 PixelData=pixels.tobytes())
        positions[path.relative_to(folder).as_posix()] = 2.5 * index
    return positions


def enhanced_mr(path: Path, slopes: tuple[float, ...], zs: tuple[float, ...]) -> Path:
    """An enhanced multi-frame MR built from MR_small: one frame per slope, at the given positions
    (per-frame position, rescale and window; the orientation, axial, in the shared group)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    pixels = ds.pixel_array
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    ds.SeriesInstanceUID = generate_uid()
    ds.NumberOfFrames = len(slopes)
    ds.PixelData = np.stack([pixels] * len(slopes)).tobytes()
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "WindowCenter", "WindowWidth"):
        delattr(ds, keyword)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = list(AXIAL)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for slope, z in zip(slopes, zs):
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([Dataset()])
        frame.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, z]
        frame.PixelValueTransformationSequence = Sequence([Dataset()])
        frame.PixelValueTransformationSequence[0].RescaleSlope = slope
        frame.PixelValueTransformationSequence[0].RescaleIntercept = 0
        frame.FrameVOILUTSequence = Sequence([Dataset()])
        frame.FrameVOILUTSequence[0].WindowCenter = 2000 * slope
        frame.FrameVOILUTSequence[0].WindowWidth = 4000 * slope
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.save_as(path)
    return path


def two_stack_file(path: Path) -> Path:
    """An enhanced multi-frame file holding two stacks: 3 axial frames, then 3 sagittal ones."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    enhanced_mr(path, slopes=(1.0,) * 6, zs=(0.0, 1.0, 2.0, 0.0, 1.0, 2.0))
    ds = pydicom.dcmread(path)
    for frame in range(3, 6):
        plane = Dataset()
        plane.ImageOrientationPatient = list(SAGITTAL)
        ds.PerFrameFunctionalGroupsSequence[frame].PlaneOrientationSequence = Sequence([plane])
    ds.save_as(path)
    return path


def dicom_declaring(path: Path, frames: int, side: int, data: int) -> Path:
    """MR_small whose header declares ``frames`` frames of ``side`` x ``side`` while its pixel data
    hold ``data`` bytes (a ramp)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, side, side
    ds.PixelData = (np.arange(data) % 251).astype(np.uint8).tobytes()
    ds.save_as(path)
    return path


# --------------------------------------------------------------------------- NIfTI


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def nifti_with(path: Path, *, shape: tuple[int, ...] = (4, 4, 4), srow: float | None = None) -> Path:
    """A NIfTI volume of ones of ``shape``, placed by its sform; ``srow`` replaces the affine's first
    value in the file (NaN or infinity: nibabel refuses to write such an affine itself)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.ones(shape, np.int16), np.eye(4))
    image.header.set_qform(None, code=0)
    image.header.set_sform(np.eye(4), code=1)
    nib.save(image, path)
    if srow is not None:
        raw = bytearray(path.read_bytes())
        raw[280:284] = np.float32(srow).tobytes()  # srow_x[0] of the NIfTI-1 header
        path.write_bytes(bytes(raw))
    return path


def write_volume(path: Path, n: int = 6, tumour_slices: Sequence[int] = ()) -> Path:
    """A NIfTI volume of ``n`` 64x64 blob slices (RAS, 1 mm), blobs on ``tumour_slices``."""
    slices = [blob_slice(500 + k, k in tumour_slices) for k in range(n)]
    return write_nifti(path, np.stack(slices, axis=-1), np.eye(4))


# --------------------------------------------------------------------------- models


def train_tiny_model(data: Path, out: Path, **changes: Any) -> "TrainResult":
    """A model folder trained by :func:`triage.train.training.train_model` on the tiny backbone
    (:data:`TINY_TRAINING`, with ``changes``)."""
    from triage.train.training import TrainConfig, train_model

    return train_model(data, out, TrainConfig(**{**TINY_TRAINING, **changes}))


def tiny_classifier(image_size: int = IMAGE_SIZE, seed: int = 11, units: tuple[int, ...] = (8,)
                    ) -> "keras.Model":
    """An untrained classifier of the tiny backbone and a small head, assembled as training does,
    as one graph like a loaded ``model.keras`` (each layer called once)."""
    import keras

    from triage.model.network import (
        HeadConfig,
        assemble,
        build_backbone,
        build_head,
        feature_extractor,
        resolve_backbone_weights,
    )

    extractor = feature_extractor(build_backbone(image_size, resolve_backbone_weights(TINY_BACKBONE, seed)))
    model = assemble(extractor, build_head(extractor.output.shape[-1], HeadConfig(units=units)))
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def copy_model(source: Path, dest: Path, **card_changes: object) -> Path:
    """A copy of a model folder (files hard-linked where possible) whose card has ``card_changes``."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link_or_copy)
    card_path = dest / "model_card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card_path.unlink()  # maybe a hard link to the source's card: write a new file instead
    card_path.write_text(json.dumps({**card, **card_changes}, indent=2), encoding="utf-8")
    return dest


def with_margin(folder: Path, precision: str, margin: float = 0.05) -> Path:
    """Write a measured margin for ``precision`` into a model folder's card, as ``triage precisions``
    would (for tests of a reduced precision that are not about the margin itself)."""
    import dataclasses

    from triage.model.card import FastPath, read_card, write_card

    card = read_card(folder)
    path = FastPath(precision, 1, 0.0, 0.0, margin / 2, 0, margin, "test", "2026-01-01T00:00:00+00:00")
    write_card(dataclasses.replace(card, fast_paths=(*card.fast_paths, path)), folder)
    return folder


# --------------------------------------------------------------------------- outputs


def csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV's rows as strings, by column name."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
