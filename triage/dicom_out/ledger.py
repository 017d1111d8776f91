"""The ledger beside the report: the DICOM objects this report keeps in its DICOM folder, and how
sending each went, so that the next run sends again what this one could not.

A ledger that is unreadable, foreign, or about another folder is not trusted:
the run then writes every case's objects again (their UIDs are the same), and
says why in the log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

from triage.outputs.atomic import atomic_write_text
from triage.results.dicom import OBJECT_KINDS, SEND_OUTCOMES, DicomExport, DicomObject

log = logging.getLogger(__name__)
LEDGER_SCHEMA_VERSION = 1
_FIELDS = {field.name for field in dataclasses.fields(DicomObject)} - {"written"}


def load_ledger(path: Path, folder: Path) -> list[DicomObject]:
    """The objects an earlier run recorded for ``folder``; none when the ledger can't be trusted."""
    if not path.exists():
        return []
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(ledger, dict) or ledger.get("schema_version") != LEDGER_SCHEMA_VERSION:
            raise ValueError(f"not a DICOM ledger of schema {LEDGER_SCHEMA_VERSION}")
        if ledger.get("folder") != str(folder.resolve()):
            log.info("the DICOM ledger %s is about another folder: writing every object again", path)
            return []
        return [_checked(item) for item in ledger.get("objects", [])]
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        log.warning("DICOM ledger %s is unreadable (%s): writing every object again", path, exc)
        return []


def _checked(item: Any) -> DicomObject:
    if not isinstance(item, dict) or set(item) != _FIELDS:
        raise ValueError(f"an entry is not an object: {str(item)[:80]}")
    obj = DicomObject(**item, written=False)
    path = PurePosixPath(obj.file)
    texts = ("study_uid", "sop_class_uid", "sop_instance_uid", "file", "detail")
    if (obj.kind not in OBJECT_KINDS or obj.sent not in (None, *SEND_OUTCOMES) or path.is_absolute()
            or ".." in path.parts or not all(isinstance(getattr(obj, name), str) for name in texts)):
        raise ValueError(f"bad entry {obj.file!r}")
    return obj


def write_ledger(path: Path, export: DicomExport) -> None:
    objects = [{name: value for name, value in dataclasses.asdict(obj).items() if name != "written"}
               for obj in export.objects]
    atomic_write_text(path, json.dumps({"schema_version": LEDGER_SCHEMA_VERSION, "folder": export.folder,
                                        "objects": objects}, indent=1) + "\n")
