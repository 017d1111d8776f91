"""Labelled folders: class sub-folders, and the train/validation split Keras makes.

The split reproduces ``keras.utils.image_dataset_from_directory(validation_split,
seed)`` file for file: class folders in alphabetical order, files in sorted
``os.walk`` order, one global ``RandomState(seed)`` shuffle, the last
``int(split * n)`` files for validation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage.errors import DataError
from triage.inputs.formats import DICOM_FIRST_GROUPS, IMAGE_EXTENSIONS
from triage.inputs.nifti import is_nifti


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    relpath: str
    label: int  # 1 = positive (tumour), 0 = negative


@dataclass(frozen=True)
class LabelledSet:
    """Every image file of a labelled folder, in Keras's shuffled order."""

    root: Path
    files: tuple[LabelledFile, ...]
    class_names: tuple[str, str]  # (negative, positive)
    # (relpath, status, reason) of the files not read: ``skipped`` for a scan that only `triage scan`
    # reads (a NIfTI volume, a DICOM file without an image extension), ``unsupported`` for the rest.
    ignored: tuple[tuple[str, str, str], ...]

    @property
    def labels(self) -> np.ndarray:
        return np.array([f.label for f in self.files], dtype=np.int32)


def class_folders(root: Path, positive: str) -> tuple[str, str]:
    """The (negative, positive) class folder names of ``root``.

    Raises:
        DataError: ``root`` is missing, or has not exactly two class folders
            with ``positive`` among them.
    """
    if not root.is_dir():
        raise DataError(f"Data folder {root} does not exist or is not a folder.")
    try:
        subdirs = sorted(
            entry.name for entry in os.scandir(root)
            if entry.is_dir() and not entry.name.startswith(".")
        )
    except PermissionError as exc:
        raise DataError(f"Data folder {root} cannot be read: {exc.strerror}.") from exc
    if positive not in subdirs:
        raise DataError(
            f"Data folder {root} needs a sub-folder {positive!r} of positive (tumour) images "
            f"and one of negatives; found {subdirs or 'no sub-folders'} "
            f"(the positive class folder may have another name).", option="positive"
        )
    if len(subdirs) != 2:
        raise DataError(
            f"Data folder {root} must hold exactly two class sub-folders, found {len(subdirs)}: "
            f"{', '.join(subdirs)}."
        )
    negative = next(name for name in subdirs if name != positive)
    return negative, positive


def index_labelled(root: Path, positive: str = "yes", seed: int | None = 1337) -> LabelledSet:
    """List a labelled folder's image files as Keras's directory loader would.

    Args:
        root: Folder with one sub-folder per class.
        positive: Name of the tumour class folder; the other folder is the negative class.
        seed: Shuffle seed, as Keras's ``seed``; ``None`` keeps the sorted order.

    Returns:
        The files with labels, shuffled as Keras shuffles them.

    Raises:
        DataError: the folder is unusable, or a class has no image files.
    """
    root = Path(root)
    negative, positive = class_folders(root, positive)
    paths: list[Path] = []
    ignored: list[tuple[str, str, str]] = []
    counts = {negative: 0, positive: 0}
    for name in sorted((negative, positive)):  # Keras indexes classes alphabetically
        class_dir = root / name
        for dirpath, _, filenames in sorted(os.walk(class_dir), key=lambda walked: walked[0]):
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(path)
                    counts[name] += 1
                else:
                    ignored.append((path.relative_to(root).as_posix(), *_not_read(path)))
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        scans = sum(status == "skipped" and relpath.startswith(f"{empty[0]}/")
                    for relpath, status, _ in ignored)
        hint = (f" ({scans} volumes or DICOM files without a .dcm extension there are read by triage scan "
                f"only)" if scans else "")
        raise DataError(f"Class folder {root / empty[0]} holds no image files{hint}.")
    labels = [int(p.relative_to(root).parts[0] == positive) for p in paths]
    if seed is not None:
        # Two generators with the same seed: Keras shuffles paths and labels separately.
        np.random.RandomState(seed).shuffle(paths)
        np.random.RandomState(seed).shuffle(labels)
    files = tuple(
        LabelledFile(p, p.relative_to(root).as_posix(), label) for p, label in zip(paths, labels)
    )
    return LabelledSet(root, files, (negative, positive), tuple(ignored))


def _not_read(path: Path) -> tuple[str, str]:
    """The status and reason of a file without an image extension: a scan that only a scan reads, or not
    an image."""
    if is_nifti(path):
        return "skipped", "a NIfTI volume: train and evaluate read 2D image files (triage scan reads volumes)"
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        head = b""
    if head[128:132] == b"DICM" or (not path.suffix and head[:2] in DICOM_FIRST_GROUPS):
        return "skipped", ("a DICOM file without a .dcm extension: train and evaluate find images by their "
                           "extension (triage scan reads it)")
    return "unsupported", "not an image file name"


Files = tuple[LabelledFile, ...]


def split(files: Files, val_split: float) -> tuple[Files, Files]:
    """(training, validation) as Keras's ``validation_split`` cuts a shuffled list."""
    if not 0 < val_split < 1:
        raise DataError(f"The validation split must be between 0 and 1, got {val_split}.",
                        option="val_split")
    n_val = int(val_split * len(files))
    if n_val == 0 or n_val == len(files):
        raise DataError(
            f"A validation split of {val_split} of {len(files)} images leaves an empty training "
            f"or validation set.", option="val_split"
        )
    return files[:-n_val], files[-n_val:]
