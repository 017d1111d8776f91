"""The DICOM objects of a run: what it wrote into the DICOM folder, and how sending them went."""

from __future__ import annotations

from dataclasses import dataclass

# What an object is: the verdict's structured report, a Grad-CAM overlay, a study's report PDF.
OBJECT_KINDS = ("sr", "overlay", "pdf")
# How sending an object went; None when it was never tried.
SENT = "sent"  # stored by the peer (success, or a warning status)
REFUSED = "refused"  # the peer answered with a failure status
UNREACHABLE = "unreachable"  # no association, or it was lost before the peer answered
NOT_TRIED = "stopped"  # the run was stopped before this object's turn
SEND_OUTCOMES = (SENT, REFUSED, UNREACHABLE, NOT_TRIED)


@dataclass(frozen=True)
class DicomObject:
    """One DICOM object in the DICOM folder.

    Attributes:
        kind: One of :data:`OBJECT_KINDS`.
        case_id: The case it reports on; None for a study's PDF.
        study_uid: The source study it joins.
        sop_class_uid, sop_instance_uid: What it is, and its UID (derived from its source and the model).
        file: Its path relative to the DICOM folder.
        written: Written by this run; False when an earlier run's file still holds.
        sent: How sending it went (:data:`SEND_OUTCOMES`); None when it was never sent.
        detail: The peer's status, or why it was not sent.
    """

    kind: str
    case_id: str | None
    study_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    file: str
    written: bool = True
    sent: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class DicomExport:
    """What ``--dicom-out`` did in a run.

    Attributes:
        folder: The DICOM folder.
        objects: Every object of this report in it: written this run, or kept from an earlier one.
        cases: DICOM cases that have objects.
        no_study: Cases that came from no DICOM study (loose images, NIfTI volumes): no object.
        not_scored: DICOM cases not scored (another modality, unreadable, interrupted): no object.
        failures: (case or study, reason) of objects that could not be made from their source.
        peer: ``AET@HOST:PORT`` sent to in this run; None when nothing was sent.
        attempted: SOP Instance UIDs of the objects this run tried to send.
    """

    folder: str
    objects: tuple[DicomObject, ...] = ()
    cases: int = 0
    no_study: int = 0
    not_scored: int = 0
    failures: tuple[tuple[str, str], ...] = ()
    peer: str | None = None
    attempted: frozenset[str] = frozenset()

    @property
    def written(self) -> tuple[DicomObject, ...]:
        return tuple(obj for obj in self.objects if obj.written)

    @property
    def unsent(self) -> tuple[DicomObject, ...]:
        """Objects this run tried to send and did not store."""
        return tuple(obj for obj in self.tried if obj.sent != SENT)

    @property
    def tried(self) -> tuple[DicomObject, ...]:
        """Objects this run tried to send."""
        return tuple(obj for obj in self.objects if obj.sop_instance_uid in self.attempted)

    def counts(self) -> dict[str, int]:
        """The objects, cases and failures; and how sending went for the objects this run tried."""
        by_outcome = {outcome: sum(obj.sent == outcome for obj in self.tried) for outcome in SEND_OUTCOMES}
        return {"objects": len(self.objects), "written": len(self.written), "cases": self.cases,
                "no_study": self.no_study, "not_scored": self.not_scored, "failures": len(self.failures),
                **by_outcome}
