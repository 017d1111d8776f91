"""Scoring a folder: discover -> predict (one forward pass per batch) -> explain -> collect.

This module knows nothing of where results are written; :mod:`triage.run`
owns the outputs (paths, lock, incremental state, manifest).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from triage.errors import UsageError
from triage.heatmaps import HeatmapWriter
from triage.images import FoundFile, discover
from triage.inference import InferenceModel, library_versions
from triage.model import CAM_LAYER
from triage.predictor import Decoded, Outcome, ScanImage, Stop, decode_image, predict
from triage.results import CaseResult, ScanResult

EXPLAIN_CHOICES = ("flagged", "all", "none")


@dataclass(frozen=True)
class ScanOptions:
    """Settings of a scan; ``threshold`` None means the model card's threshold."""

    threshold: float | None = None
    explain: str = "flagged"
    batch_size: int = 16
    cam_layer: str = CAM_LAYER
    device: str = "auto"  # auto | cpu | gpu
    precision: str = "auto"  # auto | fp32 | bf16 | fp16, see triage.model.choose_precision

    def validate(self) -> None:
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise UsageError(f"The threshold must be in [0, 1], got {self.threshold}.", option="threshold")
        if self.explain not in EXPLAIN_CHOICES:
            raise UsageError(f"Explain must be one of {', '.join(EXPLAIN_CHOICES)}.", option="explain")
        if self.batch_size < 1:
            raise UsageError(f"The batch size must be at least 1, got {self.batch_size}.",
                             option="batch_size")


@dataclass
class Plan:
    """What discovery decided: rows known without reading, and the files to score."""

    found: list[FoundFile]
    cases: dict[str, CaseResult] = field(default_factory=dict)
    to_read: list[FoundFile] = field(default_factory=list)


def plan_scan(found: list[FoundFile], reuse: dict[str, CaseResult], report_dir: Path) -> Plan:
    """Files that must not be read keep their status, unchanged ones their previous row."""
    plan = Plan(found)
    for item in found:
        old = reuse.get(item.relpath)
        if item.status is not None:
            plan.cases[item.relpath] = CaseResult(item.relpath, item.status, reason=item.reason)
        elif old is not None and _unchanged(old, item, report_dir):
            plan.cases[item.relpath] = replace(old, new=False)
        else:
            plan.to_read.append(item)
    return plan


def _unchanged(old: CaseResult, item: FoundFile, report_dir: Path) -> bool:
    """A previous ``ok`` row still holds: same size and mtime, and its images are still there.

    A failed row is never carried over: a permission fixed or a decoder installed
    since may let the same bytes be read now.
    """
    if not old.ok or (old.size, old.mtime_ns) != (item.size, item.mtime_ns):
        return False
    return all((report_dir / name).is_file() for name in (old.heatmap, old.original) if name)


def scan_folder(
    input_dir: Path, model: InferenceModel, options: ScanOptions, *,
    heatmap_dir: Path | None, report_dir: Path,
    reuse: dict[str, CaseResult] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_found: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """Score every image under ``input_dir`` and explain the flagged ones.

    Args:
        input_dir: Folder to scan (recursively).
        model: The model, from :func:`triage.inference.load_for_inference`.
        options: Threshold, explain mode, batch size.
        heatmap_dir: Where overlay PNGs go (None: make no heat maps).
        report_dir: Folder the report lives in; image paths are relative to it.
        reuse: Rows of a previous run to carry over, by path; used only when
            the file's size and mtime are unchanged.
        should_stop: Polled between batches; True stops the scan, the rest are ``not_scanned``.
        on_found: Called once with the number of files found.
        progress: Called with the number of files just handled.

    Returns:
        The run's results, one case per file found, in path order.

    Raises:
        UsageError: ``input_dir`` is not a folder.
    """
    options.validate()
    started, clock = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    threshold = model.summary.threshold if options.threshold is None else options.threshold
    found = list(discover(Path(input_dir)))
    if on_found:
        on_found(len(found))
    plan = plan_scan(found, reuse or {}, report_dir)
    if progress and plan.cases:
        progress(len(plan.cases))
    stop = Stop(should_stop)
    writer = _heatmap_writer(heatmap_dir, report_dir, model, options)
    try:
        _score(plan, model, options, threshold, writer, stop, progress)
    finally:
        if writer:
            writer.close()
    return _collect(Path(input_dir), plan, model, options, threshold, stop.asked, reuse or {},
                    started, time.perf_counter() - clock)


def _heatmap_writer(heatmap_dir: Path | None, report_dir: Path, model: InferenceModel,
                    options: ScanOptions) -> HeatmapWriter | None:
    if heatmap_dir is None or options.explain == "none":
        return None
    heatmap_dir.mkdir(parents=True, exist_ok=True)
    return HeatmapWriter(heatmap_dir, report_dir, model.summary.sha256[:8])


def _score(plan: Plan, model: InferenceModel, options: ScanOptions, threshold: float,
           writer: HeatmapWriter | None, stop: Stop, progress: Callable[[int], None] | None) -> None:
    """Predict every file to read, explaining the ones the options ask for; rows go into ``plan``."""

    def decode(item: FoundFile) -> Decoded:
        return decode_image(item.path, model.image_size)

    def run(batch: np.ndarray, n: int) -> Sequence[tuple[float, np.ndarray | None]]:
        activations, probabilities = model.predict(batch)
        explain = [writer is not None and (options.explain == "all" or p >= threshold)
                   for p in probabilities[:n]]
        cams = model.gradcam.heatmaps(activations) if any(explain) else None
        return [(float(p), cams[row] if explain[row] else None)
                for row, p in enumerate(probabilities[:n])]

    for outcome in predict(plan.to_read, decode, run, batch_size=options.batch_size, stop=stop,
                           progress=progress):
        plan.cases[outcome.item.relpath] = _case(outcome, threshold, writer)


def _case(outcome: Outcome[FoundFile], threshold: float, writer: HeatmapWriter | None) -> CaseResult:
    item = outcome.item
    if outcome.failure is not None:
        failure = outcome.failure
        return CaseResult(item.relpath, failure.status, sha256=failure.sha256, reason=failure.reason,
                          size=item.size, mtime_ns=item.mtime_ns)
    probability, cam = outcome.output
    image: ScanImage = outcome.extra
    heatmap = original = None
    if cam is not None and writer is not None:
        heatmap, original = writer.submit(image.sha256, image.display, cam)
    return CaseResult(
        item.relpath, "ok", sha256=image.sha256, probability=probability,
        flagged=bool(probability >= threshold), heatmap=heatmap, original=original,
        width=image.width, height=image.height, format=image.format,
        size=item.size, mtime_ns=item.mtime_ns,
    )


def _collect(input_dir: Path, plan: Plan, model: InferenceModel, options: ScanOptions, threshold: float,
             interrupted: bool, reuse: dict[str, Any], started: dt.datetime, seconds: float) -> ScanResult:
    """One case per file found, in path order; what a stop left unscored is ``not_scanned``."""
    for item in plan.found:
        if item.relpath not in plan.cases:
            plan.cases[item.relpath] = CaseResult(item.relpath, "not_scanned",
                                                  reason="the run was interrupted before this file")
    return ScanResult(
        input_dir=str(input_dir.resolve()),
        cases=tuple(plan.cases[item.relpath] for item in plan.found),
        model=model.summary, threshold=threshold, cam_layer=options.cam_layer,
        explain=options.explain,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        seconds=seconds, interrupted=interrupted,
        removed_since_last=len(set(reuse) - {item.relpath for item in plan.found}),
        incremental=bool(reuse),
        versions=library_versions(),
    )
