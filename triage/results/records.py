"""Immutable scan results: rows (a file or slice each), case and study verdicts, the whole run.

The CSVs (:mod:`triage.results.tables`), the HTML/PDF report and ``run.json`` are all
written from one :class:`ScanResult`, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from triage.inputs.study import StudyFacts
from triage.model.summary import ModelSummary
from triage.results.dicom import DicomExport

# CSV statuses. `ok` rows carry a probability; every other status has a reason.
OK = "ok"
STATUSES: dict[str, str] = {
    OK: "scored",
    "skipped": "hidden or system file or folder (.DS_Store, Thumbs.db, dot-files, $RECYCLE.BIN), not read",
    "unsupported": "not an image format triage reads",
    "empty": "zero-byte file",
    "unreadable": "an image format, but the file is corrupt or truncated",
    "too_large": "refused as a possible decompression bomb (too many pixels)",
    "link_outside": "a symbolic link to a file outside the input folder, not read",
    "link_broken": "a symbolic link whose target does not exist, or a link loop",
    "not_scanned": "the run was interrupted before this file was scored",
    "deferred": "a file of its case changed in the last --settle seconds (still arriving): scored later",
    "error": "an unexpected error while scoring this file",
}
FAILED_STATUSES = frozenset(STATUSES) - {OK, "skipped", "not_scanned", "deferred"}

@dataclass(frozen=True)
class Row:
    """One row: a file found in the input folder, or one slice or frame of it; scored or not.

    Attributes:
        path: Path relative to the input folder, with ``/`` separators.
        sha256: Hex digest of the file's bytes; ``None`` when it was never read.
        status: ``ok`` or one of the error kinds in :data:`STATUSES`.
        reason: Human reason for a non-``ok`` status; empty when ``ok``.
        probability: Tumour probability in [0, 1], calibrated by the model's map; ``None`` unless ``ok``.
        raw_probability: The network's own output, before the map (the same for a model without one).
        flagged: ``probability >= threshold``.
        heatmap: Grad-CAM overlay PNG, relative to the report's folder, if one was made.
        original: Display copy of the decoded image (same size as the overlay),
            relative to the report's folder; written beside every heat map.
        width, height: Size of the decoded image in pixels (after EXIF rotation).
        format: The decoded format (``JPEG``, ``PNG``, ``DICOM``, ...).
        size: File size in bytes; ``mtime_ns``: modification time (for incremental runs).
        new: True when scored in this run, False when carried over from the previous one.
        case_id: The case (series, volume or loose image) the row belongs to; None for a
            file that is no case (hidden, junk, not an image).
        study_uid, series_uid: The DICOM study and series; None for other files.
        slice_index: Position in its series or volume, 0..n-1; None for a loose image and
            for a row that stands for a whole file that was not scored.
        copy_of: The first path (in path order) of another file with the same bytes.
        heatmap_note: Why a row that asked for a heat map has none.
        precision: The precision of the pass that decided the row: the run's, or ``fp32`` where
            the safety net scored it again (its probability was near the threshold).
        ood_distance: How unlike the training images the image is (:mod:`triage.model.familiarity`);
            above 1 it is unfamiliar. None when not scored or when no familiarity check ran.
        unfamiliar: ``ood_distance > 1``: its score is not to be trusted; None as ``ood_distance``.
        frame: The frame of a multi-frame DICOM file the row is (0-based, in the file's order); None
            for any other row.
    """

    path: str
    status: str
    sha256: str | None = None
    reason: str = ""
    probability: float | None = None
    flagged: bool = False
    raw_probability: float | None = None
    heatmap: str | None = None
    original: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    new: bool = True
    case_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    slice_index: int | None = None
    copy_of: str | None = None
    heatmap_note: str | None = None
    ood_distance: float | None = None
    unfamiliar: bool | None = None
    frame: int | None = None
    precision: str | None = None

    @property
    def key(self) -> tuple[str, int | None, int | None]:
        """What tells rows apart: the file, the frame of it, and the slice of its case it is."""
        return self.path, self.frame, self.slice_index

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES


@dataclass(frozen=True)
class CaseSummary:
    """The verdict on one case: a DICOM series, a NIfTI volume or a loose image.

    Attributes:
        kind: ``image``, ``series`` or ``volume``.
        n_images: Its rows (slices, frames or the one image); ``n_scored``: those ``ok``.
        score: The case's score from its slices' probabilities (``aggregate``:
            ``max`` or ``topk``); None when nothing was scored.
        flagged: ``score >= threshold``.
        top_path, top_slice_index: The slice with the highest probability.
        sort_method: How the slices were ordered (``position``, ``instance_number``, ``file_name``).
        localizer: A localizer: scored, but left out of its study's verdict.
        status, reason: Why the case was not scored (``skipped``, ``unsupported``, ...); None when it was.
        top: Its highest rows (at most ``--top-k``), highest first: the slices its card shows.
        first_path: The path of its first slice.
        copies: First paths of later cases with the same bytes, shown on this case's card.
        copy_of: The case whose card shows this one (same bytes), if any.
        new: Some row was scored in this run.
        unfamiliar: Most of its scored slices are unfamiliar (a loose image: it is); None when no
            familiarity check ran. Its score is not to be trusted, whatever it is.
        study: Its study's date, description, accession number and patient ID (DICOM only).
    """

    case_id: str
    kind: str
    n_images: int
    n_scored: int
    score: float | None
    flagged: bool
    aggregate: str
    first_path: str
    top_path: str | None = None
    top_slice_index: int | None = None
    study_uid: str = ""
    series_uid: str = ""
    description: str = ""
    modality: str = ""
    sort_method: str = ""
    localizer: bool = False
    status: str | None = None
    reason: str = ""
    top: tuple[Row, ...] = ()
    copies: tuple[str, ...] = ()
    copy_of: str | None = None
    new: bool = True
    unfamiliar: bool | None = None
    study: StudyFacts = StudyFacts()

    @property
    def ood_distance(self) -> float:
        """The largest ``ood_distance`` of its shown slices (0 when none was measured)."""
        return max((row.ood_distance or 0.0 for row in self.top), default=0.0)

    @property
    def needs_review(self) -> bool:
        """Flagged, or unfamiliar: never reported as clear."""
        return self.flagged or bool(self.unfamiliar)


@dataclass(frozen=True)
class StudySummary:
    """A DICOM study's line: the highest score of its non-localizer cases, and how a lab finds it."""

    study_uid: str
    score: float | None
    flagged: bool
    case_ids: tuple[str, ...]
    facts: StudyFacts = StudyFacts()


def image_summaries(rows: tuple[Row, ...], threshold: float) -> tuple[CaseSummary, ...]:
    """Each scored row as a loose image of its own (for results built without cases)."""
    return tuple(
        CaseSummary(case_id=row.path, kind="image", n_images=1, n_scored=1, score=row.probability,
                    flagged=row.probability is not None and row.probability >= threshold, aggregate="max",
                    first_path=row.path, top_path=row.path, top=(row,), new=row.new,
                    unfamiliar=row.unfamiliar)
        for row in rows if row.ok)


@dataclass(frozen=True)
class ScanResult:
    """A whole run: every row (file or slice), the cases and studies they form, the model, the run's facts.

    ``cases`` left empty means every scored row is a loose image of its own.
    """

    input_dir: str
    rows: tuple[Row, ...]
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
    cases: tuple[CaseSummary, ...] = ()
    studies: tuple[StudySummary, ...] = ()
    aggregate: str = "max"
    top_k: int = 3
    dicom: DicomExport | None = None  # what --dicom-out wrote and sent, once it has

    def __post_init__(self) -> None:
        if not self.cases:
            object.__setattr__(self, "cases", image_summaries(self.rows, self.threshold))

    def count(self, *statuses: str) -> int:
        return sum(row.status in statuses for row in self.rows)

    @property
    def found(self) -> int:
        return len(self.rows)

    @property
    def scored(self) -> int:
        return self.count(OK)

    @property
    def failed(self) -> int:
        return sum(row.failed for row in self.rows)

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def not_scanned(self) -> int:
        return self.count("not_scanned")

    @property
    def flagged(self) -> tuple[Row, ...]:
        """Flagged rows, highest probability first (then by path, for a stable order)."""
        hits = [c for c in self.rows if c.ok and c.flagged]
        return tuple(sorted(hits, key=lambda c: (-(c.probability or 0.0), c.path)))

    @property
    def flagged_cases(self) -> tuple[CaseSummary, ...]:
        """Flagged cases, highest score first (then by first path)."""
        hits = [s for s in self.cases if s.flagged]
        return tuple(sorted(hits, key=lambda s: (-(s.score or 0.0), s.first_path, s.case_id)))

    @property
    def unfamiliar_cases(self) -> tuple[CaseSummary, ...]:
        """Unfamiliar cases that are not flagged (those are shown with the flagged), most unlike first."""
        hits = [s for s in self.cases if s.unfamiliar and not s.flagged]
        return tuple(sorted(hits, key=lambda s: (-s.ood_distance, s.first_path, s.case_id)))

    @property
    def failures(self) -> tuple[Row, ...]:
        return tuple(c for c in self.rows if c.failed)

    @property
    def scored_this_run(self) -> int:
        return sum(c.ok and c.new for c in self.rows)

    @property
    def rescored_this_run(self) -> int:
        """Rows of this run that the fp32 safety net decided (a reduced precision only)."""
        if self.model.precision == "fp32":
            return 0
        return sum(c.ok and c.new and c.precision == "fp32" for c in self.rows)

    @property
    def images_per_second(self) -> float:
        return self.scored_this_run / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict[str, int]:
        return {
            "found": self.found, "scored": self.scored, "flagged": len(self.flagged),
            "failed": self.failed, "skipped": self.skipped, "not_scanned": self.not_scanned,
            "deferred": self.count("deferred"),
            "scored_this_run": self.scored_this_run, "rescored_fp32": self.rescored_this_run,
            "removed_since_last": self.removed_since_last,
            "unfamiliar": sum(bool(row.unfamiliar) for row in self.rows),
            "cases": len(self.cases), "cases_flagged": len(self.flagged_cases),
            "cases_unfamiliar": len(self.unfamiliar_cases),
            "cases_need_review": sum(case.needs_review for case in self.cases),
            "studies": len(self.studies), "studies_flagged": sum(s.flagged for s in self.studies),
        }
