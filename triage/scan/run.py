"""One scan run with its outputs: lock, incremental state, CSV, HTML/PDF, ``run.json``.

Every output is written to a temporary file and renamed, in an order that
keeps the previous outputs readable whatever moment the run is killed at:
heat maps (new names) -> CSV -> cases CSV -> HTML -> PDF -> state -> ``run.json`` (last)
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
from pathlib import Path
from typing import Any, Callable

from triage.dicom_out.ledger import load_ledger, write_ledger
from triage.dicom_out.options import DicomOptions, Peer
from triage.dicom_out.send import send_objects
from triage.dicom_out.writer import export_dicom
from triage.engine.inference import InferenceModel, load_for_inference
from triage.errors import OutputError, Stopped, UsageError
from triage.hooks import RunHooks
from triage.model.loading import check_run_writes, find_model
from triage.outputs.atomic import atomic_write_text
from triage.outputs.lock import OutputLock
from triage.results.dicom import SENT, DicomExport
from triage.results.records import ScanResult
from triage.results.run_record import RUN_FILE, run_record
from triage.results.tables import write_cases_csv, write_csv
from triage.scan.folder import ScanOptions, scan_folder
from triage.scan.state import load_state, scan_settings, write_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputPaths:
    """Where a run writes; all beside the report, named after its stem."""

    html: Path
    pdf: Path | None
    csv: Path
    cases_csv: Path
    heatmaps: Path
    run_json: Path
    state: Path
    lock: Path
    dicom: Path | None = None  # the DICOM folder (--dicom-out)
    ledger: Path | None = None  # what the DICOM folder holds of this report, and what was sent

    @property
    def locks(self) -> list[Path]:
        """One lock per folder the run writes in, in a fixed order (so two runs never deadlock)."""
        folders = {self.lock.parent.resolve(), self.csv.parent.resolve()}
        return sorted(folder / self.lock.name for folder in folders)

    def written(self) -> list[tuple[str, str, Path]]:
        """(what, the setting that names it, path) of everything the run writes."""
        found = [("the HTML report", "out", self.html), ("the PDF report", "out", self.pdf),
                 ("the CSV", "csv", self.csv), ("the cases CSV", "csv", self.cases_csv),
                 ("the heat-map folder", "out", self.heatmaps),
                 ("run.json", "out", self.run_json), ("the state file", "out", self.state),
                 ("the DICOM folder", "dicom_out", self.dicom), ("the DICOM ledger", "out", self.ledger)]
        found += [("a lock file", "out", lock) for lock in self.locks]
        return [(what, option, path) for what, option, path in found if path is not None]

    @classmethod
    def for_report(cls, out: Path, csv: Path | None = None, dicom: Path | None = None) -> "OutputPaths":
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
        csv = Path(csv) if csv else base.with_suffix(".csv")
        return cls(
            html=out if suffix != ".pdf" else base.with_suffix(".html"),
            pdf=out if suffix == ".pdf" else None,
            csv=csv,
            cases_csv=csv.with_name(f"{csv.stem}_cases{csv.suffix}"),
            heatmaps=base.parent / f"{base.name}_heatmaps",
            run_json=out.parent / RUN_FILE,
            state=out.parent / f".{base.name}.state.json",
            # One lock per folder: every report there shares its run.json.
            lock=out.parent / ".triage.lock",
            dicom=Path(dicom) if dicom else None,
            ledger=out.parent / f".{base.name}.dicom.json" if dicom else None,
        )


def run_facts(result: ScanResult, paths: OutputPaths) -> dict[str, Any]:
    """The content of ``run.json``."""
    outputs = {"csv": paths.csv.name, "cases_csv": paths.cases_csv.name, "html": paths.html.name,
               "pdf": paths.pdf.name if paths.pdf else None, "heatmaps": paths.heatmaps.name}
    return run_record(
        "scan", result.model, threshold=result.threshold, versions=result.versions, counts=result.counts(),
        started_at=result.started_at, finished_at=result.finished_at, seconds=result.seconds,
        outputs=outputs, input_dir=result.input_dir, cam_layer=result.cam_layer, explain=result.explain,
        images_per_second=round(result.images_per_second, 3), interrupted=result.interrupted,
        incremental=result.incremental, aggregate=result.aggregate, top_k=result.top_k,
        **({"dicom": dicom_facts(result.dicom)} if result.dicom else {}))


def dicom_facts(export: DicomExport) -> dict[str, Any]:
    """``run.json``'s ``dicom``: the folder, the counts, every object with its outcome, what failed."""
    return {"folder": export.folder, "peer": export.peer, "counts": export.counts(),
            "objects": [{"kind": obj.kind, "case": obj.case_id, "study_uid": obj.study_uid,
                         "sop_class_uid": obj.sop_class_uid, "sop_instance_uid": obj.sop_instance_uid,
                         "file": obj.file, "written_this_run": obj.written, "sent": obj.sent,
                         "sent_this_run": obj.sop_instance_uid in export.attempted, "detail": obj.detail}
                        for obj in export.objects],
            "failures": [{"case": case, "reason": reason} for case, reason in export.failures]}


def _remove_unreferenced(result: ScanResult, paths: OutputPaths) -> None:
    if not paths.heatmaps.is_dir():
        return
    keep = {Path(name).name for c in result.rows for name in (c.heatmap, c.original) if name}
    for path in paths.heatmaps.iterdir():
        if path.is_file() and path.name not in keep:
            path.unlink(missing_ok=True)


def _remove_stray_temporaries(paths: OutputPaths) -> None:
    """Delete the temporary files a killed run of these outputs left (``.report.csv.XXXX.tmp``).

    Called under the lock, so no live run of these outputs is writing them.
    """
    strays: list[Path] = []
    finals = (paths.csv, paths.cases_csv, paths.html, paths.pdf, paths.state, paths.run_json, paths.ledger)
    for final in finals:
        if final is not None and final.parent.is_dir():
            strays += final.parent.glob(f".{glob.escape(final.name)}.*.tmp")
    if paths.dicom is not None and paths.dicom.is_dir():
        strays += paths.dicom.glob("*/.*.dcm.*.tmp")
    for stray in strays:
        with contextlib.suppress(OSError):
            stray.unlink()


def run_scan(
    input_dir: Path, out: Path, *, csv: Path | None = None, model: str | Path | None = None,
    options: ScanOptions = ScanOptions(), max_report_cases: int = 200, full: bool = False,
    wait: float = 0.0, log_file: Path | None = None, hooks: RunHooks = RunHooks(),
    dicom: DicomOptions = DicomOptions(),
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
        log_file: The run's log file, checked against the other paths like an output.
        hooks: Stop requests, progress and the run's phases (:class:`triage.hooks.RunHooks`).
        dicom: The DICOM folder for the objects of DICOM cases, and the archive to send them to;
            ``result.dicom`` says what was written and sent.

    Returns:
        The result and where it was written.

    Raises:
        UsageError, ModelError, LockHeld, OutputError: see :mod:`triage.errors`.
        Stopped: ``hooks.should_stop`` said stop before scanning began; no output was changed.
    """
    input_dir = Path(input_dir)
    try:
        paths, folder = _check_request(input_dir, out, csv, model, options, max_report_cases, log_file, dicom)
        with contextlib.ExitStack() as locks:
            for lock in paths.locks:
                locks.enter_context(OutputLock(lock, wait, should_stop=hooks.should_stop))
            return _locked_run(input_dir, paths, folder, options, max_report_cases, full, hooks, dicom), paths
    except OSError as error:
        raise OutputError(_output_failure(error)) from error


def _locked_run(input_dir: Path, paths: OutputPaths, folder: Path, options: ScanOptions,
                max_report_cases: int, full: bool, hooks: RunHooks, dicom: DicomOptions) -> ScanResult:
    _remove_stray_temporaries(paths)
    with _engine(options) as ray:
        loaded = _load(folder, options, ray)
        settings = scan_settings(loaded, options, input_dir, loaded.threshold(options.threshold))
        reuse = _previous_rows(paths, settings, full)
        if hooks.should_stop():
            raise Stopped("the scan had not begun; no output was changed")
        hooks.on_phase("scanning")
        result = scan_folder(input_dir, loaded, options, heatmap_dir=paths.heatmaps,
                             report_dir=paths.html.parent, reuse=reuse, hooks=hooks)
    hooks.on_phase("writing")
    result = write_outputs(result, paths, settings, max_report_cases)
    hooks.on_phase("written")
    if dicom.peer is not None and result.dicom is not None:
        hooks.on_phase("sending")
        result = send_dicom(result, paths, dicom.peer, hooks.should_stop)
    return result


def _engine(options: ScanOptions) -> contextlib.AbstractContextManager[Any]:
    """Ray for the ray engine (joined, or started and stopped for this run); nothing locally."""
    if options.engine != "ray":
        return contextlib.nullcontext()
    from triage.engine.ray_data import RaySession

    return RaySession(options.ray)


def _load(folder: Path, options: ScanOptions, ray: Any) -> InferenceModel:
    """The model, with the device and precision of the run's forward pass in its summary.

    On Ray the actors run the forward pass: the driver loads its copy on the CPU
    (leaving the GPUs to the actors) and records what the actors run.
    """
    if ray is None:
        return load_for_inference(folder, options.device, options.cam_layer, options.precision,
                                  options.familiarity)
    loaded = load_for_inference(folder, "cpu", options.cam_layer, "fp32", options.familiarity)
    device, precision = ray.resolve(options.device, options.precision, loaded.card)
    fast_path = loaded.card.fast_path(precision)
    return dataclasses.replace(loaded, summary=dataclasses.replace(
        loaded.summary, device=device, precision=precision, auto_precision=options.precision == "auto",
        margin=fast_path.margin if fast_path else None))


def _output_failure(error: OSError) -> str:
    """One sentence for an output the file system refused (read-only, full, name too long, ...)."""
    where = error.filename if error.filename else "an output"
    return (f"Cannot write {where}: {error.strerror or error}; the previous outputs are unchanged, "
            f"or all of them are this run's.")


def _check_request(input_dir: Path, out: Path, csv: Path | None, model: str | Path | None,
                   options: ScanOptions, max_report_cases: int, log_file: Path | None,
                   dicom: DicomOptions) -> tuple[OutputPaths, Path]:
    """Everything that can be checked before the lock is taken; returns the paths and the model folder.

    Raises:
        UsageError: a bad setting, a missing input folder, or outputs that clash.
        ModelError: no model.
    """
    options.validate()
    dicom.validate()
    if max_report_cases < 1:
        raise UsageError(f"The PDF must show at least 1 case, got {max_report_cases}.",
                         option="max_report_cases")
    if not input_dir.is_dir():
        raise UsageError(f"Input folder {input_dir} does not exist or is not a folder.")
    paths = OutputPaths.for_report(out, csv, dicom.folder)
    folder = find_model(model)
    check_run_writes(paths.written() + ([("the log file", "log_file", log_file)] if log_file else []),
                     ("the input folder", input_dir), folder)
    return paths, folder


def _previous_rows(paths: OutputPaths, settings: dict[str, Any], full: bool) -> dict[str, Any]:
    if full:
        log.info("full rescan asked for: scanning everything")
        return {}
    reuse = load_state(paths.state, settings, paths.heatmaps.name)
    if reuse:
        log.info("incremental: %d rows of the previous run may be reused", sum(map(len, reuse.values())))
    return reuse


def write_outputs(result: ScanResult, paths: OutputPaths, settings: dict[str, Any],
                  max_report_cases: int) -> ScanResult:
    """DICOM objects -> CSV -> cases CSV -> HTML -> PDF -> state -> DICOM ledger -> ``run.json`` (last)
    -> unreferenced heat maps removed. Returns the result with its DICOM export, when there is one."""
    from triage.report import draw_figures, write_html, write_pdf

    if paths.dicom is not None and paths.ledger is not None:
        earlier = load_ledger(paths.ledger, paths.dicom)
        export = export_dicom(result, paths.dicom, paths.html.parent, earlier)
        result = dataclasses.replace(result, dicom=export)
    write_csv(result, paths.csv)
    write_cases_csv(result, paths.cases_csv)
    figures = draw_figures(result)  # the PDF's cases are the HTML's first ones
    write_html(result, paths.html, figures)
    if paths.pdf:
        write_pdf(result, paths.pdf, max_cases=max_report_cases, figures=figures)
    write_state(paths.state, result, settings)
    _write_dicom_records(result, paths)
    _remove_unreferenced(result, paths)
    return result


def _write_dicom_records(result: ScanResult, paths: OutputPaths) -> None:
    """The DICOM ledger (when there is a DICOM folder), then ``run.json``."""
    if result.dicom is not None and paths.ledger is not None:
        write_ledger(paths.ledger, result.dicom)
    atomic_write_text(paths.run_json, json.dumps(run_facts(result, paths), indent=2) + "\n")


def send_dicom(result: ScanResult, paths: OutputPaths, peer: Peer,
               should_stop: Callable[[], bool]) -> ScanResult:
    """Send the objects not yet stored at the archive; record each outcome in the ledger and ``run.json``.

    Written outputs are never touched: a peer that is down or refuses leaves
    every object in the DICOM folder, marked for the next run.
    """
    export = result.dicom
    assert export is not None and paths.dicom is not None
    queue = [obj for obj in export.objects if obj.sent != SENT]
    outcomes = {obj.sop_instance_uid: obj for obj in send_objects(queue, paths.dicom, peer, should_stop)}
    objects = tuple(outcomes.get(obj.sop_instance_uid, obj) for obj in export.objects)
    result = dataclasses.replace(result, dicom=dataclasses.replace(
        export, objects=objects, peer=str(peer), attempted=frozenset(outcomes)))
    for obj in outcomes.values():
        log.info("DICOM %s %s -> %s: %s %s", obj.kind, obj.file, peer, obj.sent, obj.detail)
    _write_dicom_records(result, paths)
    return result
