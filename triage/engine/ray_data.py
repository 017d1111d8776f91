"""The scan on Ray Data: decoding in CPU tasks, scoring in model actors, outcomes back in order.

Another executor of the one batched predictor (:func:`triage.engine.predictor.predict`):
it takes the same items and the same decode function, and yields the same
:class:`~triage.engine.predictor.Outcome` objects in the same order, so the driver
writes rows, heat maps, CSVs, report, state and ``run.json`` exactly as the
local engine does. Decode tasks never import TensorFlow; each actor loads the
model once. Every batch an actor runs is padded to ``batch_size``, as the local
engine pads, so a file gets the same probability on either engine, and the rows
near the threshold of a reduced precision are scored again in fp32 within the
batch (:func:`triage.engine.safety.checked_batch`). Unless heat maps are off, an
actor computes the Grad-CAM map of every image (they are small, and cheap from the
activations in hand); the driver keeps those the report shows.

Each item is one slice's job, with its series' window, never its whole case. The
model input crosses from the decode tasks to the actors as float32 (the exact
bilinear resize: rounding it to uint8 would move probabilities); display copies
do not travel (the driver decodes the few it shows, see :mod:`triage.scan.scorer`).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from triage.engine.predictor import Decoded, Outcome, Stop, classify_failure
from triage.errors import ModelError, UsageError
from triage.quiet import native_lines_to_log

T = TypeVar("T")
INSTALL_HINT = "pip install 'triage[ray]'"
DECODE_CPUS = 0.5
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide: a running cluster's address (None: a local Ray for this run), actors, GPUs."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0

    def validate(self) -> None:
        if self.workers < 1:
            raise UsageError(f"The number of workers must be at least 1, got {self.workers}.",
                             option="workers")
        if self.gpus_per_worker < 0:
            raise UsageError(f"GPUs per worker must be 0 or more, got {self.gpus_per_worker}.",
                             option="gpus_per_worker")


@dataclass(frozen=True)
class ModelSpec:
    """What an actor needs to load the model the driver loaded."""

    folder: Path
    device: str
    precision: str
    cam_layer: str
    image_size: int
    threshold: float = 0.5  # where the fp32 safety net looks (a reduced precision)
    heatmaps: bool = True  # False: no Grad-CAM map is computed (--explain none)
    familiarity: bool = True


def model_spec(model: Any, threshold: float, explain: str = "flagged") -> ModelSpec:
    """What the actors load: the driver's model folder and CAM layer, on the device and at the
    precision its summary records (see :meth:`RaySession.resolve`), with its familiarity check."""
    return ModelSpec(model.folder, model.summary.device, model.summary.precision, model.gradcam.layer_name,
                     model.image_size, threshold, explain != "none", model.familiarity is not None)


def require_ray() -> Any:
    """The ray module, or one sentence on how to install it.

    Raises:
        UsageError: Ray is not installed.
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise UsageError(f"The Ray engine needs Ray Data, which is not installed: {INSTALL_HINT}.",
                         option="engine") from err
    return ray


def _decode_batch(batch: dict[str, np.ndarray], decode: Callable[[Any], Decoded],
                  image_size: int) -> dict[str, Any]:
    """A CPU task's work: unpickle each item, decode it, keep what the actor and the driver need."""
    pixels = np.zeros((len(batch["item"]), image_size, image_size, 3), np.float32)
    ok = np.zeros(len(batch["item"]), dtype=bool)
    results = []
    for row, blob in enumerate(batch["item"]):
        try:
            decoded = decode(pickle.loads(blob))
            if decoded.pixels is not None:
                pixels[row], ok[row] = decoded.pixels, True
            results.append(pickle.dumps((decoded.extra, None)))
        except Exception as error:  # the same classification as the local engine's
            results.append(pickle.dumps((None, classify_failure(error))))
    return {"index": batch["index"], "pixels": pixels, "ok": ok, "result": np.array(results, dtype=object)}


class Score:
    """A model actor: loads the model once; per batch, probabilities (rows near the threshold decided
    by the fp32 safety net, see :func:`triage.engine.safety.checked_batch`) and Grad-CAM maps."""

    def __init__(self, spec: ModelSpec, batch_size: int) -> None:
        # In the actor: GPU memory grows (see triage.model.network.use_device).
        from triage.engine.inference import load_for_inference

        self.batch_size, self.threshold, self.heatmaps = batch_size, spec.threshold, spec.heatmaps
        try:
            self.model, self.failure = load_for_inference(spec.folder, spec.device, spec.cam_layer,
                                                          spec.precision, spec.familiarity), None
        except (UsageError, ModelError) as error:
            # Raised with the first batch, so the driver gets it typed (see _worker_failure),
            # not as the traceback of an actor that died starting.
            self.model, self.failure = None, error

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.failure is not None:
            raise self.failure
        inputs, n = batch["pixels"], len(batch["pixels"])
        if n < self.batch_size:
            inputs = np.concatenate([inputs, np.zeros((self.batch_size - n, *inputs.shape[1:]), np.float32)])
        from triage.engine.safety import checked_batch

        activations, probabilities, distances, precisions = checked_batch(self.model, self.threshold,
                                                                          inputs, n)
        # A map that is not finite comes back NaN; with --explain none no map is made.
        maps = (self.model.gradcam.heatmaps(activations) if self.heatmaps
                else np.zeros((n, 1, 1), np.float32))
        far = np.full(n, np.nan) if distances is None else distances
        return {**batch, "pixels": np.zeros(n, np.uint8), "probability": probabilities, "cam": maps,
                "ood": far, "precision": np.array(precisions, dtype=object)}


class RaySession:
    """Ray for one run: joins ``address``, or starts a local instance and stops it after."""

    def __init__(self, settings: RaySettings) -> None:
        self.settings = settings
        self.started = False

    def __enter__(self) -> "RaySession":
        ray = require_ray()
        _route_ray_logs()
        if not ray.is_initialized():
            # A local instance gets a CPU slot beyond the actors' for the decode tasks; a cluster
            # brings its own (each actor reserves one CPU there).
            cpus = None if self.settings.address else max(os.cpu_count() or 1, self.settings.workers + 1)
            with native_lines_to_log("ray"):
                ray.init(address=self.settings.address, num_cpus=cpus, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
            self.started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            require_ray().shutdown()

    def resolve(self, device: str, precision: str, card: Any) -> tuple[str, str]:
        """The device and precision the actors will run: decided here, before the scan, because the
        run's records (``run.json``, the report, the incremental state) depend on them.

        The actors run on GPUs exactly when they reserve some (``--gpus-per-worker``);
        ``auto`` precision is then the fastest the card has a measured margin for (see
        :func:`~triage.model.network.choose_precision`), judged by the driver's CPU. Each
        actor checks on its own machine that it can (a GPU it sees, bf16 a CPU does natively).

        Raises:
            UsageError: the request contradicts the reservation, or the cluster lacks
                the CPUs or GPUs the workers reserve (the run would wait forever).
        """
        from triage.engine.inference import measured_precisions
        from triage.model.network import choose_precision

        gpus, workers = self.settings.gpus_per_worker, self.settings.workers
        if device == "gpu" and not gpus:
            raise UsageError("The Ray engine runs on GPUs only when the workers reserve them: "
                             "give GPUs per worker.", option="gpus_per_worker")
        if device == "cpu" and gpus:
            raise UsageError("The workers would reserve GPUs and run on their CPUs: "
                             "give no GPUs per worker, or choose the GPU device.", option="device")
        have = require_ray().cluster_resources()
        if gpus * workers > have.get("GPU", 0):
            raise UsageError(f"{workers} worker(s) at {gpus:g} GPU each need {gpus * workers:g} GPU(s), but "
                             f"the Ray cluster has {have.get('GPU', 0):g}.", option="gpus_per_worker")
        if workers + DECODE_CPUS > have.get("CPU", 0):
            raise UsageError(f"{workers} worker(s) and the decoding need {workers + DECODE_CPUS:g} CPUs, but "
                             f"the Ray cluster has {have.get('CPU', 0):g}.", option="workers")
        on_gpu = gpus > 0
        measured = measured_precisions(card, precision)
        if precision == "bf16" and not on_gpu:  # each actor checks its own CPU, not the driver's:
            return "cpu", choose_precision("bf16", True, measured)  # here only the card's margin
        return "gpu" if on_gpu else "cpu", choose_precision(precision, on_gpu, measured)


def _route_ray_logs() -> None:
    """Ray's own log lines go where triage's library messages go (the log file), not to stderr."""
    for name in ("ray", "ray.data"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.WARNING)


def ray_predict(items: Sequence[T], decode: Callable[[T], Decoded], model: ModelSpec, *,
                batch_size: int, settings: RaySettings, stop: Stop | None = None,
                progress: Callable[[int], None] | None = None) -> Iterator[Outcome[T]]:
    """Score ``items`` on Ray Data; one outcome per item, in input order.

    ``output`` of an outcome is a :class:`~triage.engine.safety.Scored` whose ``activation`` is
    the row's Grad-CAM map.
    """
    stop = stop or Stop()
    report = progress or (lambda n: None)
    if not items:
        return
    ray = require_ray()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.raise_original_map_exception = True  # an actor's refusal arrives typed, see _worker_failure
    rows = [{"index": i, "item": pickle.dumps(item)} for i, item in enumerate(items)]
    data = ray.data.from_items(rows)
    # Its own CPU request keeps decoding in tasks of its own (Ray fuses a task into the next
    # actor when their requests match), where TensorFlow is never imported.
    decoded = data.map_batches(_decode_batch, fn_args=(decode, model.image_size), batch_size=batch_size,
                               batch_format="numpy", num_cpus=DECODE_CPUS)
    # Ray Data restarts an actor that dies and retries its batch (its defaults for actors).
    scored = decoded.map_batches(Score, fn_constructor_args=(model, batch_size), batch_size=batch_size,
                                 batch_format="numpy", num_cpus=1,
                                 num_gpus=settings.gpus_per_worker or None,
                                 compute=ray.data.ActorPoolStrategy(size=settings.workers))
    try:
        with native_lines_to_log("ray"):  # the actors start with the first batch
            batches = iter(scored.iter_batches(batch_size=batch_size, batch_format="numpy"))
            first = next(batches, None)
        for batch in itertools.chain([first] if first is not None else [], batches):
            if stop.should_stop():
                stop.asked = True
                return
            yield from _outcomes(items, batch)
            report(len(batch["index"]))
    except ray.exceptions.RayTaskError as error:
        raise _worker_failure(error) from error


def _worker_failure(error: Any) -> BaseException:
    """An actor's refusal (no GPU there, a precision its CPU can't run) as the same typed error
    with the same one sentence the local engine gives; anything else as Ray raised it."""
    cause = error.cause
    if not isinstance(cause, (UsageError, ModelError)):
        return error
    said = str(cause).splitlines()[0]  # Ray Data appends lines on retries to the message
    return type(cause)(f"On a Ray worker: {said}", option=cause.option)


def _outcomes(items: Sequence[T], batch: dict[str, np.ndarray]) -> Iterator[Outcome[T]]:
    from triage.engine.safety import Scored

    for index, ok, blob, probability, cam, far, precision in zip(
            batch["index"], batch["ok"], batch["result"], batch["probability"], batch["cam"], batch["ood"],
            batch["precision"]):
        extra, failure = pickle.loads(blob)
        item = items[int(index)]
        if failure is not None:
            yield Outcome(item, failure=failure)
        elif not ok:
            yield Outcome(item, extra=extra)
        else:
            distance = None if np.isnan(far) else float(far)
            yield Outcome(item, extra=extra, output=Scored(float(probability), cam, str(precision),
                                                           ood_distance=distance))

