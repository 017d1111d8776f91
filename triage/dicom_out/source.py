"""A case's source: the headers of its DICOM files, which its objects reference and whose study they join."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from triage.errors import short_reason

# The Patient and General Study attributes every object has (type 2): copied from the
# source, and present but empty where the source has none; nothing else is made up.
_PATIENT_AND_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                      "ReferringPhysicianName", "StudyID", "AccessionNumber")
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class SourceError(Exception):
    """A case's files cannot be the source of its objects (gone, changed, or without their UIDs)."""


@dataclass(frozen=True)
class Source:
    """The headers of a case's files, in slice order, each file once."""

    headers: tuple[Dataset, ...]
    paths: tuple[str, ...]

    @property
    def reference(self) -> Dataset:
        """The first header, with the type 2 patient and study attributes present (empty where missing)."""
        reference = copy.deepcopy(self.headers[0])
        for keyword in _PATIENT_AND_STUDY:
            if keyword not in reference:
                setattr(reference, keyword, "")
        return reference

    def header(self, path: str) -> Dataset:
        return self.headers[self.paths.index(path)]

    @property
    def instance_uids(self) -> list[str]:
        """The source instances' SOP Instance UIDs, sorted: what the objects' UIDs derive from."""
        return sorted(str(header.SOPInstanceUID) for header in self.headers)


def read_source(input_dir: Path, paths: Sequence[str], study_uid: str) -> Source:
    """The headers of ``paths`` (relative to ``input_dir``), each file read once, without pixels.

    Raises:
        SourceError: a file is gone or unreadable, lacks a UID, or belongs to another study now.
    """
    if not UID(study_uid).is_valid:  # it names the study's folder of objects: a UID, nothing else
        raise SourceError(f"the StudyInstanceUID {study_uid[:70]!r} is not a valid UID")
    unique = tuple(dict.fromkeys(paths))
    headers = []
    for path in unique:
        try:
            header = pydicom.dcmread(input_dir / path, stop_before_pixels=True, force=True)
        except Exception as err:  # gone, or no longer DICOM since it was scored
            raise SourceError(f"{path} cannot be read again ({short_reason(err)})") from err
        missing = [keyword for keyword in _REQUIRED if not header.get(keyword)]
        if missing:
            raise SourceError(f"{path} has no {', '.join(missing)}")
        if str(header.StudyInstanceUID) != study_uid:
            raise SourceError(f"{path} belongs to another study than when it was scored")
        headers.append(header)
    if not headers:
        raise SourceError("the case has no files")
    return Source(tuple(headers), unique)
