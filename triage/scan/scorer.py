"""Cases scored through the one batched predictor, and Grad-CAM for the slices a report shows.

The predictor's items are the slices of the cases to score, case after case
(each names its case; the decoder and the scorer hold the cases, so an item
costs the same however long its series is). A
forward pass gives each slice its probability and its activations at the CAM
layer. While a case is in flight it keeps the activations and display copies
of its ``top_k`` highest slices only; once its last slice is in, its score
decides whether those slices get heat maps (``explain="flagged"``; a loose
image is a case of one slice). ``"all"`` explains every slice, ``"none"`` none.
Heat maps are computed for a batch of slices per Grad-CAM call (:class:`CamQueue`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from triage.engine.gradcam import NOT_FINITE, usable
from triage.engine.heatmaps import HeatmapWriter
from triage.engine.inference import InferenceModel
from triage.engine.predictor import Outcome, ScanImage, Stop, predict
from triage.engine.ray_data import RaySettings, model_spec, ray_predict
from triage.engine.safety import Scored, fast_run, rescored
from triage.inputs.cases import Case, case_score, case_window
from triage.inputs.discovery import FoundFile
from triage.results.records import Row
from triage.scan.jobs import Job, SliceDecoder, jobs_of
from triage.scan.plan import NOT_IMAGES, Plan, RowKey, case_fields
from triage.scan.verdicts import slice_rank


@dataclass(frozen=True, eq=False)
class Kept:
    """A scored slice that may get a heat map: its row, display copy and activations, and its job (to
    decode its display copy again where the Ray engine sent none)."""

    row: Row
    image: ScanImage
    activation: np.ndarray
    job: Job | None = None


class CamQueue:
    """Slices waiting for heat maps; ``size`` of them at a time go through one Grad-CAM call."""

    def __init__(self, model: InferenceModel, writer: HeatmapWriter, rows: dict[RowKey, Row],
                 size: int, redisplay: Callable[[Job], np.ndarray]) -> None:
        self.model, self.writer, self.rows, self.size = model, writer, rows, size
        self.redisplay = redisplay
        self.pending: list[Kept] = []

    def add(self, kept: Kept) -> None:
        self.pending.append(kept)
        if len(self.pending) >= self.size:
            self.flush()

    def show(self, kept: Kept) -> None:
        """The slice's display copy alone, for a report card without a heat map."""
        original = self.writer.submit_image(kept.image.sha256, self._display(kept), _image_part(kept.row))
        self.rows[kept.row.key] = replace(self.rows[kept.row.key], original=original)

    def _display(self, kept: Kept) -> np.ndarray:
        """The slice's display copy; decoded again where the Ray engine sent none."""
        if kept.image.display is None and kept.job is not None:
            return self.redisplay(kept.job)
        return kept.image.display

    def flush(self) -> None:
        """Heat maps for the pending slices; a map that is not finite leaves its row without one, noted."""
        if not self.pending:
            return
        kept_arrays = np.stack([kept.activation for kept in self.pending])
        # Activations (local engine) or maps an actor already made from them (Ray engine).
        maps = self.model.gradcam.heatmaps(kept_arrays) if kept_arrays.ndim == 4 else kept_arrays
        for kept, cam in zip(self.pending, maps):
            key = kept.row.key
            if usable(cam):
                heatmap, original = self.writer.submit(kept.image.sha256, self._display(kept), cam,
                                                       _image_part(kept.row))
                self.rows[key] = replace(self.rows[key], heatmap=heatmap, original=original)
            else:
                self.rows[key] = replace(self.rows[key], heatmap_note=NOT_FINITE)
        self.pending = []


@dataclass
class InFlight:
    """A case being scored: slices still to come, probabilities so far, its highest slices."""

    remaining: int
    top_k: int
    probabilities: list[float] = field(default_factory=list)
    familiarity: list[bool] = field(default_factory=list)  # each checked slice: unfamiliar?
    top: list[Kept] = field(default_factory=list)

    @property
    def unfamiliar(self) -> bool:
        """Most of its checked slices are unfamiliar (as :func:`triage.scan.verdicts.case_verdict`)."""
        return 2 * sum(self.familiarity) > len(self.familiarity) > 0

    def offer(self, row: Row, image: ScanImage, activation: np.ndarray, job: Job) -> None:
        """Keep the slice if it is among the ``top_k`` highest so far (a copy of its activations)."""
        if len(self.top) == self.top_k and slice_rank(row) >= slice_rank(self.top[-1].row):
            return
        self.top.append(Kept(row, image, np.array(activation), job))
        self.top.sort(key=lambda kept: slice_rank(kept.row))
        del self.top[self.top_k:]


def _image_part(row: Row) -> str:
    """What tells apart the heat maps of one file's images: the frame, else the slice."""
    part = row.frame if row.frame is not None else row.slice_index
    return "" if part is None else f"-{part}"


class CaseScorer:
    """Turns the predictor's outcomes into rows, and asks for heat maps as cases complete.

    Args:
        model: The model.
        explain: ``flagged``, ``all`` or ``none``.
        threshold: Flags a slice's row and a case.
        aggregate, top_k: A case's score (:func:`triage.inputs.cases.case_score`); ``top_k``
            is also how many slices of a flagged case get heat maps.
        cases: The cases to score, by id.
        writer: Writes heat maps (None: none are made).
        files: discover()'s rows by path (size and mtime of each row).
        rows: Where rows go, by key.
        batch_size: Slices per Grad-CAM call.
    """

    def __init__(self, model: InferenceModel, *, explain: str, threshold: float, aggregate: str, top_k: int,
                 cases: dict[str, Case], writer: HeatmapWriter | None, files: dict[str, FoundFile],
                 rows: dict[RowKey, Row], batch_size: int) -> None:
        self.model, self.explain, self.threshold = model, explain, threshold
        self.aggregate, self.top_k = aggregate, top_k
        self.cases, self.files, self.rows = cases, files, rows
        self.decode = SliceDecoder(model.image_size, display=writer is not None, cases=cases)
        self.cams = (CamQueue(model, writer, rows, batch_size, self.decode.display_copy)
                     if writer is not None else None)
        self.in_flight: dict[str, InFlight] = {}
        self._run = fast_run(model, threshold, keep_activations=self.cams is not None)

    def run(self, batch: np.ndarray, n: int) -> list[Scored]:
        """Each row's probability and, when heat maps may be made, its activations; rows near the
        threshold marked for the fp32 safety net."""
        return self._run(batch, n)

    def take(self, outcome: Outcome[Job]) -> None:
        """Record a slice's row; finish its case when it was the last."""
        case = self.cases[outcome.item.slice.case_id]
        row = self._row(outcome, case)
        self.rows[row.key] = row
        flight = self.in_flight.setdefault(case.case_id, InFlight(len(case.slices), self.top_k))
        flight.remaining -= 1
        if row.ok and row.probability is not None:
            flight.probabilities.append(row.probability)
            if row.unfamiliar is not None:
                flight.familiarity.append(row.unfamiliar)
            if self.cams is not None:
                image, activation = outcome.extra, outcome.output.activation
                if self.explain == "all":
                    self.cams.add(Kept(row, image, np.array(activation), outcome.item))
                else:
                    flight.offer(row, image, activation, outcome.item)
        if flight.remaining == 0:
            self._finish(case.case_id)

    def close(self) -> None:
        """Finish the cases a stop left part-scored, and the heat maps still queued."""
        for case_id in list(self.in_flight):
            self._finish(case_id)
        if self.cams is not None:
            self.cams.flush()

    def _finish(self, case_id: str) -> None:
        flight = self.in_flight.pop(case_id)
        if self.cams is None or self.explain != "flagged" or not flight.probabilities:
            return
        if case_score(flight.probabilities, self.aggregate, self.top_k) >= self.threshold:
            for kept in flight.top:
                self.cams.add(kept)
        elif flight.unfamiliar and flight.top:
            self.cams.show(flight.top[0])  # shown as it is: a heat map explains a score not trusted

    def _row(self, outcome: Outcome[Job], case: Case) -> Row:
        job = outcome.item
        item = self.files[job.slice.relpath]
        fields = dict(size=item.size, mtime_ns=item.mtime_ns, **case_fields(case, job.slice))
        failure = outcome.failure
        if failure is not None:
            if case.kind == "image" and failure.status in NOT_IMAGES:
                fields["case_id"] = None  # no image at all: no case
            return Row(item.relpath, failure.status, sha256=failure.sha256, reason=failure.reason,
                              **fields)
        scored: Scored = outcome.output  # from either engine: the network's output, of the pass that decided
        probability = float(self.model.calibrate(scored.probability))
        image: ScanImage = outcome.extra
        distance = scored.ood_distance
        return Row(item.relpath, "ok", sha256=image.sha256, probability=probability,
                   raw_probability=scored.probability, flagged=probability >= self.threshold,
                   width=image.width, height=image.height, format=image.format, ood_distance=distance,
                   unfamiliar=None if distance is None else distance > 1.0, precision=scored.precision,
                   **fields)


def score_cases(plan: Plan, scorer: CaseScorer, *, batch_size: int, stop: Stop,
                progress: Callable[[int], None] | None, ray: RaySettings | None = None) -> None:
    """Score the slices of ``plan.to_score`` in one stream of full batches; rows go into ``scorer.rows``.

    Locally through :func:`triage.engine.predictor.predict`, or on Ray Data (``ray``) through
    :func:`triage.engine.ray_data.ray_predict`: the same jobs, decoder and outcomes.
    """
    # On Ray the driver measures each windowless case's window once and sends it with the jobs;
    # locally the decoder measures it once per case, when its first slice decodes.
    measure = ray is not None
    jobs: Sequence[Job] = [job for case in plan.to_score for job in jobs_of(
        case, case_window(case) if measure and case.kind != "image" and case.window is None else None)]
    if ray is None:
        outcomes = rescored(predict(jobs, scorer.decode, scorer.run, batch_size=batch_size, stop=stop,
                                    progress=progress), scorer.model, batch_size)
    else:
        # The decode tasks send no display copies (0.4 MB each, most for rows that get no card):
        # the driver decodes again the few slices whose heat maps it writes.
        spec = model_spec(scorer.model, scorer.threshold, scorer.explain)
        outcomes = ray_predict(jobs, scorer.decode.without_display(), spec, batch_size=batch_size,
                               settings=ray, stop=stop, progress=progress)
    for outcome in outcomes:
        scorer.take(outcome)
    scorer.close()
