"""Nothing the user owns is overwritten, outputs agree with each other, environment errors are clean."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from triage.cli import EXIT_LOCKED, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, _StopFlag, main
from triage.hooks import RunHooks
from triage.results.tables import read_csv
from triage.testing import blob_image, mr_slice, write_blob_images


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_blob_images(tmp_path / "in", [f"scan{i}.png" for i in range(4)], seed=4)


def scan(folder: Path, model: Path, *args: str) -> object:
    return CliRunner().invoke(main, ["scan", str(folder), "--model", str(model), "--quiet", *args])


def snapshot(*roots: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- clobbering


@pytest.mark.parametrize("csv, words", [
    ("{model}/model.keras", "inside the model folder"),
    ("{model}/notes.csv", "inside the model folder"),
    ("{out}/r.html", "would both be written"),
    ("{out}/run.json", "would both be written"),
    ("{out}/.r.state.json", "would both be written"),
    ("{out}/r_heatmaps/x.csv", "would both be written"),
    ("{input}/scan0.png", "inside the input folder"),
])
def test_csv_may_not_name_the_model_another_output_or_an_input(
        tmp_path: Path, folder: Path, trained_model: Path, csv: str, words: str) -> None:
    out = tmp_path / "out"
    before = snapshot(trained_model, folder)
    path = csv.format(model=trained_model, out=out, input=folder)
    result = scan(folder, trained_model, "--out", str(out / "r.pdf"), "--csv", path)
    assert result.exit_code == EXIT_USAGE, result.output
    assert words in result.output and "(--csv)" in result.output and "Traceback" not in result.output
    assert snapshot(trained_model, folder) == before
    assert not out.exists()


def test_log_file_inside_the_input_folder_is_refused_before_it_is_opened(
        tmp_path: Path, folder: Path, trained_model: Path) -> None:
    result = scan(folder, trained_model, "--out", str(tmp_path / "r.html"),
                  "--log-file", str(folder / "triage.log"))
    assert result.exit_code == EXIT_USAGE and "(--log-file)" in result.output
    assert not (folder / "triage.log").exists() and not (tmp_path / "r.html").exists()


@pytest.fixture
def own_model(tmp_path: Path, trained_model: Path) -> Path:
    """A copy of the trained model that a test may find damaged."""
    return Path(shutil.copytree(trained_model, tmp_path / "models" / "model"))


def labelled(root: Path) -> Path:
    rng = np.random.default_rng(5)
    for label in ("yes", "no"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(blob_image(rng, label == "yes")).save(root / label / f"{label}{i}.png")
    return root


@pytest.mark.parametrize("command", ["scan", "evaluate", "train"])
@pytest.mark.parametrize("target", ["model_card.json", "model.keras", "notes.log"])
def test_a_log_file_in_a_model_folder_is_refused_before_it_is_opened(
        tmp_path: Path, folder: Path, own_model: Path, command: str, target: str) -> None:
    """Whichever command, and whether or not it uses that model: the model's files stay as they were."""
    before = snapshot(own_model)
    log_file = own_model / target
    if command == "scan":
        args = ["scan", str(folder), "--out", str(tmp_path / "r.html"), "--model", str(own_model)]
    elif command == "evaluate":
        args = ["evaluate", str(labelled(tmp_path / "data")), "--out", str(tmp_path / "eval"),
                "--model", str(own_model)]
    else:
        args = ["train", str(labelled(tmp_path / "data")), "--out", str(tmp_path / "new-model"),
                "--backbone-weights", "random", "--image-size", "32", "--epochs", "1"]
    result = CliRunner().invoke(main, [*args, "--log-file", str(log_file), "--quiet"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "model folder" in result.output and "(--log-file)" in result.output
    assert "Traceback" not in result.output
    assert snapshot(own_model) == before and (target != "notes.log" or not log_file.exists())
    assert not any((tmp_path / name).exists() for name in ("r.html", "eval", "new-model"))


@pytest.mark.parametrize("out, words", [
    ("{model}", "inside the model folder"),
    ("{model}/evaluation", "inside the model folder"),
    ("{model_parent}", "would hold the model"),
    ("{data}/evaluation", "inside the data folder"),
    ("{data}/yes/evaluation", "inside the data folder"),
    ("{tmp}", "would hold the data folder"),
])
def test_evaluate_never_writes_in_or_over_the_model_or_the_data(
        tmp_path: Path, own_model: Path, out: str, words: str) -> None:
    data = labelled(tmp_path / "data")
    before = snapshot(own_model, data)
    path = out.format(model=own_model, model_parent=own_model.parent, data=data, tmp=tmp_path)
    result = CliRunner().invoke(main, ["evaluate", str(data), "--model", str(own_model), "--out", path,
                                       "--force", "--quiet"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert words in result.output and "(--out)" in result.output and "Traceback" not in result.output
    assert snapshot(own_model, data) == before
    assert sorted(p.name for p in data.rglob("*")) == ["no", "no0.png", "no1.png",
                                                       "yes", "yes0.png", "yes1.png"]


def test_evaluate_force_replaces_an_earlier_evaluation_only(tmp_path: Path, own_model: Path) -> None:
    data = labelled(tmp_path / "data")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    args = ["evaluate", str(data), "--model", str(own_model), "--quiet"]
    result = CliRunner().invoke(main, [*args, "--out", str(mine), "--force"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "thesis.txt" in result.output and (mine / "thesis.txt").read_text() == "years of work"

    earlier = tmp_path / "earlier"
    assert CliRunner().invoke(main, [*args, "--out", str(earlier)]).exit_code == EXIT_OK
    first = (earlier / "run.json").read_bytes()
    assert CliRunner().invoke(main, [*args, "--out", str(earlier), "--force"]).exit_code == EXIT_OK
    assert (earlier / "run.json").read_bytes() != first


def test_the_lock_covers_the_csv_folder_too(tmp_path: Path, folder: Path, trained_model: Path) -> None:
    """A run writing its CSV where another run holds the lock waits, whatever its --out."""
    from triage.outputs.lock import OutputLock

    shared = tmp_path / "shared"
    with OutputLock(shared / ".triage.lock"):
        result = scan(folder, trained_model, "--out", str(tmp_path / "mine" / "r.html"),
                      "--csv", str(shared / "r.csv"))
    assert result.exit_code == EXIT_LOCKED, result.output
    assert not (shared / "r.csv").exists() and not (tmp_path / "mine" / "r.html").exists()
    assert scan(folder, trained_model, "--out", str(tmp_path / "mine" / "r.html"),
                "--csv", str(shared / "r.csv")).exit_code == EXIT_OK


# --------------------------------------------------------------------------- incremental runs


@pytest.mark.parametrize("change", [
    {}, {"top_k": 2}, {"aggregate": "topk"}, {"group_by": "file"}, {"modalities": ("MR", "CT")},
    {"explain": "all"}, "decoder",
])
def test_every_setting_that_changes_a_row_or_a_case_rescans(
        tmp_path: Path, folder: Path, trained_model: Path, change: object) -> None:
    """Rows are reused only from a run with the same settings; a run with other ones rescans all."""
    import dataclasses
    import json

    from triage.scan.folder import ScanOptions
    from triage.scan.run import run_scan

    for i in range(3):
        mr_slice(folder / "series" / f"IM{i}", study="1.2.3", series="1.2.3.4", z=i)
    out = tmp_path / "out" / "r.html"
    first, _ = run_scan(folder, out, model=trained_model)
    assert first.scored_this_run == first.scored == 7
    options = ScanOptions()
    if change == "decoder":  # the state of a run whose decoder gave other pixels
        state = out.parent / ".r.state.json"
        saved = json.loads(state.read_text())
        saved["settings"]["decoder"] = -1
        state.write_text(json.dumps(saved))
    else:
        options = dataclasses.replace(options, **change)
    again, _ = run_scan(folder, out, model=trained_model, options=options)
    assert again.scored_this_run == (0 if change == {} else again.scored)
    assert again.scored >= 7


def test_failed_rows_are_scored_again_in_an_incremental_run(
        tmp_path: Path, folder: Path, trained_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that could not be read once (a decoder missing, a permission) is tried again."""
    import triage.engine.predictor
    from triage.errors import ImageLoadError

    real = triage.engine.predictor.decode_file

    def no_decoder_for_scan1(path: Path, digest: str, data: bytes) -> object:
        if path.name == "scan1.png":
            raise ImageLoadError("unreadable", "no decoder for this file")
        return real(path, digest, data)

    monkeypatch.setattr(triage.engine.predictor, "decode_file", no_decoder_for_scan1)
    report = tmp_path / "out" / "r.html"
    assert scan(folder, trained_model, "--out", str(report)).exit_code == 1
    rows = {row["path"]: row for row in read_csv(report.with_suffix(".csv"))}
    assert rows["scan1.png"]["status"] == "unreadable"
    monkeypatch.setattr(triage.engine.predictor, "decode_file", real)
    assert scan(folder, trained_model, "--out", str(report)).exit_code == EXIT_OK
    rows = {row["path"]: row for row in read_csv(report.with_suffix(".csv"))}
    assert rows["scan1.png"]["status"] == "ok" and rows["scan1.png"]["probability"]


# --------------------------------------------------------------------------- signals


def test_a_second_ctrl_c_while_writing_lets_the_outputs_finish() -> None:
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = _StopFlag()
    stop.install()
    try:
        stop.on_phase("scanning")
        os.kill(os.getpid(), signal.SIGINT)
        assert stop() and not stop.pressed_twice
        with pytest.raises(KeyboardInterrupt):  # before writing: stop at once, nothing replaced
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        stop.on_phase("writing")
        os.kill(os.getpid(), signal.SIGINT)  # while writing: no exception, the outputs finish
        time.sleep(0.1)
        assert stop.pressed_twice
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def test_phases_are_reported_in_order(tmp_path: Path, folder: Path, trained_model: Path) -> None:
    from triage.scan.run import run_scan

    phases: list[str] = []
    run_scan(folder, tmp_path / "r.html", model=trained_model, hooks=RunHooks(on_phase=phases.append))
    assert phases == ["scanning", "writing", "written"]


@pytest.mark.parametrize("full", [True, False])  # False: every case is carried over, nothing to score
def test_a_stop_while_the_files_are_listed_and_sorted_changes_no_output(
        tmp_path: Path, folder: Path, trained_model: Path, full: bool) -> None:
    from triage.errors import Stopped
    from triage.scan.run import run_scan

    out = tmp_path / "out" / "r.html"
    run_scan(folder, out, model=trained_model)
    before = {path: data for path, data in snapshot(out.parent).items() if path.name != ".triage.lock"}
    phases: list[str] = []
    stopped_once_scanning = RunHooks(should_stop=lambda: "scanning" in phases, on_phase=phases.append)
    with pytest.raises(Stopped, match="no output was changed"):
        run_scan(folder, out, model=trained_model, full=full, hooks=stopped_once_scanning)
    after = {path: data for path, data in snapshot(out.parent).items() if path.name != ".triage.lock"}
    assert after == before and phases == ["scanning"]


# The scan of the SIGTERM test below. Once its outputs are written it waits until the test's SIGTERM
# has reached its handler; while Python shuts down (signal handlers back to the default), an object
# of __main__ sends it another SIGTERM as the modules are torn down.
WAIT_FOR_SIGTERM_WHEN_WRITTEN = """
import os, signal, time
from triage import cli

class KillAtShutdown:
    def __init__(self):
        self.kill, self.pid, self.signal = os.kill, os.getpid(), signal.SIGTERM

    def __del__(self):
        self.kill(self.pid, self.signal)

phase = cli._StopFlag.on_phase

def on_phase(self, name):
    phase(self, name)
    if name == "written":
        print("written", flush=True)
        deadline = time.monotonic() + 120
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.01)
        print("stopping" if self.stopping else "no signal came", flush=True)

cli._StopFlag.on_phase = on_phase
at_shutdown = KillAtShutdown()
cli.entry_point()
"""


@pytest.mark.slow  # a real process, which imports TensorFlow
def test_sigterm_after_the_outputs_are_written_exits_zero(tmp_path: Path, folder: Path,
                                                         trained_model: Path) -> None:
    """A SIGTERM once the outputs are written, before the command returns or while Python shuts
    down, leaves exit code 0 (both surely arrive: the process waits for the first, and sends itself
    the second)."""
    report = tmp_path / "out" / "r.html"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WAIT_FOR_SIGTERM_WHEN_WRITTEN, "scan", str(folder),
                             "--out", str(report), "--model", str(trained_model), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line == "written\n", proc.communicate(timeout=120)
        assert (tmp_path / "out" / "run.json").is_file()
        proc.send_signal(signal.SIGTERM)  # the process is waiting for it
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stdout.startswith("stopping\n"), (stdout, stderr)  # its handler had the signal
    assert proc.returncode == EXIT_OK, stderr
    assert "4 found, 4 scored" in stdout


# --------------------------------------------------------------------------- environment errors


def _outputs_then_failure(tmp_path: Path, folder: Path, trained_model: Path, monkeypatch: pytest.MonkeyPatch,
                          target: str, error: OSError) -> tuple[object, dict[Path, bytes], Path]:
    """A good run, then one whose file system refuses: the result, the first outputs, the folder."""
    out = tmp_path / "out"
    assert scan(folder, trained_model, "--out", str(out / "r.pdf")).exit_code == EXIT_OK
    before = snapshot(out)

    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(target, refuse)
    result = scan(folder, trained_model, "--out", str(out / "r.pdf"), "--full")
    monkeypatch.undo()
    return result, before, out


@pytest.mark.parametrize("target, error", [
    ("triage.outputs.atomic.os.replace", OSError(errno.EROFS, "Read-only file system", "r.csv")),
    ("triage.outputs.atomic.os.fsync", OSError(errno.ENOSPC, "No space left on device")),
    ("triage.outputs.lock.os.open", PermissionError(errno.EACCES, "Permission denied", ".triage.lock")),
])
def test_file_system_refusals_are_one_sentence_and_keep_the_previous_outputs(
        tmp_path: Path, folder: Path, trained_model: Path, monkeypatch: pytest.MonkeyPatch,
        target: str, error: OSError) -> None:
    result, before, out = _outputs_then_failure(tmp_path, folder, trained_model, monkeypatch, target, error)
    assert result.exit_code == EXIT_OUTPUT, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and error.strerror in lines[0] and "Traceback" not in result.output
    after = snapshot(out)
    assert {p: b for p, b in after.items() if "_heatmaps" not in p.parts[-2]} == \
        {p: b for p, b in before.items() if "_heatmaps" not in p.parts[-2]}
    assert not [p for p in out.rglob("*.tmp")]


def test_a_name_too_long_is_one_sentence(tmp_path: Path, folder: Path, trained_model: Path) -> None:
    result = scan(folder, trained_model, "--out", str(tmp_path / ("r" * 300 + ".html")))
    assert result.exit_code == EXIT_OUTPUT, result.output
    assert "File name too long" in result.output and "Traceback" not in result.output


def test_a_failed_heat_map_write_is_raised_and_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from triage.engine.heatmaps import HeatmapWriter

    writer = HeatmapWriter(tmp_path, tmp_path, "tag")
    pixels, cam = np.zeros((64, 64, 3), np.uint8), np.zeros((8, 8), np.float32)

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "full")

    monkeypatch.setattr("triage.engine.heatmaps.os.replace", disk_full)
    with pytest.raises(OSError, match="full"):
        try:
            for i in range(40):
                writer.submit(f"{i:064x}", pixels, cam)
        finally:
            writer.close()
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.png"))


def test_the_heat_map_writer_threads_write_every_image_and_copies_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from triage.engine.heatmaps import HeatmapWriter

    writes, write = [], HeatmapWriter._write

    def counted(*args: object) -> None:
        writes.append(args[2])
        write(*args)

    monkeypatch.setattr(HeatmapWriter, "_write", staticmethod(counted))
    writer = HeatmapWriter(tmp_path, tmp_path, "tag", threads=4)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8) for i in range(12)]
    names = [writer.submit(f"{i:02d}" * 32, image, rng.random((4, 4))) for i, image in enumerate(images)]
    assert writer.submit("00" * 32, images[0], rng.random((4, 4))) == names[0]  # a copy of the first image
    writer.close()
    assert len(writes) == 12
    for (overlay, original), image in zip(names, images):
        assert cv2.imread(str(tmp_path / overlay)).shape == image.shape
        assert cv2.imread(str(tmp_path / original)).shape == image.shape
