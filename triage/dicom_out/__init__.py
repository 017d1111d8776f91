"""Results back into the source study: DICOM objects of a scan's verdicts, and sending them to an archive.

For every scored case that came from a DICOM series: a Comprehensive SR of its
verdict (TID 1500), Secondary Capture images of a flagged case's Grad-CAM
overlays, and one Encapsulated PDF per study with that study's pages of the
report; each joins the source study, says research use, and has UIDs derived
from its source and the model. :mod:`~triage.dicom_out.send` stores them in an
archive with C-STORE; :mod:`~triage.dicom_out.ledger` remembers what was
written and sent, so a later run sends what an earlier one could not.
"""
