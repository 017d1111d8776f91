"""The calibration map: the network's raw output turned into a probability that means what it says.

Platt scaling (scikit-learn's sigmoid calibration, with Platt's priors so that
well-separated scores keep a finite slope) of the raw output's logit:

    probability = 1 / (1 + exp(-(slope * ln(raw / (1 - raw)) + intercept)))

It is fitted on out-of-fold predictions of the training part and kept beside
``model.keras`` as :data:`CALIBRATION_FILE`; ``model.keras`` alone still gives
the raw output. With a positive slope the map is strictly increasing, so a
threshold moved through it flags exactly the images it flagged before. Isotonic
regression is not used: its flat steps tie scores on both sides of a threshold
(decisions would change), and it needs hundreds of images per class.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from triage.errors import ModelError
from triage.outputs.atomic import atomic_write_text

if TYPE_CHECKING:
    import numpy as np

CALIBRATION_FILE = "calibration.json"
FORMULA = "probability = 1 / (1 + exp(-(slope * ln(raw / (1 - raw)) + intercept)))"
# The raw output is kept this far from 0 and 1, so that its logit is finite (float32 outputs of
# exactly 0 or 1 only).
EPSILON = 1e-15


@dataclass(frozen=True)
class CalibrationMap:
    """A fitted Platt map: ``slope`` > 0, ``intercept``, and the images it was fitted on.

    numpy and scipy are imported inside the functions: the model card names this
    class, and the report imports the card without them.
    """

    slope: float
    intercept: float
    fitted_on: int  # out-of-fold predictions of the training part
    method: str = "platt"
    formula: str = FORMULA

    def apply(self, raw: np.ndarray | float) -> np.ndarray:
        """Calibrated probabilities of raw network outputs (float64)."""
        from scipy.special import expit

        return expit(self.slope * _logit(raw) + self.intercept)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def fit_calibration(raw: np.ndarray, labels: np.ndarray) -> CalibrationMap | None:
    """Platt scaling of raw outputs against 0/1 labels; None when the fit does not increase.

    A slope <= 0 means the scores do not rank tumours higher; no map is better
    than one that reverses or flattens the scores.
    """
    import numpy as np
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    class RawOutput(ClassifierMixin, BaseEstimator):
        """The raw output as a fitted classifier whose decision function is its logit."""

        def fit(self, x: np.ndarray, y: np.ndarray) -> "RawOutput":
            self.classes_ = np.array([0, 1])
            return self

        def decision_function(self, x: np.ndarray) -> np.ndarray:
            return _logit(np.asarray(x)[:, 0])

        def predict(self, x: np.ndarray) -> np.ndarray:
            return (self.decision_function(x) >= 0).astype(np.int64)

    x = np.asarray(raw, dtype=np.float64).reshape(-1, 1)
    y = np.asarray(labels, dtype=np.int64)
    fitted = CalibratedClassifierCV(FrozenEstimator(RawOutput().fit(x, y)), method="sigmoid").fit(x, y)
    sigmoid = fitted.calibrated_classifiers_[0].calibrators[0]
    # scikit-learn's sigmoid is 1 / (1 + exp(a * f + b)), f the decision function.
    slope, intercept = -float(sigmoid.a_), -float(sigmoid.b_)
    if not (math.isfinite(slope) and math.isfinite(intercept) and slope > 0):
        return None
    return CalibrationMap(slope, intercept, fitted_on=len(y))


def _logit(raw: np.ndarray | float) -> np.ndarray:
    import numpy as np
    from scipy.special import logit

    return logit(np.clip(np.asarray(raw, dtype=np.float64), EPSILON, 1 - EPSILON))


def write_calibration(calibration: CalibrationMap, folder: Path) -> None:
    atomic_write_text(folder / CALIBRATION_FILE, calibration.to_json())


def read_calibration(folder: Path) -> CalibrationMap | None:
    """The calibration map of a model folder; None when it has none (a model trained before them).

    Raises:
        ModelError: the file is unreadable or does not hold an increasing map.
    """
    path = folder / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        calibration = CalibrationMap(slope=float(raw["slope"]), intercept=float(raw["intercept"]),
                                     fitted_on=int(raw["fitted_on"]), method=str(raw["method"]))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"Calibration map {path} cannot be read ({exc}): train the model again.") from exc
    if calibration.method != "platt" or not (math.isfinite(calibration.slope) and calibration.slope > 0
                                             and math.isfinite(calibration.intercept)):
        raise ModelError(f"Calibration map {path} is not an increasing Platt map: train the model again.")
    return calibration
