"""Immutable scan results, and the CSV that renders from them.

The CSV, the HTML/PDF report and ``run.json`` are all written from one
:class:`ScanResult`, so they cannot disagree.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from triage.atomic import atomic_write_text

# CSV statuses. `ok` rows carry a probability; every other status has a reason.
OK = "ok"
STATUSES: dict[str, str] = {
    OK: "scored",
    "skipped": "hidden or system file (.DS_Store, Thumbs.db, dot-files), not read",
    "unsupported": "not an image format triage reads",
    "empty": "zero-byte file",
    "unreadable": "an image format, but the file is corrupt or truncated",
    "too_large": "refused as a possible decompression bomb (too many pixels)",
    "link_outside": "a symbolic link to a file outside the input folder, not read",
    "link_broken": "a symbolic link whose target does not exist, or a link loop",
    "not_scanned": "the run was interrupted before this file was scored",
    "error": "an unexpected error while scoring this file",
}
FAILED_STATUSES = frozenset(STATUSES) - {OK, "skipped", "not_scanned"}

CSV_COLUMNS = (
    "path", "sha256", "status", "reason", "probability", "flagged",
    "heatmap", "width", "height", "format", "model_id",
)


@dataclass(frozen=True)
class CaseResult:
    """One file found in the input folder, scored or not.

    Attributes:
        path: Path relative to the input folder, with ``/`` separators.
        sha256: Hex digest of the file's bytes; ``None`` when it was never read.
        status: ``ok`` or one of the error kinds in :data:`STATUSES`.
        reason: Human reason for a non-``ok`` status; empty when ``ok``.
        probability: Tumour probability in [0, 1]; ``None`` unless ``ok``.
        flagged: ``probability >= threshold``.
        heatmap: Grad-CAM overlay PNG, relative to the report's folder, if one was made.
        original: Display copy of the decoded image (same size as the overlay),
            relative to the report's folder; written beside every heat map.
        width, height: Size of the decoded image in pixels (after EXIF rotation).
        format: The decoded format (``JPEG``, ``PNG``, ``DICOM``, ...).
        size: File size in bytes; ``mtime_ns``: modification time (for incremental runs).
        new: True when scored in this run, False when carried over from the previous one.
    """

    path: str
    status: str
    sha256: str | None = None
    reason: str = ""
    probability: float | None = None
    flagged: bool = False
    heatmap: str | None = None
    original: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    new: bool = True

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES


@dataclass(frozen=True)
class ModelSummary:
    """The facts about a model that a report and ``run.json`` show."""

    id: str
    path: str
    sha256: str
    version: str
    threshold: float
    image_size: int
    backbone_weights: str
    trained_on: str
    trained_at: str
    val_sensitivity: tuple[float, float, float, int] | None  # value, CI low, CI high, n
    val_specificity: tuple[float, float, float, int] | None
    precision: str = "fp32"  # what this run's forward pass ran in: fp32, bf16 or fp16

    @property
    def random_backbone(self) -> bool:
        return self.backbone_weights == "random"


@dataclass(frozen=True)
class ScanResult:
    """A whole run: every file found, the model, and the run's facts."""

    input_dir: str
    cases: tuple[CaseResult, ...]
    model: ModelSummary
    threshold: float
    cam_layer: str
    explain: str
    started_at: str
    finished_at: str
    seconds: float
    interrupted: bool = False
    removed_since_last: int = 0
    incremental: bool = False
    versions: dict[str, str] = field(default_factory=dict)

    def count(self, *statuses: str) -> int:
        return sum(case.status in statuses for case in self.cases)

    @property
    def found(self) -> int:
        return len(self.cases)

    @property
    def scored(self) -> int:
        return self.count(OK)

    @property
    def failed(self) -> int:
        return sum(case.failed for case in self.cases)

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def not_scanned(self) -> int:
        return self.count("not_scanned")

    @property
    def flagged(self) -> tuple[CaseResult, ...]:
        """Flagged cases, highest probability first (then by path, for a stable order)."""
        hits = [c for c in self.cases if c.ok and c.flagged]
        return tuple(sorted(hits, key=lambda c: (-(c.probability or 0.0), c.path)))

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        return tuple(c for c in self.cases if c.failed)

    @property
    def scored_this_run(self) -> int:
        return sum(c.ok and c.new for c in self.cases)

    @property
    def images_per_second(self) -> float:
        return self.scored_this_run / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict[str, int]:
        return {
            "found": self.found, "scored": self.scored, "flagged": len(self.flagged),
            "failed": self.failed, "skipped": self.skipped, "not_scanned": self.not_scanned,
            "scored_this_run": self.scored_this_run, "removed_since_last": self.removed_since_last,
        }


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def csv_text(result: ScanResult) -> str:
    """The CSV of a run: one row per file found, in the run's (path-sorted) order.

    Lines end in ``\\r\\n`` (RFC 4180), so a field that holds a carriage return
    or a line feed (a file name may) is quoted, and read back whole.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for case in result.cases:
        writer.writerow([
            case.path, _cell(case.sha256), case.status, case.reason,
            _cell(case.probability), _cell(case.flagged) if case.ok else "",
            _cell(case.heatmap), _cell(case.width), _cell(case.height), _cell(case.format),
            result.model.id,
        ])
    return buffer.getvalue()


def write_csv(result: ScanResult, path: str | Path) -> None:
    """Write the run's CSV atomically."""
    atomic_write_text(path, csv_text(result))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_csv` back as a list of row dicts, each field exactly."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
