"""UIDs derived from what an object is made from, so that a rerun replaces an object instead of adding one."""

from __future__ import annotations

from typing import Iterable

from pydicom.uid import generate_uid


def derived_uid(kind: str, model_sha256: str, sources: Iterable[str]) -> str:
    """The UID of an object (or series) of ``kind`` made by a model from ``sources``.

    The same kind, model and sources always give the same UID (pydicom's
    hash-based :func:`~pydicom.uid.generate_uid`); anything else, another one.
    """
    return str(generate_uid(entropy_srcs=["|".join(["triage", kind, model_sha256, *sources])]))
