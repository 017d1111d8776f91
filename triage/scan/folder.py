"""Scoring a folder: discover -> cases -> predict (one forward pass per batch) -> explain -> verdicts.

This module knows nothing of where results are written; :mod:`triage.scan.run`
owns the outputs (paths, lock, incremental state, manifest).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from triage import settings
from triage.engine.heatmaps import HeatmapWriter
from triage.engine.inference import InferenceModel
from triage.engine.predictor import Stop
from triage.engine.ray_data import RaySettings, require_ray
from triage.errors import UsageError
from triage.hooks import RunHooks
from triage.inputs.discovery import discover
from triage.model.card import check_threshold
from triage.model.network import CAM_LAYER
from triage.results.records import Row, ScanResult
from triage.scan.plan import Plan, case_fields, plan_scan, rows_in_path_order
from triage.scan.scorer import CaseScorer, score_cases
from triage.scan.verdicts import mark_copies, verdicts
from triage.versions import library_versions


@dataclass(frozen=True)
class ScanOptions:
    """Settings of a scan; ``threshold`` None means the model card's threshold."""

    threshold: float | None = None
    explain: str = settings.EXPLAIN[0]  # flagged | all | none
    batch_size: int = settings.SCAN_BATCH_SIZE
    cam_layer: str = CAM_LAYER
    device: str = settings.DEVICES[0]  # auto | cpu | gpu
    precision: str = settings.PRECISIONS[0]  # auto | fp32 | bf16 | fp16 | int8, see network.choose_precision
    group_by: str = settings.GROUP_BY[0]  # auto: a series or volume is a case; file: every file, frame
    aggregate: str = settings.AGGREGATES[0]  # a case's score: max, or topk (mean of its top_k highest)
    top_k: int = settings.TOP_K  # slices in a topk score, and slices of a flagged case that get heat maps
    modalities: tuple[str, ...] = settings.MODALITIES  # DICOM modalities that are scored
    engine: str = settings.ENGINES[0]  # local: this process; ray: Ray Data (see ray)
    familiarity: bool = True  # mark images unlike the training images (when the model has an index)
    ray: RaySettings = RaySettings()  # where and how wide the ray engine runs
    settle: float = 0.0  # seconds: a case with a file modified more recently waits for a later run

    def validate(self) -> None:
        check_threshold(self.threshold)
        if self.explain not in settings.EXPLAIN:
            raise UsageError(f"Explain must be one of {', '.join(settings.EXPLAIN)}.", option="explain")
        if self.batch_size < 1:
            raise UsageError(f"The batch size must be at least 1, got {self.batch_size}.",
                             option="batch_size")
        if self.group_by not in settings.GROUP_BY:
            raise UsageError(f"Group by must be one of {', '.join(settings.GROUP_BY)}.", option="group_by")
        if self.aggregate not in settings.AGGREGATES:
            raise UsageError(f"The aggregate must be one of {', '.join(settings.AGGREGATES)}.",
                             option="aggregate")
        if self.settle < 0:
            raise UsageError(f"Settle must be 0 seconds or more, got {self.settle:g}.", option="settle")
        if self.top_k < 1:
            raise UsageError(f"Top k must be at least 1, got {self.top_k}.", option="top_k")
        if self.engine not in settings.ENGINES:
            raise UsageError(f"The engine must be one of {', '.join(settings.ENGINES)}, got {self.engine!r}.",
                             option="engine")
        if self.engine == "ray":
            self.ray.validate()
            require_ray()
        if not self.modalities or not all(m.isalnum() for m in self.modalities):
            raise UsageError(f"Modalities must be DICOM modality codes such as MR or CT, got "
                             f"{','.join(self.modalities) or 'none'}.", option="modality")


def scan_folder(
    input_dir: Path, model: InferenceModel, options: ScanOptions, *,
    heatmap_dir: Path | None, report_dir: Path,
    reuse: dict[str, list[Row]] | None = None, hooks: RunHooks = RunHooks(),
) -> ScanResult:
    """Score every image, series and volume under ``input_dir`` and explain the flagged ones.

    Args:
        input_dir: Folder to scan (recursively).
        model: The model, from :func:`triage.engine.inference.load_for_inference`.
        options: Threshold, explain mode, batch size, cases and their scores.
        heatmap_dir: Where overlay PNGs go (None: make no heat maps).
        report_dir: Folder the report lives in; image paths are relative to it.
        reuse: Rows of a previous run by path; a case keeps them when none of its files changed.
        hooks: ``should_stop`` (polled while the files are listed and sorted too: True stops the
            scan there with nothing scored, later the rest are ``not_scanned``), ``on_start`` (the
            number of rows, images and slices, the run will have), ``advance`` (rows just handled).

    Returns:
        The run's results: one row per image or slice, in path order; the cases and studies.

    Raises:
        UsageError: ``input_dir`` is not a folder.
        Stopped: a stop was asked for before scoring began.
    """
    options.validate()
    started, clock = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    threshold = model.threshold(options.threshold)
    found = list(discover(Path(input_dir), should_stop=hooks.should_stop))
    plan = plan_scan(found, reuse or {}, report_dir, group_by=options.group_by, modalities=options.modalities,
                     settle=options.settle, should_stop=hooks.should_stop)
    hooks.on_start(plan.total)
    if plan.rows:
        hooks.advance(len(plan.rows))
    stop = Stop(hooks.should_stop)
    writer = _heatmap_writer(heatmap_dir, report_dir, model, options)
    scorer = CaseScorer(model, explain=options.explain, threshold=threshold, aggregate=options.aggregate,
                        top_k=options.top_k, cases={case.case_id: case for case in plan.to_score},
                        writer=writer, files={item.relpath: item for item in found}, rows=plan.rows,
                        batch_size=options.batch_size)
    try:
        score_cases(plan, scorer, batch_size=options.batch_size, stop=stop, progress=hooks.advance,
                    ray=options.ray if options.engine == "ray" else None)
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


def _collect(input_dir: Path, plan: Plan, model: InferenceModel, options: ScanOptions, threshold: float,
             interrupted: bool, reuse: dict[str, list[Row]], started: dt.datetime,
             seconds: float) -> ScanResult:
    """Rows in path order (what a stop left unscored ``not_scanned``), copies marked, verdicts."""
    for case in plan.to_score:
        for slice_ in case.slices:
            plan.rows.setdefault(slice_.key, Row(
                slice_.relpath, "not_scanned", reason="the run was interrupted before this file",
                **case_fields(case, slice_)))
    rows = mark_copies(rows_in_path_order(plan.rows, plan.found))
    summaries, studies = verdicts(plan.cases, rows, threshold, options.aggregate, options.top_k)
    return ScanResult(
        input_dir=str(input_dir.resolve()),
        rows=tuple(rows), cases=tuple(summaries), studies=studies,
        aggregate=options.aggregate, top_k=options.top_k,
        model=model.summary, threshold=threshold, cam_layer=options.cam_layer,
        explain=options.explain,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        seconds=seconds, interrupted=interrupted,
        removed_since_last=len(set(reuse) - {item.relpath for item in plan.found}),
        incremental=bool(reuse),
        versions=library_versions(),
    )
