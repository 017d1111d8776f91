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
import dataclasses
import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from triage.atomic import atomic_write_text
from triage.errors import UsageError
from triage.lock import OutputLock
from triage.results import STATUSES, CaseResult, ScanResult, write_csv
from triage.scan import LoadedModel, ScanOptions, library_versions, load_model, scan_folder

log = logging.getLogger(__name__)
RUN_SCHEMA_VERSION = 1
STATE_SCHEMA_VERSION = 1


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
            raise UsageError(f"--out must end in .pdf or .html, got {out.name!r}.")
        if out.is_dir():
            raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'report.pdf'}.")
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


# Libraries whose version can change a row (decoding, resizing, the forward pass).
_SCORING_LIBRARIES = ("triage", "tensorflow", "keras", "numpy", "opencv-python-headless", "pillow",
                      "pydicom")


def _settings(loaded: LoadedModel, options: ScanOptions, input_dir: Path, threshold: float) -> dict[str, Any]:
    """What must match for a previous run's rows to be reused.

    Besides the model and the options that decide a row, the batch size and
    the device (the last float bits of a probability depend on both) and the
    versions of the libraries that decode and score: a carried-over row must
    equal the one a fresh scan would give.
    """
    versions = library_versions()
    return {"model_sha256": loaded.summary.sha256, "threshold": threshold, "explain": options.explain,
            "cam_layer": options.cam_layer, "input_dir": str(input_dir.resolve()),
            "batch_size": options.batch_size, "device": "gpu" if loaded.on_gpu else "cpu",
            "versions": {name: versions.get(name) for name in _SCORING_LIBRARIES}}


# The type each state field must have (besides None where the field allows it).
_ROW_TYPES: dict[str, type] = {
    "path": str, "status": str, "sha256": str, "reason": str, "probability": float, "flagged": bool,
    "heatmap": str, "original": str, "width": int, "height": int, "format": str, "size": int,
    "mtime_ns": int, "new": bool,
}
_ROW_REQUIRED = ("path", "status", "reason", "flagged", "new")


def _check_row(row: Any, heatmap_folder: str) -> CaseResult:
    """One state row as a :class:`CaseResult`; ``ValueError`` when it is not one this tool wrote."""
    if not isinstance(row, dict) or set(row) != {f.name for f in dataclasses.fields(CaseResult)}:
        raise ValueError(f"a row is not a case: {str(row)[:80]}")
    for name, kind in _ROW_TYPES.items():
        value = row.get(name)
        if (value is None and name not in _ROW_REQUIRED) or (
                isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
            continue
        raise ValueError(f"bad {name} {value!r} in a row")
    case = CaseResult(**row)
    if not case.path or case.status not in STATUSES or case.status == "not_scanned":
        raise ValueError(f"bad row of {case.path!r}")
    if case.ok and not (case.probability is not None and 0.0 <= case.probability <= 1.0):
        raise ValueError(f"bad probability in the row of {case.path!r}")
    for name in (case.heatmap, case.original):  # only images in this report's own heat-map folder
        if name is not None and (PurePosixPath(name).parent.as_posix() != heatmap_folder
                                 or "\\" in name or name.endswith("/..")):
            raise ValueError(f"heat map {name!r} is outside {heatmap_folder}")
    return case


def load_state(path: Path, settings: dict[str, Any], heatmap_folder: str) -> dict[str, CaseResult]:
    """Rows of the previous run, or nothing when they can't be trusted (said in the log).

    Args:
        path: The state file beside the outputs.
        settings: This run's, from :func:`_settings`; any difference means a full rescan.
        heatmap_folder: Name of the heat-map folder, relative to the report, that rows may refer to.
    """
    if not path.exists():
        log.info("no previous state beside the outputs: scanning everything")
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("schema_version") != STATE_SCHEMA_VERSION:
            raise ValueError("not a triage state file of schema %d" % STATE_SCHEMA_VERSION)
        old_settings, cases = state.get("settings"), state.get("cases")
        if not isinstance(old_settings, dict) or not isinstance(cases, list):
            raise ValueError("no settings or cases")
        rows = {}
        for row in cases:
            case = _check_row(row, heatmap_folder)
            rows[case.path] = case
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        log.warning("previous state %s is unreadable (%s): scanning everything", path, exc)
        return {}
    changed = [k for k in settings if old_settings.get(k) != settings[k]]
    if changed:
        log.info("previous run used another %s: scanning everything", ", ".join(changed))
        return {}
    return rows


def _write_state(path: Path, result: ScanResult, settings: dict[str, Any]) -> None:
    cases = [dataclasses.asdict(c) for c in result.cases if c.status != "not_scanned"]
    atomic_write_text(path, json.dumps({"schema_version": STATE_SCHEMA_VERSION, "settings": settings,
                                        "cases": cases}) + "\n")


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
        on_found, progress: Progress callbacks, see :func:`triage.scan.scan_folder`.

    Returns:
        The result and where it was written.

    Raises:
        UsageError, ModelError, LockHeld: see :mod:`triage.errors`.
        KeyboardInterrupt: ``should_stop`` said stop before scanning began; no output was changed.
    """
    input_dir = Path(input_dir)
    options.validate()
    if max_report_cases < 1:
        raise UsageError(f"--max-report-cases must be at least 1, got {max_report_cases}.")
    if not input_dir.is_dir():
        raise UsageError(f"Input folder {input_dir} does not exist or is not a folder.")
    paths = OutputPaths.for_report(out, csv)
    if paths.heatmaps.resolve().is_relative_to(input_dir.resolve()) or \
            paths.csv.resolve().parent.is_relative_to(input_dir.resolve()):
        raise UsageError("Outputs must not go inside the input folder (they would be scanned next time).")
    with OutputLock(paths.lock, wait, should_stop=should_stop):
        _remove_stray_temporaries(paths)
        loaded = load_model(model, options)
        threshold = loaded.summary.threshold if options.threshold is None else options.threshold
        settings = _settings(loaded, options, input_dir, threshold)
        if full:
            log.info("--full: scanning everything")
        reuse = {} if full else load_state(paths.state, settings, paths.heatmaps.name)
        if reuse:
            log.info("incremental: %d rows of the previous run may be reused", len(reuse))
        if should_stop():  # stopped before anything was scored: leave the previous outputs alone
            raise KeyboardInterrupt
        result = scan_folder(input_dir, loaded, options, heatmap_dir=paths.heatmaps,
                             report_dir=paths.html.parent, reuse=reuse, should_stop=should_stop,
                             on_found=on_found, progress=progress)
        from triage.report import write_html, write_pdf

        write_csv(result, paths.csv)
        write_html(result, paths.html)
        if paths.pdf:
            write_pdf(result, paths.pdf, max_cases=max_report_cases)
        _write_state(paths.state, result, settings)
        atomic_write_text(paths.run_json, json.dumps(run_facts(result, paths), indent=2) + "\n")
        _remove_unreferenced(result, paths)
    return result, paths
