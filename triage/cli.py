"""The `triage` command: a thin click shell over the library.

Each command parses options, calls one library function, prints a summary and
maps the library's typed errors to exit codes. TensorFlow is imported only
inside the commands that need it, so `--help` is instant.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from pathlib import Path
from time import monotonic
from typing import Any, Callable

import click

from triage import RESEARCH_NOTICE, __version__
from triage.errors import LockHeld, ModelError, OutputError, Stopped, TriageError

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 5
EXIT_OUTPUT = 6
EXIT_INTERNAL = 70

EXIT_CODES_HELP = f"""\b
Exit codes:
  {EXIT_OK}   success: every file was scored (or trained / evaluated)
  {EXIT_SOME_FAILED}   the scan completed, but some files could not be read (see the CSV)
  {EXIT_USAGE}   usage error: bad option, missing or unusable folder
  {EXIT_MODEL}   model error: no model found, unreadable model, backbone weights unavailable
  {EXIT_LOCKED}   another run holds the lock on the same outputs (see --wait)
  {EXIT_INTERRUPTED}   stopped by SIGINT/SIGTERM: a scan that had begun wrote its outputs for
      what was scored (the rest not_scanned); otherwise nothing was written (the message says which)
  {EXIT_OUTPUT}   an output could not be written (read-only or full file system, a name too long, a
      permission): the previous outputs are intact
  {EXIT_INTERNAL}  internal error (a bug: please report it with the log)
"""

log = logging.getLogger("triage")


def _exit_code(error: TriageError) -> int:
    if isinstance(error, LockHeld):
        return EXIT_LOCKED
    if isinstance(error, OutputError):
        return EXIT_OUTPUT
    if isinstance(error, ModelError):
        return EXIT_MODEL
    return EXIT_USAGE


def error_message(error: TriageError) -> str:
    """The library's sentence, with the flag that sets the setting at fault."""
    text = str(error)
    if not error.option:
        return text
    flag = "--" + error.option.replace("_", "-")
    return f"{text.rstrip('.')} ({flag})."


def _setup_logging(quiet: bool, log_file: Path | None, verbose: bool, input_dir: Path) -> None:
    """Console and log-file handlers; a log file inside ``input_dir`` is refused before it is opened."""
    from triage.quiet import silence_libraries

    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.ERROR if quiet else logging.WARNING)
    console.setFormatter(logging.Formatter("triage: %(message)s"))
    log.addHandler(console)
    if log_file:
        from triage.scan.run import check_writes

        check_writes([("the log file", "log_file", log_file)], input_dir, None)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    silence_libraries(verbose, log_file)  # before TensorFlow is imported


def handle_errors(command: Callable[..., int | None]) -> Callable[..., None]:
    """Run a command; turn library errors into one line on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = command(*args, **kwargs) or EXIT_OK
        except TriageError as error:
            log.error("%s", error_message(error))  # the console handler shows errors even with --quiet
            sys.exit(_exit_code(error))
        except Stopped as stopped:
            log.error("Stopped: %s.", stopped.what)
            sys.exit(EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            click.echo("Interrupted; no output was changed.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception:
            log.exception("internal error")
            click.echo("Internal error: the log above says where; please report it.", err=True)
            sys.exit(EXIT_INTERNAL)
        sys.exit(code)

    return wrapper


class Progress:
    """A tqdm bar on a terminal; nothing otherwise (cron mail stays short)."""

    def __init__(self, enabled: bool, unit: str = "image", desc: str = "") -> None:
        self.enabled = enabled
        self.unit = unit
        self.desc = desc
        self.bar: Any = None

    def start(self, total: int) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=self.unit, desc=self.desc, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _StopFlag:
    """SIGINT/SIGTERM: the first asks the run to stop after the current batch.

    A second Ctrl-C stops at once, before any output is replaced; once the
    outputs are being written (``phase`` "writing") it waits for them, so they
    are either all the previous run's or all this run's.
    """

    def __init__(self) -> None:
        self.stopping = False
        self.phase = "starting"
        self.pressed_twice = False

    def __call__(self) -> bool:
        return self.stopping

    def on_phase(self, phase: str) -> None:
        self.phase = phase

    def install(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.stopping and signum == signal.SIGINT:
                self.pressed_twice = True
                if self.phase != "writing":
                    raise KeyboardInterrupt  # a second Ctrl-C: stop now, outputs untouched
                log.warning("SIGINT again: finishing the outputs already being written")
                return
            self.stopping = True
            log.warning("%s received: stopping after the current batch", signal.Signals(signum).name)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def _interactive(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def runtime_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--batch-size, --quiet, --log-file, --verbose, shared by every command."""
    for option in reversed([
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Images per forward pass [train: 32, scan/evaluate: 16]."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars; only errors and the summary."),
        click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Append a timestamped log of the run to this file."),
        click.option("--verbose", is_flag=True,
                     help="Also show TensorFlow's and the other libraries' messages on stderr."),
    ]):
        command = option(command)
    return command


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--model and --threshold, shared by scan and evaluate."""
    for option in reversed([
        click.option("--model", "-m", "model", metavar="DIR",
                     help="Model folder from `triage train` [default: $TRIAGE_MODEL, else the newest "
                          "under models/ (or $TRIAGE_MODELS)]."),
        click.option("--threshold", type=click.FloatRange(0, 1), default=None,
                     help="Flag at probability >= this [default: the model card's threshold]."),
    ]):
        command = option(command)
    return command


def device_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--device, shared by scan and evaluate."""
    return click.option(
        "--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
        help="auto uses a GPU when TensorFlow sees one (with XLA), else the CPU.",
    )(command)


def precision_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--precision, shared by train (feature extraction), scan and evaluate."""
    return click.option(
        "--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
        show_default=True,
        help="fp32 exact; bf16 mixed bfloat16 (GPU, or a CPU with native bfloat16); fp16 mixed "
             "float16 (GPU only). auto: fp16 on a GPU, fp32 on a CPU.",
    )(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="triage")
def main() -> None:
    """Triage brain MRI images for tumours in batch.

    `train` builds the VGG19 transfer-learning classifier from a labelled folder,
    `scan` scores every image of a folder and writes a CSV and an HTML/PDF report
    with Grad-CAM heat maps, `evaluate` measures a model on labelled data.
    """


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Model folder to create [default: a new folder under models/ or $TRIAGE_MODELS].")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--image-size", type=click.IntRange(min=32), default=256, show_default=True,
              help="Side of the square images are resized to.")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Share of images held out for validation.")
@click.option("--seed", type=int, default=1337, show_default=True, help="Split and training seed.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=1e-3,
              show_default=True, help="Adam learning rate.")
@click.option("--l2", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="L2 factor of the dense layers (recorded in the model card).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.35, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Decision threshold stored in the model.")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Instead of --threshold: the highest threshold whose validation sensitivity is >= S.")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="Also K-fold cross-validate the head on the kept features (copy groups kept whole, "
                   "the threshold rule nested in each fold); metrics go in the card.")
@click.option("--split", "split_method", type=click.Choice(["grouped", "keras"]), default="grouped",
              show_default=True,
              help="grouped keeps copies of one scan on one side; keras is the thesis's file-for-file split.")
@click.option("--positive", default="yes", show_default=True,
              help="Name of the tumour class sub-folder; the other one is the negative class.")
@click.option("--backbone-weights", default="imagenet", show_default=True, metavar="imagenet|random|PATH",
              help="ImageNet weights from Keras's cache (or its download), a local .h5 file, "
                   "or `random` (tests and smoke runs only).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
@precision_option
@runtime_options
@handle_errors
def train(data_dir: Path, out: Path | None, epochs: int, image_size: int, val_split: float, seed: int,
          learning_rate: float, l2: float, dropout: float, threshold: float,
          target_sensitivity: float | None, folds: int | None, split_method: str, positive: str,
          backbone_weights: str, no_cache: bool, precision: str, batch_size: int | None, quiet: bool,
          log_file: Path | None, verbose: bool) -> int:
    """Train the classifier on DATA_DIR (one sub-folder per class: yes/ and no/).

    The frozen backbone runs once per image (features are cached); the head
    trains on the kept features; the whole network is saved with a model card
    and training curves.

    \b
    Example:
      triage train ../brain_tumor_dataset --epochs 30
    """
    started = monotonic()
    _setup_logging(quiet, log_file, verbose, data_dir)
    from triage.quiet import metric_summary
    from triage.train.training import TrainConfig, train_model

    config = TrainConfig(
        epochs=epochs, image_size=image_size, batch_size=batch_size or 32, val_split=val_split,
        seed=seed, learning_rate=learning_rate, l2=l2, dropout=dropout, threshold=threshold,
        target_sensitivity=target_sensitivity, folds=folds, split=split_method, positive=positive,
        backbone_weights=backbone_weights, cache=not no_cache, precision=precision,
    )
    interactive = _interactive(quiet)
    bar = Progress(interactive, desc="features")

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        if epoch == 1:
            bar.close()
        if interactive:
            click.echo(f"epoch {epoch:>3}/{epochs}  loss {logs.get('loss', 0):.4f}  "
                       f"acc {logs.get('accuracy', 0):.3f}  val_loss {logs.get('val_loss', 0):.4f}  "
                       f"val_acc {logs.get('val_accuracy', 0):.3f}", err=True)

    log.info("train %s", data_dir)
    stop = _StopFlag()
    stop.install()
    try:
        result = train_model(data_dir, out, config, should_stop=stop, progress=bar.update,
                             on_start=bar.start, on_epoch=on_epoch)
    finally:
        bar.close()
    card = result.card
    metrics = card.validation_metrics
    if card.warning:
        log.warning("%s", card.warning)  # stderr unless --quiet; always the log file
    for warning in training_warnings(card):
        log.warning("%s", warning)
    images = (f"{card.data.n_images} images ({card.split.train.n} train, "
              f"{card.split.validation.n} validation, {card.split.method} split), "
              f"{len(card.data.skipped)} skipped")
    if not quiet:
        _print_training_details(card, result.out_dir, images)
    copies = card.copies.groups if card.copies else 0
    summary = (f"triage train {data_dir}: model {result.out_dir}, {images}, {copies} copy groups; "
               f"validation {metric_summary(metrics)}; threshold {card.threshold:.3f} "
               f"({card.threshold_source}); "
               f"precision {card.features.precision if card.features else 'fp32'}; "
               f"{monotonic() - started:.1f} s")
    log.info("%s", summary)
    click.echo(summary)
    return EXIT_OK


def training_warnings(card: Any) -> list[str]:
    """What a lab must know before trusting the card's validation numbers."""
    warnings = []
    if card.copies and card.copies.validation_with_copy_in_training:
        warnings.append(f"{card.copies.validation_with_copy_in_training} of {card.split.validation.n} "
                        f"validation images have a copy in training: the validation metrics are "
                        f"optimistic (the card's validation_metrics_clean leaves them out)")
    sensitivity = card.metric("sensitivity")
    wanted = card.target_sensitivity
    if wanted is not None and sensitivity is not None and sensitivity[0] < wanted:
        warnings.append(f"validation sensitivity {sensitivity[0]:.3f} falls short of the target {wanted:g}: "
                        f"the threshold was chosen on the training part, so this is an honest estimate")
    return warnings


def _print_training_details(card: Any, out_dir: Path, images: str) -> None:
    from triage.labelled.metrics import format_metric

    click.echo(f"model: {out_dir}")
    click.echo(f"images: {images}")
    for row in card.data.skipped:
        click.echo(f"  skipped {row.path}: {row.reason}")
    if card.copies:
        click.echo(f"copies: {card.copies.groups} groups, {card.copies.files_in_groups} files "
                   f"({card.copies.method}); {card.copies.validation_with_copy_in_training} validation "
                   f"images with a copy in training")
    click.echo(f"threshold: {card.threshold:.4f} ({card.threshold_rule})")
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1"):
        click.echo(f"  validation {name:<12} {format_metric(card.validation_metrics[name])}")
    if card.validation_metrics_clean:
        clean = card.validation_metrics_clean
        click.echo(f"  without copies: accuracy {format_metric(clean['accuracy'])}, "
                   f"roc_auc {format_metric(clean['roc_auc'])}")
    if card.cross_validation:
        cv = card.cross_validation.metrics
        folds = card.cross_validation.folds
        click.echo(f"  {folds}-fold accuracy   {format_metric(cv['accuracy'])}")
        click.echo(f"  {folds}-fold roc_auc    {format_metric(cv['roc_auc'])}")


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_options
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for metrics.json, predictions.csv, roc_curve.png, confusion_matrix.png "
                   "[default: ./evaluation-<model id>].")
@click.option("--positive", default="yes", show_default=True, help="Name of the tumour class sub-folder.")
@click.option("--force", is_flag=True, help="Replace an earlier evaluation in the --out folder.")
@device_option
@precision_option
@runtime_options
@handle_errors
def evaluate(data_dir: Path, model: str | None, threshold: float | None, out: Path | None,
             positive: str, force: bool, device: str, precision: str, batch_size: int | None, quiet: bool,
             log_file: Path | None, verbose: bool) -> int:
    """Measure a model on DATA_DIR (labelled like the training folder).

    Prints accuracy, ROC AUC, sensitivity, specificity, precision and F1 with
    95% confidence intervals, and writes them with a ROC curve and a confusion
    matrix.

    \b
    Example:
      triage evaluate ./labelled_folder --model models/vgg19-20261125-101500-ab12cd
    """
    started = monotonic()
    _setup_logging(quiet, log_file, verbose, data_dir)
    from triage.evaluate.evaluation import evaluate_model
    from triage.labelled.metrics import format_metric
    from triage.quiet import metric_summary

    bar = Progress(_interactive(quiet), desc="evaluate")
    stop = _StopFlag()
    stop.install()
    try:
        result = evaluate_model(data_dir, out, model=model, threshold=threshold, positive=positive,
                                batch_size=batch_size or 16, device=device, precision=precision,
                                force=force, should_stop=stop, on_start=bar.start, progress=bar.update)
    finally:
        bar.close()
    metrics = result.metrics
    skipped = result.report["data"]["skipped"]
    for row in skipped:
        log.warning("skipped %s: %s", row["path"], row["reason"])
    if result.report["model"].get("backbone_weights") == "random":
        log.warning("the model has a RANDOM backbone (tests only); its scores mean nothing.")
    copies = result.report["copies_of_training"]
    if copies:
        clean = result.report["metrics_without_copies"]
        log.warning("%d of %d images are copies of the model's training images: the metrics are "
                    "optimistic; without them (n = %d): %s", copies, metrics["n"], clean["n"],
                    metric_summary(clean))
    cm = metrics["confusion_matrix"]
    if not quiet:
        click.echo(f"model: {result.report['model']['id']}   threshold {metrics['threshold']:.4f}   "
                   f"n = {metrics['n']}")
        for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1"):
            click.echo(f"  {name:<12} {format_metric(metrics[name])}")
        click.echo(f"  confusion    TP {cm['tp']}  FN {cm['fn']}  FP {cm['fp']}  TN {cm['tn']}")
        click.echo(f"written: {result.out_dir}")
    summary = (f"triage evaluate {data_dir}: model {result.report['model']['id']}, {metrics['n']} images, "
               f"{len(skipped)} skipped, {copies} copies of training images; {metric_summary(metrics)}; "
               f"TP {cm['tp']} FN {cm['fn']} FP {cm['fp']} TN {cm['tn']}; "
               f"threshold {metrics['threshold']:.3f}; precision {result.precision}; "
               f"{monotonic() - started:.1f} s -> {result.out_dir}")
    log.info("%s", summary)
    click.echo(summary)
    return EXIT_OK


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("input_dir", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.pdf"),
              show_default=True, help="Report: x.pdf writes x.pdf and x.html; x.html writes HTML only.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV of every file [default: beside the report, same stem].")
@model_options
@click.option("--explain", type=click.Choice(["flagged", "all", "none"]), default="flagged",
              show_default=True, help="Which scans get a Grad-CAM heat map.")
@click.option("--max-report-cases", type=click.IntRange(min=1), default=200, show_default=True,
              help="Flagged cases shown in the PDF at most (the HTML and CSV hold all).")
@click.option("--group-by", type=click.Choice(["auto", "file"]), default="auto", show_default=True,
              help="auto: a DICOM series or a NIfTI volume is one case; file: every file and frame is one.")
@click.option("--aggregate", type=click.Choice(["max", "topk"]), default="max", show_default=True,
              help="A case's score: its highest slice, or the mean of its --top-k highest.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Slices in a topk score, and slices of a flagged case shown with heat maps.")
@click.option("--modality", default="MR", show_default=True, metavar="LIST",
              help="DICOM modalities to score, comma-separated (e.g. MR,OT); others are skipped.")
@device_option
@precision_option
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data (pip install 'triage[ray]'), same outputs.")
@click.option("--ray-address", metavar="ADDRESS", default=None,
              help="Join this running Ray cluster [default: start a local Ray for the run, stop it after].")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model actors of the ray engine.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              help="GPUs each model actor reserves (may be fractional, e.g. 0.5).")
@click.option("--full", is_flag=True, help="Rescan every file, even those unchanged since the last run.")
@click.option("--wait", type=click.FloatRange(min=0), default=0, show_default=True, metavar="SECONDS",
              help="Wait this long for another run writing the same outputs, then give up (exit 4).")
@runtime_options
@handle_errors
def scan(input_dir: Path, out: Path, csv_path: Path | None, model: str | None, threshold: float | None,
         explain: str, max_report_cases: int, group_by: str, aggregate: str, top_k: int, modality: str,
         device: str, precision: str, engine: str, ray_address: str | None, workers: int,
         gpus_per_worker: float, full: bool, wait: float,
         batch_size: int | None, quiet: bool, log_file: Path | None, verbose: bool) -> int:
    """Score every image, DICOM series and NIfTI volume under INPUT_DIR; write the CSVs and the report.

    Every image or slice gets a CSV row: `ok` with a probability, or an error
    status with a reason; every case (series, volume or loose image) a row of
    the cases CSV with its score. Flagged cases get Grad-CAM heat maps of their
    top slices. Runs are incremental: unchanged cases keep their rows from the
    previous run with the same model and settings.

    \b
    Example:
      triage scan ./incoming --out reports/report.pdf
    """
    _setup_logging(quiet, log_file, verbose, input_dir)
    from triage.engine.ray_data import RaySettings
    from triage.scan.folder import ScanOptions
    from triage.scan.run import run_scan

    stop = _StopFlag()
    stop.install()
    bar = Progress(_interactive(quiet), desc="scan")
    log.info("scan %s -> %s", input_dir, out)
    options = ScanOptions(threshold=threshold, explain=explain, batch_size=batch_size or 16, device=device,
                          precision=precision, group_by=group_by, aggregate=aggregate, top_k=top_k,
                          modalities=tuple(m.strip().upper() for m in modality.split(",") if m.strip()),
                          engine=engine, ray=RaySettings(ray_address, workers, gpus_per_worker))
    try:
        result, paths = run_scan(input_dir, out, csv=csv_path, model=model, options=options,
                                 max_report_cases=max_report_cases, full=full, wait=wait,
                                 log_file=log_file, should_stop=stop, on_phase=stop.on_phase,
                                 on_found=bar.start, progress=bar.update)
    finally:
        bar.close()
    counts = result.counts()
    summary = (f"triage scan {input_dir}: {counts['found']} found, {counts['scored']} scored "
               f"({counts['scored_this_run']} this run), {counts['flagged']} flagged, "
               f"{counts['failed']} failed, {counts['skipped']} skipped"
               + (f", {counts['not_scanned']} not scanned (interrupted)" if result.interrupted else "")
               + f"; {counts['cases']} cases ({counts['cases_flagged']} flagged)"
               + (f" in {counts['studies']} studies ({counts['studies_flagged']} flagged)"
                  if counts["studies"] else "")
               + f"; threshold {result.threshold:.3f}; precision {result.model.precision}"
               + f"; {result.seconds:.1f} s"
               + f" -> {paths.pdf or paths.html}")
    log.info("%s", summary)
    click.echo(summary)
    if result.model.random_backbone:  # warnings: stderr unless --quiet; always the log file
        log.warning("the model has a RANDOM backbone (tests only); its scores mean nothing.")
    if counts["failed"]:
        log.warning("%d files could not be read: the CSV says which and why", counts["failed"])
    if not quiet:
        click.echo(RESEARCH_NOTICE, err=True)
    if result.interrupted:
        if stop.pressed_twice:
            log.warning("interrupted twice: every output is this run's, complete for what was scored")
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if counts["failed"] else EXIT_OK


def entry_point() -> None:
    """The installed ``triage`` command: :func:`main`, then signals ignored while Python shuts down.

    Python puts SIGINT/SIGTERM back to their default (death) while it
    finalizes, and unloading TensorFlow takes a moment: a SIGTERM then would
    turn a finished run's exit code into 143. Once the command has returned,
    every output is written, so there is nothing left to stop.
    """
    try:
        main()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
