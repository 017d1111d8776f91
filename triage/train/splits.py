"""The training/validation split, and the copies of one scan it finds on both sides.

``grouped`` (the default) keeps every copy group (:mod:`triage.labelled.copies`) on one
side, stratified by class; ``keras`` cuts the file list as
``keras.utils.image_dataset_from_directory(validation_split, seed)`` does, to
compare with the thesis, and counts the validation images whose copy was
trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from triage.errors import DataError
from triage.labelled.copies import CopyGroups, copies_across, find_copies, grouped_split
from triage.labelled.dataset import LabelledSet, split
from triage.model.card import Copies
from triage.train.features import Features


@dataclass(frozen=True)
class SplitRows:
    """Rows of the extracted features (not file positions) on each side."""

    train: np.ndarray
    val: np.ndarray
    labels: np.ndarray  # of every extracted row
    copies: CopyGroups  # over every extracted row
    val_with_copy: tuple[int, ...]  # validation rows that have a copy in training

    @property
    def val_without_copy(self) -> np.ndarray:
        return np.setdiff1d(self.val, np.asarray(self.val_with_copy, dtype=np.intp))


def split_rows(labelled: LabelledSet, extracted: Features, method: str, val_split: float,
               seed: int) -> SplitRows:
    """Split the readable images; unreadable files drop out of their side.

    Raises:
        DataError: a side has no readable image, or only one class.
    """
    labels = labelled.labels[list(extracted.indices)]
    copies = find_copies(extracted.sha256s, extracted.fingerprints)
    if method == "keras":
        train, val = _keras_rows(labelled, extracted, val_split)
    else:
        train, val = grouped_split(labels, copies, val_split, seed)
    for name, rows in (("training", train), ("validation", val)):
        y = labels[rows]
        if len(y) == 0 or y.min() == y.max():
            raise DataError(f"The {name} set has {len(y)} readable images of a single class or none: "
                            f"add images, or change the validation split or the seed.")
    return SplitRows(np.asarray(train), np.asarray(val), labels, copies,
                     tuple(copies_across(copies, train, val)))


def _keras_rows(labelled: LabelledSet, extracted: Features, val_split: float) -> tuple[list[int], list[int]]:
    """Keras's cut of the shuffled file list, mapped to extracted rows."""
    n_train = len(labelled.files) - len(split(labelled.files, val_split)[1])
    position = {index: row for row, index in enumerate(extracted.indices)}
    train = [position[i] for i in range(n_train) if i in position]
    val = [position[i] for i in range(n_train, len(labelled.files)) if i in position]
    return train, val


def copies_record(rows: SplitRows, labelled: LabelledSet, extracted: Features) -> Copies:
    """What the model card says of the copies: how many, and which validation files have one in training."""
    return Copies(
        method=rows.copies.method, groups=rows.copies.groups,
        files_in_groups=rows.copies.files_in_groups,
        validation_with_copy_in_training=len(rows.val_with_copy),
        validation_files_with_copy=tuple(labelled.files[extracted.indices[r]].relpath
                                         for r in rows.val_with_copy),
    )
