"""A study's pages of the report as an Encapsulated PDF in a new series of the study."""

from __future__ import annotations

import datetime as dt

import highdicom as hd
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from triage.dicom_out import identity
from triage.dicom_out.source import Source
from triage.dicom_out.uids import derived_uid
from triage.model.summary import ModelSummary

DOCUMENT_TITLE = "triage report - research use only, not for diagnosis"


def study_pdf(study_uid: str, source: Source, pdf: bytes, model: ModelSummary, version: str) -> hd.SOPClass:
    """The Encapsulated PDF of one study; its patient and study attributes are the source's."""
    now = dt.datetime.now()
    document = hd.SOPClass(
        study_instance_uid=study_uid,
        series_instance_uid=derived_uid("pdf-series", model.sha256, [study_uid]),
        series_number=identity.series_number("pdf"),
        sop_instance_uid=derived_uid("pdf", model.sha256, [study_uid]), sop_class_uid=EncapsulatedPDFStorage,
        instance_number=1, modality="DOC", manufacturer=identity.MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian, series_description=identity.series_description("pdf"),
        manufacturer_model_name=identity.model_name(model), software_versions=f"triage {version}"[:64],
        content_date=now.date(), content_time=now.time().replace(microsecond=0))
    document.copy_patient_and_study_information(source.reference)
    document.ContributingEquipmentSequence = [identity.equipment(model, version)]
    document.ConversionType = "WSD"
    document.BurnedInAnnotation = "YES"  # the notice is on every page
    document.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    document.DocumentTitle = DOCUMENT_TITLE
    document.ConceptNameCodeSequence = []
    document.MIMETypeOfEncapsulatedDocument = "application/pdf"
    document.EncapsulatedDocumentLength = len(pdf)
    document.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    return document
