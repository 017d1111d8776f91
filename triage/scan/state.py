"""Incremental state: the previous run's rows, reused only when nothing that decides a row changed.

The state file beside the outputs holds the settings of the run that wrote it
and its rows. A file that is corrupt, foreign, or was written with other
settings is never trusted: the run then scores everything and says why in the log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

from triage.engine.inference import InferenceModel
from triage.inputs.decode import DECODER_VERSION
from triage.outputs.atomic import atomic_write_text
from triage.results.records import STATUSES, Row, ScanResult
from triage.scan.folder import ScanOptions
from triage.versions import library_versions

log = logging.getLogger(__name__)
STATE_SCHEMA_VERSION = 1

# Libraries whose version can change a row (decoding, resizing, the forward pass).
_SCORING_LIBRARIES = ("triage", "tensorflow", "keras", "numpy", "opencv-python-headless", "pillow",
                      "pydicom")


def scan_settings(model: InferenceModel, options: ScanOptions, input_dir: Path,
                  threshold: float) -> dict[str, Any]:
    """What must match for a previous run's rows to be reused.

    Besides the model (its network and its calibration map: a new map is a new
    model) and the options that decide a row, the batch size, the device (the
    last float bits of a probability depend on both), the precision
    the forward pass ran in (bf16 rows are not fp32 rows) and its safety net's
    margin (which rows fp32 decides), the versions of the libraries that decode
    and score, and the decoder's own version: a carried-over row must equal the
    one a fresh scan would give.
    """
    versions = library_versions()
    return {"model_sha256": model.summary.sha256, "calibration_sha256": model.summary.calibration_sha256,
            "threshold": threshold, "explain": options.explain,
            "cam_layer": options.cam_layer, "input_dir": str(input_dir.resolve()),
            "batch_size": options.batch_size, "device": model.summary.device,
            "precision": model.summary.precision, "margin": model.summary.margin,
            "group_by": options.group_by,
            "familiarity": model.card.familiarity.sha256 if model.familiarity is not None else None,
            "aggregate": options.aggregate, "top_k": options.top_k, "modalities": list(options.modalities),
            "decoder": DECODER_VERSION, "versions": {name: versions.get(name) for name in _SCORING_LIBRARIES}}


# The type each state field must have (besides None where the field allows it).
_ROW_TYPES: dict[str, type] = {
    "path": str, "status": str, "sha256": str, "reason": str, "probability": float, "flagged": bool,
    "raw_probability": float,
    "heatmap": str, "original": str, "width": int, "height": int, "format": str, "size": int,
    "mtime_ns": int, "new": bool, "case_id": str, "study_uid": str, "series_uid": str, "slice_index": int,
    "copy_of": str, "heatmap_note": str, "ood_distance": float, "unfamiliar": bool, "frame": int,
    "precision": str,
}
_ROW_NAMES = frozenset(f.name for f in dataclasses.fields(Row))
_ROW_REQUIRED = ("path", "status", "reason", "flagged", "new")
# Fields a row of an older state may lack (it then never matches this run's settings anyway).
_ROW_OPTIONAL = frozenset({"case_id", "study_uid", "series_uid", "slice_index", "copy_of", "heatmap_note",
                           "ood_distance", "unfamiliar", "raw_probability", "frame",
                           "precision"})


def _check_row(row: Any, heatmap_folder: str) -> Row:
    """One state row as a :class:`Row`; ``ValueError`` when it is not one this tool wrote."""
    if not isinstance(row, dict) or not _ROW_NAMES - _ROW_OPTIONAL <= set(row) <= _ROW_NAMES:
        raise ValueError(f"a row is not a case: {str(row)[:80]}")
    for name, kind in _ROW_TYPES.items():
        if not _typed(row.get(name), kind, optional=name not in _ROW_REQUIRED):
            raise ValueError(f"bad {name} {row.get(name)!r} in a row")
    checked = Row(**row)
    if not checked.path or checked.status not in STATUSES or checked.status == "not_scanned":
        raise ValueError(f"bad row of {checked.path!r}")
    if checked.ok and not (checked.probability is not None and 0.0 <= checked.probability <= 1.0):
        raise ValueError(f"bad probability in the row of {checked.path!r}")
    if checked.raw_probability is not None and not 0.0 <= checked.raw_probability <= 1.0:
        raise ValueError(f"bad raw probability in the row of {checked.path!r}")
    for name in (checked.heatmap, checked.original):
        if name is not None and not _in_folder(name, heatmap_folder):
            raise ValueError(f"heat map {name!r} is outside {heatmap_folder}")
    return checked


def _typed(value: Any, kind: type, optional: bool) -> bool:
    """``value`` is a ``kind`` (a bool is no int here), or None where the field allows it."""
    if value is None:
        return optional
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _in_folder(name: str, folder: str) -> bool:
    """Only images in this report's own heat-map folder, named plainly."""
    return PurePosixPath(name).parent.as_posix() == folder and "\\" not in name and not name.endswith("/..")


def load_state(path: Path, settings: dict[str, Any], heatmap_folder: str) -> dict[str, list[Row]]:
    """Rows of the previous run by path (a volume's slices share one), or nothing when they can't be
    trusted (said in the log).

    Args:
        path: The state file beside the outputs.
        settings: This run's, from :func:`scan_settings`; any difference means a full rescan.
        heatmap_folder: Name of the heat-map folder, relative to the report, that rows may refer to.
    """
    if not path.exists():
        log.info("no previous state beside the outputs: scanning everything")
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("schema_version") != STATE_SCHEMA_VERSION:
            raise ValueError("not a triage state file of schema %d" % STATE_SCHEMA_VERSION)
        old_settings, cases = state.get("settings"), state.get("cases")
        if not isinstance(old_settings, dict) or not isinstance(cases, list):
            raise ValueError("no settings or cases")
        rows: dict[str, list[Row]] = {}
        for row in cases:
            case = _check_row(row, heatmap_folder)
            rows.setdefault(case.path, []).append(case)
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        log.warning("previous state %s is unreadable (%s): scanning everything", path, exc)
        return {}
    changed = [k for k in settings if old_settings.get(k) != settings[k]]
    if changed:
        log.info("previous run used another %s: scanning everything", ", ".join(changed))
        return {}
    return rows


def write_state(path: Path, result: ScanResult, settings: dict[str, Any]) -> None:
    cases = [dataclasses.asdict(c) for c in result.rows if c.status != "not_scanned"]
    atomic_write_text(path, json.dumps({"schema_version": STATE_SCHEMA_VERSION, "settings": settings,
                                        "cases": cases}) + "\n")
