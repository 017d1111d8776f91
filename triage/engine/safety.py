"""The fp32 safety net of a reduced precision: rows near the threshold are scored again in fp32.

A bf16, fp16 or int8 forward pass moves a probability a little. Where that little can
cross the threshold (the fast logit within the card's measured ``margin`` of the
threshold's logit, see ``triage precisions``), the row is scored again by the fp32
network, and the fp32 pass decides it: its probability, its activations (so its heat
map) and its ``precision`` column. Every other row keeps the fast pass's results. So
a run's decisions are fp32's, at the fast precision's speed for all but the rows near
the threshold.

The local engine gathers the rows to re-score into full batches (:func:`rescored`),
padded to the batch size like every batch, so a re-scored row gets the very bits an
fp32 run gives it. A Ray actor re-scores the rows of each batch it runs
(:func:`checked_batch`), also in one padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

import numpy as np

from triage.engine.inference import InferenceModel
from triage.engine.predictor import Outcome

_EDGE = 1e-7  # probabilities are clipped this far inside (0, 1) before their logit: 0 and 1 are infinite


@dataclass(frozen=True, eq=False)
class Scored:
    """One row's result.

    Attributes:
        probability: Of the pass that decided it.
        activation: Its activations at the CAM layer from that pass (or, from a Ray actor, its
            Grad-CAM map); None when no heat map can be made.
        precision: The precision of that pass: the run's, or ``fp32`` for a row the net re-scored.
        retry: The model input of a row waiting to be re-scored in fp32; None otherwise.
        ood_distance: Its familiarity distance from that pass's pooled features; None unchecked.

    ``probability`` is the network's raw output; the threshold is on the calibrated scale
    (:meth:`InferenceModel.calibrate`), which keeps the order of raw outputs.
    """

    probability: float
    activation: np.ndarray | None
    precision: str
    retry: np.ndarray | None = None
    ood_distance: float | None = None


def logit(probabilities: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EDGE, 1 - _EDGE)
    return np.log(p) - np.log1p(-p)


def near_threshold(model: InferenceModel, probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Which rows the fp32 pass must decide: those whose decision could change were their raw logit
    anywhere within the margin of the fast one (the calibration map keeps the order of raw outputs,
    so the two ends of that interval tell)."""
    if model.exact is None or model.margin is None:
        return np.zeros(len(probabilities), dtype=bool)
    z = logit(probabilities)
    low, high = (model.calibrate(1 / (1 + np.exp(-(z + shift)))) for shift in (-model.margin, model.margin))
    return (np.asarray(high) >= threshold) & (np.asarray(low) < threshold)


def fast_run(model: InferenceModel, threshold: float,
             keep_activations: bool) -> Callable[[np.ndarray, int], list[Scored]]:
    """The predictor's ``run``: the run's pass, with the rows near the threshold marked for fp32."""

    def run(batch: np.ndarray, n: int) -> list[Scored]:
        activations, probabilities, distances = model.score(batch)
        near = near_threshold(model, probabilities[:n], threshold)
        kept = np.asarray(activations, dtype=np.float32) if keep_activations else None
        return [Scored(float(p), None if kept is None else kept[row], model.precision,
                       np.array(batch[row]) if near[row] else None, _distance(distances, row))
                for row, p in enumerate(probabilities[:n])]

    return run


def rescored(outcomes: Iterable[Outcome], model: InferenceModel, batch_size: int) -> Iterator[Outcome]:
    """The outcomes, those marked for fp32 re-scored in full batches (so they may come later)."""
    waiting: list[Outcome] = []
    for outcome in outcomes:
        if isinstance(outcome.output, Scored) and outcome.output.retry is not None:
            waiting.append(outcome)
            if len(waiting) == batch_size:
                yield from _exact(waiting, model, batch_size)
                waiting = []
        else:
            yield outcome
    if waiting:
        yield from _exact(waiting, model, batch_size)


def _exact(waiting: list[Outcome], model: InferenceModel, batch_size: int) -> Iterator[Outcome]:
    inputs = np.stack([outcome.output.retry for outcome in waiting])
    activations, probabilities, distances = _exact_pass(model, inputs, batch_size)
    for row, outcome in enumerate(waiting):
        keep = outcome.output.activation is not None
        yield replace(outcome, output=Scored(float(probabilities[row]), activations[row] if keep else None,
                                             "fp32", ood_distance=_distance(distances, row)))


def _distance(distances: np.ndarray | None, row: int) -> float | None:
    return None if distances is None else float(distances[row])


def _exact_pass(model: InferenceModel, inputs: np.ndarray,
                batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The fp32 pass over ``inputs``, padded to ``batch_size`` as every batch is."""
    n = len(inputs)
    if n < batch_size:
        inputs = np.concatenate([inputs, np.zeros((batch_size - n, *inputs.shape[1:]), inputs.dtype)])
    activations, probabilities, distances = model.score(inputs, exact=True)
    return (np.asarray(activations, dtype=np.float32)[:n], probabilities[:n],
            None if distances is None else np.asarray(distances)[:n])


def checked_batch(model: InferenceModel, threshold: float, inputs: np.ndarray, n: int,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """One padded batch through the run's pass, its rows near the threshold again through fp32.

    Returns:
        The activations (float32), raw outputs and ``ood_distance`` (None unchecked) of the first
        ``n`` rows, and the precision that decided each.
    """
    activations, probabilities, distances = model.score(inputs)
    activations = np.array(activations, dtype=np.float32)[:n]
    probabilities = np.array(probabilities[:n])
    distances = None if distances is None else np.array(distances[:n], dtype=np.float64)
    precisions = [model.precision] * n
    near = np.flatnonzero(near_threshold(model, probabilities, threshold))
    if near.size:
        exact = _exact_pass(model, inputs[near], len(inputs))
        activations[near], probabilities[near] = exact[0], exact[1]
        if distances is not None and exact[2] is not None:
            distances[near] = exact[2]
        for row in near:
            precisions[row] = "fp32"
    return activations, probabilities, distances, precisions
