"""What every object says about its maker: the contributing equipment, the research-use wording, the series.

The equipment follows IHE AI Results: an item of the Contributing Equipment
Sequence with the purpose "Processing Equipment" that names this tool and the
model (its name, version and sha256).
"""

from __future__ import annotations

import datetime as dt

import highdicom as hd
from pydicom.sr.codedict import codes

from triage import RESEARCH_NOTICE
from triage.dicom_out.uids import derived_uid
from triage.model.summary import ModelSummary

MANUFACTURER = "triage"
BURNED_IN_NOTICE = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
# Series numbers of the new series, one range per kind (the source series' number is added).
SERIES_NUMBERS = {"sr": 9000, "overlay": 9500, "pdf": 9999}
_SERIES_TITLES = {"sr": "verdict", "overlay": "Grad-CAM", "pdf": "report"}
_LONG_STRING = 64  # characters of a DICOM LO value


def model_name(model: ModelSummary) -> str:
    """The algorithm's name as objects give it: the tool and the model's id."""
    return f"triage {model.id}"[:_LONG_STRING]


def device_uid(model: ModelSummary) -> str:
    """One UID per model (derived from its sha256): the device that observed, in the SR."""
    return derived_uid("device", model.sha256, ())


def equipment(model: ModelSummary, version: str) -> hd.ContributingEquipment:
    """The Contributing Equipment item of this tool and model (IHE AI Results)."""
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model_name(model),
        software_versions=[f"triage {version}"[:_LONG_STRING], f"model {model.id}"[:_LONG_STRING]],
        device_serial_number=model.sha256[:_LONG_STRING],
        contribution_datetime=dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        contribution_description=(f"Brain MRI tumour triage by triage {version}, model {model.id} "
                                  f"(sha256 {model.sha256}). {RESEARCH_NOTICE}"))
    return item


def series_description(kind: str, source_description: str = "") -> str:
    """``RESEARCH ONLY triage verdict: T2 AX`` (at most 64 characters)."""
    text = f"RESEARCH ONLY triage {_SERIES_TITLES[kind]}"
    return (f"{text}: {source_description}" if source_description else text)[:_LONG_STRING]


def series_number(kind: str, source_number: object = None) -> int:
    """The new series' number: its kind's range plus the source series' number (below 500)."""
    try:
        offset = int(source_number) % 500  # type: ignore[call-overload]
    except (TypeError, ValueError):
        offset = 0
    return SERIES_NUMBERS[kind] + (0 if kind == "pdf" else offset)
