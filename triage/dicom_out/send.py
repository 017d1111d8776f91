"""Sending DICOM objects to an archive with C-STORE (pynetdicom), over one association.

Every wait is bounded (:data:`triage.settings.DICOM_TIMEOUT`): connecting, each
association step, each reply. An object the peer did not store keeps its file;
its outcome says why, and the next run sends it again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from triage import settings
from triage.dicom_out.options import Peer
from triage.errors import short_reason
from triage.results.dicom import NOT_TRIED, REFUSED, SENT, UNREACHABLE, DicomObject

# Status codes of a C-STORE that stored the object (PS3.4 B.2.3): success, and the warnings.
_STORED = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}


def send_objects(objects: Sequence[DicomObject], folder: Path, peer: Peer,
                 should_stop: Callable[[], bool] = lambda: False,
                 timeout: float = settings.DICOM_TIMEOUT) -> list[DicomObject]:
    """Store ``objects`` (files under ``folder``) at ``peer``; each comes back with its outcome."""
    from pynetdicom import AE

    if not objects or should_stop():
        return [_outcome(obj, NOT_TRIED, "the run was stopped before it was sent") for obj in objects]
    ae = AE(ae_title=peer.calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in sorted({obj.sop_class_uid for obj in objects}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    try:
        association = ae.associate(peer.host, peer.port, ae_title=peer.called_ae)
    except (OSError, RuntimeError, ValueError) as err:  # e.g. a host name that does not resolve
        return [_outcome(obj, UNREACHABLE, short_reason(err)) for obj in objects]
    if not association.is_established:
        why = _refusal(association)
        return [_outcome(obj, UNREACHABLE, why) for obj in objects]
    try:
        return [_store(association, obj, folder, should_stop) for obj in objects]
    finally:
        if association.is_established:
            association.release()


def _store(association: object, obj: DicomObject, folder: Path,
           should_stop: Callable[[], bool]) -> DicomObject:
    if should_stop():
        return _outcome(obj, NOT_TRIED, "the run was stopped before it was sent")
    if not association.is_established:  # type: ignore[attr-defined]
        return _outcome(obj, UNREACHABLE, "the association was lost")
    try:
        status = association.send_c_store(folder / obj.file)  # type: ignore[attr-defined]
    except (OSError, ValueError, RuntimeError) as err:  # a file gone, no accepted context for its class
        return _outcome(obj, REFUSED, short_reason(err))
    if "Status" not in status:  # no reply: timed out, or the connection dropped
        return _outcome(obj, UNREACHABLE, "no reply to the C-STORE")
    code = int(status.Status)
    if code in _STORED:
        return _outcome(obj, SENT, "" if code == 0 else f"stored with warning 0x{code:04X}")
    return _outcome(obj, REFUSED, f"status 0x{code:04X}")


def _refusal(association: object) -> str:
    if association.is_rejected:  # type: ignore[attr-defined]
        return "the association was rejected (check the AE titles)"
    if association.is_aborted:  # type: ignore[attr-defined]
        return "the association was aborted"
    return "no DICOM peer answered (connection refused or timed out)"


def _outcome(obj: DicomObject, sent: str, detail: str) -> DicomObject:
    return replace(obj, sent=sent, detail=detail)
