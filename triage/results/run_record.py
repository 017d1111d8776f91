"""``run.json``: what a command ran, on what, and what it wrote; one shape for scan and evaluate.

Written last, so its presence says the run's other outputs are complete.
Every record has the same keys: ``schema_version``, ``command``, ``versions``,
``model``, ``threshold``, ``precision``, ``precision_auto``, ``margin`` (the fp32 safety
net's logit margin of a reduced precision, else null), ``device``, ``counts``, ``started_at``,
``finished_at``, ``seconds``, ``outputs``; a command adds its own settings.
"""

from __future__ import annotations

from typing import Any

from triage.model.summary import ModelSummary

RUN_SCHEMA_VERSION = 1
RUN_FILE = "run.json"


def run_record(command: str, model: ModelSummary, *, threshold: float, versions: dict[str, str],
               counts: dict[str, int], started_at: str, finished_at: str, seconds: float,
               outputs: dict[str, str | None], **settings: Any) -> dict[str, Any]:
    """The content of ``run.json`` of ``command``; ``settings`` follow the common keys."""
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "command": command,
        "versions": versions,
        "model": {"id": model.id, "path": model.path, "sha256": model.sha256,
                  "calibration_sha256": model.calibration_sha256,
                  "backbone_weights": model.backbone_weights, "image_size": model.image_size},
        "threshold": threshold,
        "precision": model.precision,
        "precision_auto": model.auto_precision,
        "margin": model.margin,
        "device": model.device,
        "counts": counts,
        "started_at": started_at,
        "finished_at": finished_at,
        "seconds": round(seconds, 3),
        "outputs": outputs,
        **settings,
    }
