"""What names a DICOM study for a lab (no imports beyond the standard library: results and reports use it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyFacts:
    """How a lab finds a study: its date (YYYYMMDD), description, accession number and patient ID.

    Each is empty where the source has none.
    """

    date: str = ""
    description: str = ""
    accession: str = ""
    patient_id: str = ""
