"""A case's verdict as a Comprehensive SR: highdicom's TID 1500 Measurement Report.

One measurement group (TID 1501) holds the case's score, with its top slices as
the source images, the threshold, and whether it is flagged; the algorithm's
identification (TID 4019) carries the model's id and the facts of its card; a
device observer (TID 1004) names the model; the research-use statement is a
text item of the report's qualitative evaluations. Every source instance is
listed as evidence, and the SR joins the source study.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage

from triage import RESEARCH_NOTICE
from triage.dicom_out import identity
from triage.dicom_out.source import Source
from triage.dicom_out.uids import derived_uid
from triage.results.records import CaseSummary, ScanResult

# Concepts without a standard code are this tool's own (a private coding scheme, as DICOM PS3.16 allows).
SCHEME = "99TRIAGE"
SCORE = hd.sr.CodedConcept("score", SCHEME, "Tumour score")
THRESHOLD = hd.sr.CodedConcept("threshold", SCHEME, "Decision threshold")
FLAGGED = hd.sr.CodedConcept("flagged", SCHEME, "Flagged for review")
UNFAMILIAR = hd.sr.CodedConcept("unfamiliar", SCHEME, "Unlike the training images (score not trusted)")
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def verdict_sr(case: CaseSummary, source: Source, result: ScanResult, version: str) -> hd.sr.ComprehensiveSR:
    """The SR of a scored DICOM case's verdict, in a new series of the source study."""
    model, uids = result.model, source.instance_uids
    first = source.headers[0]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=identity.device_uid(model), name=identity.model_name(model),
                manufacturer_name=identity.MANUFACTURER, model_name=model.id[:64]))),
        procedure_reported=codes.LN.BrainMRI,
        imaging_measurements=[_group(case, source, result)])
    report[0].ContentSequence.append(_research_statement())
    return hd.sr.ComprehensiveSR(
        evidence=[source.reference, *source.headers[1:]], content=report[0],
        series_instance_uid=derived_uid("sr-series", model.sha256, uids),
        series_number=identity.series_number("sr", first.get("SeriesNumber")),
        sop_instance_uid=derived_uid("sr", model.sha256, uids), instance_number=1,
        manufacturer=identity.MANUFACTURER, series_description=identity.series_description(
            "sr", str(first.get("SeriesDescription") or "")),
        contributing_equipment=[identity.equipment(model, version)],
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=SCHEME, name="triage codes", responsible_organization=identity.MANUFACTURER)])


def _group(case: CaseSummary, source: Source,
           result: ScanResult) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    unit = codes.UCUM.NoUnits
    top = [hd.sr.SourceImageForMeasurement(str(header.SOPClassUID), str(header.SOPInstanceUID))
           for header in _top_headers(case, source)]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("tracking", result.model.sha256, source.instance_uids),
            identifier=f"series {case.series_uid}"[:64]),
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=identity.model_name(result.model), version=result.model.version or "unknown",
            parameters=card_facts(result, case), manufacturer=identity.MANUFACTURER),
        measurements=[hd.sr.Measurement(SCORE, float(case.score or 0.0), unit, referenced_images=top or None),
                      hd.sr.Measurement(THRESHOLD, float(result.threshold), unit)],
        qualitative_evaluations=_evaluations(case))


def _evaluations(case: CaseSummary) -> list[hd.sr.QualitativeEvaluation]:
    """Flagged, yes or no; and unfamiliar, yes or no, where the familiarity check ran."""
    found = [hd.sr.QualitativeEvaluation(FLAGGED, codes.SCT.Yes if case.flagged else codes.SCT.No)]
    if case.unfamiliar is not None:
        answer = codes.SCT.Yes if case.unfamiliar else codes.SCT.No
        found.append(hd.sr.QualitativeEvaluation(UNFAMILIAR, answer))
    return found


def _top_headers(case: CaseSummary, source: Source) -> list[Dataset]:
    """The headers of the case's top slices' files (each once), highest first."""
    paths = dict.fromkeys(row.path for row in case.top if row.path in source.paths)
    return [source.header(path) for path in paths]


def card_facts(result: ScanResult, case: CaseSummary) -> list[str]:
    """The model's facts and the run's settings, as the algorithm's parameters."""
    model = result.model
    facts = [f"model id {model.id}", f"model sha256 {model.sha256}", f"threshold {result.threshold:g} "
             f"({model.threshold_source})", f"case score {case.aggregate}"
             + (f" of the top {result.top_k} slices" if case.aggregate == "topk" else " of its slices"),
             f"backbone weights {model.backbone_weights}", f"trained on {model.trained_on or 'not recorded'}"]
    for name, value in (("sensitivity", model.val_sensitivity), ("specificity", model.val_specificity)):
        if value is not None:
            facts.append(f"validation {name} {value[0]:.3f} "
                         f"(95% CI {value[1]:.3f}-{value[2]:.3f}, n={value[3]})")
    return facts


def _research_statement() -> hd.sr.ContainerContentItem:
    """TID 1500's qualitative evaluations: one text item, the research-use statement."""
    container = hd.sr.ContainerContentItem(name=_QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=RESEARCH_NOTICE,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)])
    return container


SOP_CLASS = ComprehensiveSRStorage
