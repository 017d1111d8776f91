"""One scan run with its outputs: lock, incremental state, CSV, HTML/PDF, ``run.json``.

Every output is written to a temporary file and renamed, in an order that
keeps the previous outputs readable whatever moment the run is killed at:
heat maps (new names) -> CSV -> HTML -> PDF -> state -> ``run.json`` (last)
-> removal of heat maps nothing refers to any more. Temporary files a killed
run left are removed by the next run, under the lock.

A stop asked for (SIGINT/SIGTERM) while waiting for the lock or loading the
model leaves every output as it was; once scanning has begun, the run stops
after the current batch and writes everything, the rest ``not_scanned``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from triage.atomic import atomic_write_text
from triage.errors import Stopped, UsageError
from triage.inference import load_for_inference
from triage.lock import OutputLock
from triage.results import ScanResult, write_csv
from triage.scoring import ScanOptions, scan_folder
from triage.state import load_state, scan_settings, write_state

log = logging.getLogger(__name__)
RUN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class OutputPaths:
    """Where a run writes; all beside the report, named after its stem."""

    html: Path
    pdf: Path | None
    csv: Path
    heatmaps: Path
    run_json: Path
    state: Path
    lock: Path

    @classmethod
    def for_report(cls, out: Path, csv: Path | None = None) -> "OutputPaths":
        """``report.pdf`` -> report.pdf + report.html; ``report.html`` -> HTML only.

        Raises:
            UsageError: ``out`` is neither ``.pdf`` nor ``.html``.
        """
        out = Path(out)
        suffix = out.suffix.lower()
        if suffix not in (".pdf", ".html", ".htm"):
            raise UsageError(f"The report must end in .pdf or .html, got {out.name!r}.", option="out")
        if out.is_dir():
            raise UsageError(f"The report {out} is a folder; give a file name such as "
                             f"{out / 'report.pdf'}.", option="out")
        base = out.with_suffix("")
        return cls(
            html=out if suffix != ".pdf" else base.with_suffix(".html"),
            pdf=out if suffix == ".pdf" else None,
            csv=Path(csv) if csv else base.with_suffix(".csv"),
            heatmaps=base.parent / f"{base.name}_heatmaps",
            run_json=out.parent / "run.json",
            state=out.parent / f".{base.name}.state.json",
            # One lock per folder: every report there shares its run.json.
            lock=out.parent / ".triage.lock",
        )


def run_facts(result: ScanResult, paths: OutputPaths) -> dict[str, Any]:
    """The content of ``run.json``."""
    model = result.model
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "versions": result.versions,
        "input_dir": result.input_dir,
        "model": {"id": model.id, "path": model.path, "sha256": model.sha256,
                  "backbone_weights": model.backbone_weights, "image_size": model.image_size},
        "threshold": result.threshold,
        "cam_layer": result.cam_layer,
        "explain": result.explain,
        "counts": result.counts(),
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 3),
        "interrupted": result.interrupted,
        "incremental": result.incremental,
        "outputs": {"csv": paths.csv.name, "html": paths.html.name,
                    "pdf": paths.pdf.name if paths.pdf else None, "heatmaps": paths.heatmaps.name},
    }


def _remove_unreferenced(result: ScanResult, paths: OutputPaths) -> None:
    if not paths.heatmaps.is_dir():
        return
    keep = {Path(name).name for c in result.cases for name in (c.heatmap, c.original) if name}
    for path in paths.heatmaps.iterdir():
        if path.is_file() and path.name not in keep:
            path.unlink(missing_ok=True)


def _remove_stray_temporaries(paths: OutputPaths) -> None:
    """Delete the temporary files a killed run of these outputs left (``.report.csv.XXXX.tmp``).

    Called under the lock, so no live run of these outputs is writing them.
    """
    for final in (paths.csv, paths.html, paths.pdf, paths.state, paths.run_json):
        if final is not None and final.parent.is_dir():
            for stray in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
                with contextlib.suppress(OSError):
                    stray.unlink()


def run_scan(
    input_dir: Path, out: Path, *, csv: Path | None = None, model: str | Path | None = None,
    options: ScanOptions = ScanOptions(), max_report_cases: int = 200, full: bool = False,
    wait: float = 0.0, should_stop: Callable[[], bool] = lambda: False,
    on_found: Callable[[int], None] | None = None, progress: Callable[[int], None] | None = None,
) -> tuple[ScanResult, OutputPaths]:
    """Scan a folder and write every output, incrementally when the previous run allows.

    Args:
        input_dir: Folder to scan.
        out: Report path (``.pdf`` for PDF + HTML, ``.html`` for HTML only).
        csv: CSV path; default beside the report with the same stem.
        model: Model folder; default ``$TRIAGE_MODEL`` or the newest under ``models/``.
        options: Scan settings.
        max_report_cases: Flagged cases in the PDF at most (the HTML holds all).
        full: Rescan everything even when the previous run's rows could be reused.
        wait: Seconds to wait for another run holding the same outputs.
        should_stop: Polled between batches (SIGINT/SIGTERM).
        on_found, progress: Progress callbacks, see :func:`triage.scoring.scan_folder`.

    Returns:
        The result and where it was written.

    Raises:
        UsageError, ModelError, LockHeld: see :mod:`triage.errors`.
        Stopped: ``should_stop`` said stop before scanning began; no output was changed.
    """
    input_dir = Path(input_dir)
    paths = _check_request(input_dir, out, csv, options, max_report_cases)
    with OutputLock(paths.lock, wait, should_stop=should_stop):
        _remove_stray_temporaries(paths)
        loaded = load_for_inference(model, options.device, options.cam_layer)
        threshold = loaded.summary.threshold if options.threshold is None else options.threshold
        settings = scan_settings(loaded, options, input_dir, threshold)
        reuse = _previous_rows(paths, settings, full)
        if should_stop():
            raise Stopped("the scan had not begun; no output was changed")
        result = scan_folder(input_dir, loaded, options, heatmap_dir=paths.heatmaps,
                             report_dir=paths.html.parent, reuse=reuse, should_stop=should_stop,
                             on_found=on_found, progress=progress)
        write_outputs(result, paths, settings, max_report_cases)
    return result, paths


def _check_request(input_dir: Path, out: Path, csv: Path | None, options: ScanOptions,
                   max_report_cases: int) -> OutputPaths:
    """Everything that can be checked before the lock is taken.

    Raises:
        UsageError: a bad setting, a missing input folder, or outputs inside it.
    """
    options.validate()
    if max_report_cases < 1:
        raise UsageError(f"The PDF must show at least 1 case, got {max_report_cases}.",
                         option="max_report_cases")
    if not input_dir.is_dir():
        raise UsageError(f"Input folder {input_dir} does not exist or is not a folder.")
    paths = OutputPaths.for_report(out, csv)
    if paths.heatmaps.resolve().is_relative_to(input_dir.resolve()) or \
            paths.csv.resolve().parent.is_relative_to(input_dir.resolve()):
        raise UsageError("Outputs must not go inside the input folder (they would be scanned next time).")
    return paths


def _previous_rows(paths: OutputPaths, settings: dict[str, Any], full: bool) -> dict[str, Any]:
    if full:
        log.info("full rescan asked for: scanning everything")
        return {}
    reuse = load_state(paths.state, settings, paths.heatmaps.name)
    if reuse:
        log.info("incremental: %d rows of the previous run may be reused", len(reuse))
    return reuse


def write_outputs(result: ScanResult, paths: OutputPaths, settings: dict[str, Any],
                  max_report_cases: int) -> None:
    """CSV -> HTML -> PDF -> state -> ``run.json`` (last) -> unreferenced heat maps removed."""
    from triage.report import write_html, write_pdf

    write_csv(result, paths.csv)
    write_html(result, paths.html)
    if paths.pdf:
        write_pdf(result, paths.pdf, max_cases=max_report_cases)
    write_state(paths.state, result, settings)
    atomic_write_text(paths.run_json, json.dumps(run_facts(result, paths), indent=2) + "\n")
    _remove_unreferenced(result, paths)
