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

from triage import RESEARCH_NOTICE, __version__, settings
from triage.errors import LockHeld, ModelError, OutputError, Stopped, TriageError, UsageError

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 5
EXIT_OUTPUT = 6
EXIT_NOT_SENT = 7
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
  {EXIT_NOT_SENT}   the scan's outputs are written, but some DICOM objects could not be sent (--send):
      they stay in the --dicom-out folder and the next run sends them (run.json says why)
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


def _setup_logging(quiet: bool, log_file: Path | None, verbose: bool, check_writes: WritesCheck) -> None:
    """Console and log-file handlers; the log file is checked like an output before it is opened."""
    from triage.quiet import silence_libraries

    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.ERROR if quiet else logging.WARNING)
    console.setFormatter(logging.Formatter("triage: %(message)s"))
    log.addHandler(console)
    if log_file:
        check_writes([("the log file", "log_file", log_file)])
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    silence_libraries(verbose, log_file)  # before TensorFlow is imported


# Checks a command's outputs, given the log file's entry (what, option, path), before anything is opened.
WritesCheck = Callable[[list[tuple[str, str, Path]]], None]


def _train_writes(data_dir: Path, out: Path | None) -> WritesCheck:
    def check(logs: list[tuple[str, str, Path]]) -> None:
        from triage.model.loading import check_run_writes

        model = [("the model folder", "out", out)] if out else []
        check_run_writes(logs + model, ("the data folder", data_dir))

    return check


def _evaluate_writes(data_dir: Path, out: Path | None, model: str | None) -> WritesCheck:
    def check(logs: list[tuple[str, str, Path]]) -> None:
        from triage.evaluate.evaluation import evaluation_folder
        from triage.model.loading import check_run_writes

        folder = _model_folder(model)
        written = [("the evaluation folder", "out", evaluation_folder(out, folder))] if folder else []
        check_run_writes(logs + written, ("the data folder", data_dir), folder)

    return check


def _scan_writes(input_dir: Path, out: Path, csv: Path | None, model: str | None) -> WritesCheck:
    def check(logs: list[tuple[str, str, Path]]) -> None:
        from triage.model.loading import check_run_writes
        from triage.scan.run import OutputPaths

        written = OutputPaths.for_report(out, csv).written()
        check_run_writes(written + logs, ("the input folder", input_dir), _model_folder(model))

    return check


def _model_folder(model: str | None) -> Path | None:
    """The model folder the command will use; None when there is none (the command then says so, and the
    log file, kept out of every model folder anyway, records it)."""
    from triage.model.loading import find_model

    try:
        return find_model(model)
    except ModelError:
        return None


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
    are either all the previous run's or all this run's. While DICOM objects
    are sent (``"sending"``) the first one already stops after the current
    object; the rest stay in the DICOM folder for the next run.
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
                if self.phase in ("starting", "scanning"):
                    raise KeyboardInterrupt  # a second Ctrl-C: stop now, outputs untouched
                log.warning("SIGINT again: finishing the outputs already being written"
                            if self.phase == "writing" else "SIGINT again: stopping after this object")
                return
            self.stopping = True
            log.warning("%s received: stopping after the current batch", signal.Signals(signum).name)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def _interactive(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class CommandRun:
    """What every command does around its library call: logging, the stop flag, progress, the summary."""

    def __init__(self, quiet: bool, log_file: Path | None, verbose: bool, check_writes: WritesCheck,
                 desc: str) -> None:
        self.started = monotonic()
        self.quiet = quiet
        self.interactive = _interactive(quiet)
        _setup_logging(quiet, log_file, verbose, check_writes)
        self.stop = _StopFlag()
        self.stop.install()
        self.bar = Progress(self.interactive, desc=desc)

    def hooks(self, **more: Any) -> Any:
        """The library's :class:`triage.hooks.RunHooks`: this run's stop flag and progress bar."""
        from triage.hooks import RunHooks

        return RunHooks(should_stop=self.stop, on_start=self.bar.start, advance=self.bar.update,
                        on_phase=self.stop.on_phase, **more)

    def seconds(self) -> float:
        return monotonic() - self.started

    def summary(self, line: str) -> None:
        """The one line on stdout (also with --quiet), and in the log file."""
        log.info("%s", line)
        click.echo(line)


def runtime_options(batch_size: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--batch-size (with this command's default), --quiet, --log-file, --verbose: every command's."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed([
            click.option("--batch-size", type=click.IntRange(min=1), default=batch_size, show_default=True,
                         help="Images per forward pass."),
            click.option("--quiet", "-q", is_flag=True,
                         help="No progress bars; only errors and the summary."),
            click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
                         help="Append a timestamped log of the run to this file."),
            click.option("--verbose", is_flag=True,
                         help="Also show TensorFlow's and the other libraries' messages on stderr."),
        ]):
            command = option(command)
        return command

    return decorate


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


def choice(name: str, choices: tuple[str, ...], help: str) -> Callable[[Callable[..., Any]], Any]:
    """An option whose choices and default (the first choice) come from :mod:`triage.settings`."""
    return click.option(name, type=click.Choice(choices), default=choices[0], show_default=True, help=help)


device_option = choice("--device", settings.DEVICES,
                       "auto uses a GPU when TensorFlow sees one (with XLA), else the CPU.")
precision_option = choice(
    "--precision", settings.PRECISIONS,
    "fp32 exact; bf16 mixed bfloat16 (GPU, or a CPU with native bfloat16); fp16 mixed float16 (GPU "
    "only); int8 OpenVINO (CPU, pip install 'triage[openvino]'). A reduced precision needs `triage "
    "precisions` first; rows near the threshold are scored again in fp32. auto: the precision this "
    "machine runs natively that `triage precisions` measured fastest, re-scoring counted, else fp32 "
    "(train: fp16 on a GPU).")


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
@click.option("--epochs", type=click.IntRange(min=1), default=settings.EPOCHS, show_default=True)
@click.option("--image-size", type=click.IntRange(min=settings.MIN_IMAGE_SIZE), default=settings.IMAGE_SIZE,
              show_default=True, help="Side of the square images are resized to.")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=settings.VAL_SPLIT, show_default=True, help="Share of images held out for validation.")
@click.option("--seed", type=int, default=settings.SEED, show_default=True, help="Split and training seed.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=settings.LEARNING_RATE,
              show_default=True, help="Adam learning rate.")
@click.option("--l2", type=click.FloatRange(min=0), default=settings.L2, show_default=True,
              help="L2 factor of the dense layers (recorded in the model card).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=settings.DROPOUT,
              show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=settings.THRESHOLD, show_default=True,
              help="Decision threshold on the network's raw output, stored in the model with its "
                   "calibrated value.")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Instead of --threshold: the highest threshold whose sensitivity is >= S with "
                   "probability >= --confidence, certified (Learn-then-Test) on out-of-fold predictions "
                   "of the training part, never the validation set; exit 2 when the data cannot.")
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=settings.CONFIDENCE, show_default=True,
              help="With --target-sensitivity: the probability that the sensitivity holds.")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="Also K-fold cross-validate the head on the kept features (copy groups kept whole, "
                   "the threshold rule nested in each fold); metrics go in the card.")
@choice("--split", settings.SPLITS,
        "grouped keeps copies of one scan on one side; keras is the thesis's file-for-file split.")
@click.option("--positive", default=settings.POSITIVE_CLASS, show_default=True,
              help="Name of the tumour class sub-folder; the other one is the negative class.")
@click.option("--backbone-weights", default=settings.BACKBONE_WEIGHTS, show_default=True,
              metavar="imagenet|random|PATH",
              help="ImageNet weights from Keras's cache (or its download), a local .h5 file, "
                   "or `random` (tests and smoke runs only).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
@precision_option
@runtime_options(settings.TRAIN_BATCH_SIZE)
@handle_errors
def train(data_dir: Path, out: Path | None, no_cache: bool, quiet: bool, log_file: Path | None,
          verbose: bool, **config: Any) -> int:
    """Train the classifier on DATA_DIR (one sub-folder per class: yes/ and no/).

    The frozen backbone runs once per image (features are cached); the head
    trains on the kept features; a calibration map is fitted on out-of-fold
    predictions; the whole network is saved with its map, a model card, training
    curves and a reliability diagram.

    \b
    Example:
      triage train ../brain_tumor_dataset --epochs 30
      triage train ../brain_tumor_dataset --target-sensitivity 0.9 --confidence 0.9
    """
    run = CommandRun(quiet, log_file, verbose, _train_writes(data_dir, out), desc="features")
    from triage.train.training import TrainConfig, train_model

    if config["target_sensitivity"] is None and _given("confidence"):
        raise UsageError("A confidence is the probability that a target sensitivity holds: give one.",
                         option="target_sensitivity")

    log.info("train %s", data_dir)
    try:
        result = train_model(data_dir, out, TrainConfig(**config, cache=not no_cache),
                             hooks=run.hooks(on_epoch=_epoch_printer(run, config["epochs"])))
    finally:
        run.bar.close()
    card = result.card
    for warning in ([card.warning] if card.warning else []) + training_warnings(card):
        log.warning("%s", warning)  # stderr unless --quiet; always the log file
    if not quiet:
        _print_training_details(card, result.out_dir)
    run.summary(_training_summary(data_dir, result.out_dir, card, run.seconds()))
    return EXIT_OK


def _given(name: str) -> bool:
    """Whether the option ``name`` of the running command was given on the command line."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE


def _epoch_printer(run: CommandRun, epochs: int) -> Callable[[int, dict[str, float]], None]:
    """One line per epoch on a terminal; the feature bar ends with the first epoch."""

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        if epoch == 1:
            run.bar.close()
        if run.interactive:
            click.echo(f"epoch {epoch:>3}/{epochs}  loss {logs.get('loss', 0):.4f}  "
                       f"acc {logs.get('accuracy', 0):.3f}  val_loss {logs.get('val_loss', 0):.4f}  "
                       f"val_acc {logs.get('val_accuracy', 0):.3f}", err=True)

    return on_epoch


def _images_line(card: Any) -> str:
    return (f"{card.data.n_images} images ({card.split.train.n} train, "
            f"{card.split.validation.n} validation, {card.split.method} split), "
            f"{len(card.data.skipped)} skipped")


def _training_summary(data_dir: Path, out_dir: Path, card: Any, seconds: float) -> str:
    from triage.labelled.metrics import metric_summary

    copies = card.copies.groups if card.copies else 0
    return (f"triage train {data_dir}: model {out_dir}, {_images_line(card)}, {copies} copy groups; "
            f"validation {metric_summary(card.validation_metrics)}; threshold {card.threshold:.3f} "
            f"({card.threshold_source}{_raw_threshold(card)}); "
            f"precision {card.features.precision if card.features else 'fp32'}; {seconds:.1f} s")


def _raw_threshold(card: Any) -> str:
    """``; 0.500 on the raw output`` when the card's threshold went through a calibration map."""
    calibration = card.calibration
    if calibration is None or calibration.fitted is None:
        return ""
    return f"; {calibration.raw_threshold:.3f} on the raw output"


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
                        f"the threshold was certified on the training part, and this estimate on "
                        f"{sensitivity[3]} validation tumour images carries its own interval")
    return warnings


def _print_training_details(card: Any, out_dir: Path) -> None:
    from triage.labelled.calibration import calibration_summary
    from triage.labelled.metrics import format_metric
    from triage.model.summary import calibration_sentence, certified_sentence

    click.echo(f"model: {out_dir}")
    click.echo(f"images: {_images_line(card)}")
    for row in card.data.skipped:
        click.echo(f"  skipped {row.path}: {row.reason}")
    if card.copies:
        click.echo(f"copies: {card.copies.groups} groups, {card.copies.files_in_groups} files "
                   f"({card.copies.method}); {card.copies.validation_with_copy_in_training} validation "
                   f"images with a copy in training")
    click.echo(f"threshold: {card.threshold:.4f} ({card.threshold_rule})")
    if card.certificate:
        click.echo(f"certified: {certified_sentence(card)}")
    click.echo(f"calibration: {calibration_sentence(card)}")
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
        if card.cross_validation.calibration:
            measured = calibration_summary(card.cross_validation.calibration)
            click.echo(f"  {folds}-fold calibration (raw -> calibrated) {measured}")


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_options
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for metrics.json, predictions.csv, roc_curve.png, confusion_matrix.png "
                   "[default: ./evaluation-<model id>].")
@click.option("--positive", default=settings.POSITIVE_CLASS, show_default=True,
              help="Name of the tumour class sub-folder.")
@click.option("--force", is_flag=True, help="Replace an earlier evaluation in the --out folder.")
@device_option
@precision_option
@runtime_options(settings.SCAN_BATCH_SIZE)
@handle_errors
def evaluate(data_dir: Path, out: Path | None, quiet: bool, log_file: Path | None, verbose: bool,
             **settings_: Any) -> int:
    """Measure a model on DATA_DIR (labelled like the training folder).

    Prints accuracy, ROC AUC, sensitivity, specificity, precision and F1 with
    95% confidence intervals, and writes them with a ROC curve and a confusion
    matrix.

    \b
    Example:
      triage evaluate ./labelled_folder --model models/vgg19-20261125-101500-ab12cd
    """
    run = CommandRun(quiet, log_file, verbose, _evaluate_writes(data_dir, out, settings_.get("model")),
                     desc="evaluate")
    from triage.evaluate.evaluation import evaluate_model

    try:
        result = evaluate_model(data_dir, out, **settings_, hooks=run.hooks())
    finally:
        run.bar.close()
    for warning in _evaluation_warnings(result):
        log.warning("%s", warning)
    if not quiet:
        _print_evaluation(result)
    run.summary(_evaluation_summary(data_dir, result, run.seconds()))
    return EXIT_OK


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--model", "-m", "model", metavar="DIR",
              help="Model folder from `triage train` [default: $TRIAGE_MODEL, else the newest "
                   "under models/].")
@click.option("--positive", default=settings.POSITIVE_CLASS, show_default=True,
              help="Name of the tumour class sub-folder.")
@device_option
@runtime_options(settings.SCAN_BATCH_SIZE)
@handle_errors
def precisions(data_dir: Path, quiet: bool, log_file: Path | None, verbose: bool,
              **settings_: Any) -> int:
    """Measure the model's reduced precisions against fp32 on DATA_DIR (the folder it was trained on).

    Each precision this machine runs (bf16 with native bfloat16 or a GPU, fp16 on a GPU, int8 where
    OpenVINO is installed) scores the card's validation files; the differences and the fp32 safety
    net's margin go into the model card. The int8 network is built first: quantised by NNCF,
    calibrated on the training files, written beside the model.

    \b
    Example:
      triage precisions ./brain_tumor_dataset --model models/vgg19-20261125-101500-ab12cd
    """
    run = CommandRun(quiet, log_file, verbose, data_dir, desc="precisions")
    from triage.train.fast_paths import measure_precisions

    card = measure_precisions(data_dir, **settings_)
    run.summary(_precisions_summary(data_dir, card, run.seconds()))
    return EXIT_OK


def _precisions_summary(data_dir: Path, card: Any, seconds: float) -> str:
    measured = "; ".join(
        f"{p.precision}: max |dp| {p.max_dp:.4f} (median {p.median_dp:.4f}), {p.flips} of {p.n} decisions "
        f"would flip, fp32 within logit margin {p.margin:.3f} ({p.near_share:.0%} of them), "
        f"{p.speedup:.2f}x fp32's speed, {p.cost:.2f} of its time with the re-scoring"
        for p in card.fast_paths)
    return (f"triage precisions {data_dir}: model {card.model_id}; "
            f"{measured or 'no reduced precision runs on this machine'}; {seconds:.1f} s")


def _evaluation_warnings(result: Any) -> list[str]:
    from triage.labelled.metrics import metric_summary

    warnings = [f"skipped {row['path']}: {row['reason']}" for row in result.skipped]
    warnings += [f"not read {row['path']}: {row['reason']}" for row in result.not_read
                 if row["status"] == "skipped"]  # scans; files that are no images are only counted
    if result.model.random_backbone:
        warnings.append("the model has a RANDOM backbone (tests only); its scores mean nothing.")
    if result.copies_of_training:
        clean = result.metrics_without_copies
        warnings.append(f"{len(result.copies_of_training)} of {result.metrics['n']} images are copies of the "
                        f"model's training images: the metrics are optimistic; without them "
                        f"(n = {clean['n']}): {metric_summary(clean)}")
    return warnings


def _print_evaluation(result: Any) -> None:
    from triage.labelled.calibration import format_calibration
    from triage.labelled.metrics import format_metric

    metrics = result.metrics
    cm = metrics["confusion_matrix"]
    click.echo(f"model: {result.model.id}   threshold {result.threshold:.4f}   n = {metrics['n']}")
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1"):
        click.echo(f"  {name:<12} {format_metric(metrics[name])}")
    click.echo(f"  confusion    TP {cm['tp']}  FN {cm['fn']}  FP {cm['fp']}  TN {cm['tn']}")
    if result.unfamiliar is not None:
        click.echo(f"  unfamiliar   {format_metric(result.unfamiliar)}  (share called unlike the "
                   f"model's training images)")
    click.echo(f"calibration: {result.model.calibration}")
    for line in format_calibration(result.calibration):
        click.echo(f"  {line}")
    click.echo(f"written: {result.out_dir}")


def _unfamiliar_share(share: dict[str, Any] | None) -> str:
    if share is None:
        return "no familiarity check; "
    return (f"unfamiliar {share['value']:.3f} [{share['ci_low']:.3f}, {share['ci_high']:.3f}] "
            f"of {share['n']}; ")


def _evaluation_summary(data_dir: Path, result: Any, seconds: float) -> str:
    from triage.labelled.calibration import calibration_summary
    from triage.labelled.metrics import metric_summary

    metrics = result.metrics
    cm = metrics["confusion_matrix"]
    return (f"triage evaluate {data_dir}: model {result.model.id}, {metrics['n']} images, "
            f"{len(result.skipped)} skipped, {len(result.not_read)} not read (no 2D image file), "
            f"{len(result.copies_of_training)} copies of training images; "
            f"{metric_summary(metrics)}; TP {cm['tp']} FN {cm['fn']} FP {cm['fp']} TN {cm['tn']}; "
            f"calibration {calibration_summary(result.calibration)}; "
            f"{_unfamiliar_share(result.unfamiliar)}"
            f"threshold {result.threshold:.3f}; {_precision_words(result.model, result.rescored)}; "
            f"{seconds:.1f} s -> {result.out_dir}")


def _precision_words(model: Any, rescored: int) -> str:
    """``precision int8 (auto), 12 re-scored in fp32``: what ran, and what the safety net did."""
    words = f"precision {model.precision}"
    if model.auto_precision:
        words += f" (auto: {model.auto_reason})" if model.auto_reason else " (auto)"
    return words + (f", {rescored} re-scored in fp32" if model.precision != "fp32" else "")


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("input_dir", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.pdf"),
              show_default=True, help="Report: x.pdf writes x.pdf and x.html; x.html writes HTML only.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV of every file [default: beside the report, same stem].")
@model_options
@choice("--explain", settings.EXPLAIN, "Which scans get a Grad-CAM heat map.")
@click.option("--max-report-cases", type=click.IntRange(min=1), default=settings.MAX_REPORT_CASES,
              show_default=True, help="Flagged cases shown in the PDF at most (the HTML and CSV hold all).")
@choice("--group-by", settings.GROUP_BY,
        "auto: a DICOM series or a NIfTI volume is one case; file: every file and frame is one.")
@choice("--aggregate", settings.AGGREGATES,
        "A case's score: its highest slice, or the mean of its --top-k highest.")
@click.option("--top-k", type=click.IntRange(min=1), default=settings.TOP_K, show_default=True,
              help="Slices in a topk score, and slices of a flagged case shown with heat maps.")
@click.option("--modality", default=",".join(settings.MODALITIES), show_default=True, metavar="LIST",
              help="DICOM modalities to score, comma-separated (e.g. MR,OT; NONE: images whose header names "
                   "none); others are skipped.")
@device_option
@precision_option
@choice("--engine", settings.ENGINES,
        "local: this process; ray: Ray Data (pip install 'triage[ray]'), same outputs.")
@click.option("--ray-address", metavar="ADDRESS", default=None,
              help="Join this running Ray cluster [default: start a local Ray for the run, stop it after].")
@click.option("--workers", type=click.IntRange(min=1), default=settings.WORKERS, show_default=True,
              help="Model actors of the ray engine.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              help="GPUs each model actor reserves (may be fractional, e.g. 0.5).")
@click.option("--no-familiarity", "familiarity", is_flag=True, flag_value=False, default=True,
              help="Do not check whether images are like the model's training images (no "
                   "ood_distance, nothing marked unfamiliar).")
@click.option("--full", is_flag=True, help="Rescan every file, even those unchanged since the last run.")
@click.option("--wait", type=click.FloatRange(min=0), default=0, show_default=True, metavar="SECONDS",
              help="Wait this long for another run writing the same outputs, then give up (exit 4).")
@click.option("--settle", type=click.FloatRange(min=0), default=0, show_default=True, metavar="SECONDS",
              help="Defer to a later run every case with a file modified in the last SECONDS (a series a "
                   "DICOM receiver is still writing).")
@click.option("--dicom-out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also write DICOM objects of every DICOM case into DIR, in its source study: an SR of the "
                   "verdict, overlays of flagged cases, the study's report as a PDF.")
@click.option("--send", metavar="HOST:PORT",
              help="Send the DICOM objects not yet stored there to this archive (C-STORE); needs --dicom-out "
                   "and --called-ae.")
@click.option("--called-ae", metavar="AET", help="The archive's AE title.")
@click.option("--calling-ae", metavar="AET", default=settings.CALLING_AE, show_default=True,
              help="This tool's AE title when it sends.")
@runtime_options(settings.SCAN_BATCH_SIZE)
@handle_errors
def scan(input_dir: Path, out: Path, csv_path: Path | None, model: str | None, max_report_cases: int,
         full: bool, wait: float, quiet: bool, log_file: Path | None, verbose: bool, dicom_out: Path | None,
         send: str | None, called_ae: str | None, calling_ae: str, **options: Any) -> int:
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
    run = CommandRun(quiet, log_file, verbose, _scan_writes(input_dir, out, csv_path, model), desc="scan")
    from triage.scan.run import run_scan

    dicom = _dicom_options(dicom_out, send, called_ae, calling_ae)
    log.info("scan %s -> %s", input_dir, out)
    try:
        result, paths = run_scan(input_dir, out, csv=csv_path, model=model, options=_scan_options(**options),
                                 max_report_cases=max_report_cases, full=full, wait=wait,
                                 log_file=log_file, hooks=run.hooks(), dicom=dicom)
    finally:
        run.bar.close()
    run.summary(_scan_summary(input_dir, result, paths.pdf or paths.html) + _dicom_summary(result.dicom))
    if result.model.random_backbone:  # warnings: stderr unless --quiet; always the log file
        log.warning("the model has a RANDOM backbone (tests only); its scores mean nothing.")
    if result.model.familiarity == "none":
        log.warning("the model has no familiarity index: images unlike its training images are not marked "
                    "unfamiliar; train it again with this version of triage to get one.")
    if result.failed:
        log.warning("%d files could not be read: the CSV says which and why", result.failed)
    if not quiet:
        click.echo(RESEARCH_NOTICE, err=True)
    if result.interrupted:
        if run.stop.pressed_twice:
            log.warning("interrupted twice: every output is this run's, complete for what was scored")
        return EXIT_INTERRUPTED
    if result.dicom is not None and result.dicom.unsent:
        unsent = result.dicom.unsent
        log.error("%d of %d DICOM objects were not sent to %s (%s); they stay in %s and the next run sends "
                  "them", len(unsent), len(result.dicom.objects), result.dicom.peer, unsent[0].detail,
                  result.dicom.folder)
        return EXIT_NOT_SENT
    return EXIT_SOME_FAILED if result.failed else EXIT_OK


def _dicom_options(folder: Path | None, send: str | None, called_ae: str | None, calling_ae: str) -> Any:
    from triage.dicom_out.options import DicomOptions, Peer
    from triage.errors import UsageError

    if send is None and called_ae is not None:
        raise UsageError("An archive's AE title is of use only with an archive to send to.", option="send")
    return DicomOptions(folder, Peer.parse(send, called_ae, calling_ae) if send is not None else None)


def _dicom_summary(export: Any) -> str:
    """``; DICOM: 7 objects written (3 cases, 1 study...)`` and what was sent, or why nothing was written."""
    if export is None:
        return ""
    counts = export.counts()
    if not counts["cases"]:
        why = (f"cases from no DICOM study: {counts['no_study']} (loose images and NIfTI volumes have none "
               f"to join)" if counts["no_study"] else "no DICOM case was scored")
        if counts["not_scored"]:
            why += f", DICOM cases not scored: {counts['not_scored']}"
        return f"; DICOM: no object written: {why}"
    text = (f"; DICOM: {counts['written']} objects written, {counts['objects']} in {export.folder} "
            f"for {counts['cases']} cases")
    text += f", cases without a study: {counts['no_study']}" if counts["no_study"] else ""
    text += f", {counts['failures']} could not be made (run.json)" if counts["failures"] else ""
    if export.peer:
        text += (f"; sent to {export.peer}: {counts['sent']} stored, {counts['refused']} refused, "
                 f"{counts['unreachable'] + counts['stopped']} not reached")
    return text


def _scan_options(modality: str, ray_address: str | None, workers: int, gpus_per_worker: float,
                  **options: Any) -> Any:
    from triage.engine.ray_data import RaySettings
    from triage.scan.folder import ScanOptions

    modalities = tuple(m.strip().upper() for m in modality.split(",") if m.strip())
    return ScanOptions(**options, modalities=modalities,
                       ray=RaySettings(ray_address, workers, gpus_per_worker))


def _scan_summary(input_dir: Path, result: Any, report: Path) -> str:
    counts = result.counts()
    studies = (f" in {counts['studies']} studies ({counts['studies_flagged']} flagged)"
               if counts["studies"] else "")
    not_scanned = f", {counts['not_scanned']} not scanned (interrupted)" if result.interrupted else ""
    not_scanned += f", {counts['deferred']} deferred (still changing)" if counts["deferred"] else ""
    review = (f"; {counts['cases_need_review']} need review ({counts['cases_flagged']} flagged, "
              f"{counts['cases_unfamiliar']} unfamiliar)" if result.model.familiarity == "checked"
              else f"; familiarity {result.model.familiarity}")
    return (f"triage scan {input_dir}: {counts['found']} found, {counts['scored']} scored "
            f"({counts['scored_this_run']} this run), {counts['flagged']} flagged, "
            f"{counts['failed']} failed, {counts['skipped']} skipped{not_scanned}"
            f"; {counts['cases']} cases ({counts['cases_flagged']} flagged){studies}{review}"
            f"; threshold {result.threshold:.3f}; {_precision_words(result.model, result.rescored_this_run)}"
            f"; {result.seconds:.1f} s -> {report}")


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
