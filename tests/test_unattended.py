"""Unattended runs (issue 4), with real `python -m triage scan` processes and real signals.

Nothing under test is mocked: two runs really contend for the lock, runs are
really SIGKILLed / SIGTERMed / SIGINTed at points detected from the outside
(a file renamed, a heat map written), incremental runs are compared with full
ones, and peak memory is the kernel's count for the child process.

Each process costs a few seconds of TensorFlow import, so every test reuses
its processes for as many assertions as it can.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from triage.cli import EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, EXIT_SOME_FAILED
from triage.results.tables import CSV_COLUMNS, read_csv
from triage.testing import blob_image, write_blob_images

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
SUMMARY = re.compile(r"^triage scan .*: (\d+) found, (\d+) scored \((\d+) this run\), (\d+) flagged, "
                     r"(\d+) failed, (\d+) skipped")


# --------------------------------------------------------------------------- processes


class Cli:
    """Starts `python -m triage scan` with an isolated cache and a given model."""

    def __init__(self, model: Path, home: Path) -> None:
        self.model = model
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if k != "TRIAGE_MODEL"}
        self.env.update(TRIAGE_CACHE=str(home / "cache"), KERAS_HOME=str(home / "keras"),
                        TRIAGE_MODELS=str(home / "models"), TF_CPP_MIN_LOG_LEVEL="2",
                        PYTHONUNBUFFERED="1")
        self.started: list[subprocess.Popen[str]] = []

    def cmd(self, indir: Path, report: Path, *extra: str, model: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "triage", "scan", str(indir), "--out", str(report),
                "--model", str(model or self.model), *extra]

    def start(self, indir: Path, report: Path, *extra: str, model: Path | None = None,
              **popen: object) -> subprocess.Popen[str]:
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self.cmd(indir, report, *extra, model=model), env=self.env,
                                cwd=self.home, text=True, **popen)  # type: ignore[call-overload]
        self.started.append(proc)
        return proc

    def run(self, indir: Path, report: Path, *extra: str, model: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = self.start(indir, report, *extra, model=model)
        stdout, stderr = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def cleanup(self) -> None:
        """Kill whatever a failed test left running (only the processes this object started)."""
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def cli(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    runner = Cli(trained_model, tmp_path_factory.mktemp("cli-home"))
    yield runner
    runner.cleanup()


def wait_until(predicate: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 120,
               interval: float = 0.002) -> bool:
    """Poll ``predicate`` until it holds (True) or ``proc`` ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting on {proc.args}")


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def lock_holder(out: Path) -> str:
    with contextlib.suppress(OSError):
        return (out / ".triage.lock").read_text().split(" ")[0].strip()
    return ""


def inode(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        return path.stat().st_ino
    return None


# --------------------------------------------------------------------------- inputs


def write_images(folder: Path, names: list[str], seed: int, size: int = 48) -> None:
    """Small blob 'scans', every other one with a bright disc (so about half are flagged)."""
    write_blob_images(folder, names, seed=seed, size=size)


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- outputs


@dataclass
class Outputs:
    rows: list[dict[str, str]]
    csv: bytes
    html: bytes
    pdf: bytes | None
    run: dict
    run_bytes: bytes
    state: bytes

    def by_path(self) -> dict[str, dict[str, str]]:
        return {row["path"]: row for row in self.rows}

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts


def check_outputs(out: Path, *, pdf: bool = True, complete: bool = True) -> Outputs:
    """Every output is whole and readable, and every image something refers to exists.

    ``complete``: the outputs come from one finished run, so they must agree with each
    other (after a SIGKILL they may be a mix of the previous run's and the new one's).
    """
    finals = {"report.csv", "report.html", "run.json", ".report.state.json"}
    finals |= {"report.pdf"} if pdf else set()
    for name in finals:
        assert (out / name).is_file(), f"{name} is missing"
    for tmp in out.rglob("*.tmp"):  # temporaries are hidden names, never a final one
        assert tmp.name.startswith(".") and tmp.name not in finals, tmp

    csv_bytes = (out / "report.csv").read_bytes()
    assert csv_bytes.decode("utf-8").splitlines()[0] == ",".join(CSV_COLUMNS)
    assert csv_bytes.endswith(b"\n")
    rows = read_csv(out / "report.csv")
    for row in rows:
        assert row["status"] != "ok" or 0.0 <= float(row["probability"]) <= 1.0, row
        for key in ("heatmap",):
            if row[key]:
                assert (out / row[key]).is_file(), f"CSV names {row[key]}, which is missing"

    html = (out / "report.html").read_bytes()
    assert html.rstrip().endswith(b"</html>"), "truncated HTML"
    for src in re.findall(rb'<img[^>]*\ssrc="([^"]+)"', html):
        if not src.startswith(b"data:"):
            assert (out / unquote(src.decode())).is_file(), f"the HTML shows {src!r}, which is missing"

    pdf_bytes = None
    if pdf:
        pdf_bytes = (out / "report.pdf").read_bytes()
        assert pdf_bytes.startswith(b"%PDF-") and pdf_bytes.rstrip().endswith(b"%%EOF"), "truncated PDF"
        pypdf = pytest.importorskip("pypdf")
        assert len(pypdf.PdfReader(io.BytesIO(pdf_bytes)).pages) >= 1

    run_bytes = (out / "run.json").read_bytes()
    run = json.loads(run_bytes)
    state_bytes = (out / ".report.state.json").read_bytes()
    state = json.loads(state_bytes)
    for case in state["cases"]:  # a later incremental run may carry these rows over
        for key in ("heatmap", "original"):
            if case[key]:
                assert (out / case[key]).is_file(), f"the state names {case[key]}, which is missing"
    if complete:
        assert run["counts"]["found"] == len(rows)
        assert run["counts"]["not_scanned"] == sum(r["status"] == "not_scanned" for r in rows)
        scanned = {r["path"] for r in rows if r["status"] != "not_scanned"}
        assert {c["path"] for c in state["cases"]} == scanned
    return Outputs(rows, csv_bytes, html, pdf_bytes, run, run_bytes, state_bytes)


def exact_rows(outputs: Outputs) -> dict[str, dict]:
    """The state's rows by path: probabilities as the float64 the model gave, not 6 decimals."""
    return {case["path"]: {k: v for k, v in case.items() if k != "new"}
            for case in json.loads(outputs.state)["cases"]}


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {lines}"
    return lines[0]


# --------------------------------------------------------------------------- 1. the lock


@pytest.mark.slow
def test_concurrent_runs_lock_wait_and_killed_holder(cli: Cli, tmp_path: Path) -> None:
    """A second run fails fast (exit 4, one line naming the holder) or waits; a dead holder blocks nothing."""
    indir, out = tmp_path / "in", tmp_path / "out"
    write_images(indir, [f"scan{i:03d}.png" for i in range(60)], seed=1)
    report = out / "report.html"  # HTML only: the PDF is tested elsewhere, and costs seconds

    first = cli.start(indir, report)
    # The first run holds the lock once its pid is in the lock file; freeze it there so
    # the second and third runs meet a live holder however fast the machine is.
    assert wait_until(lambda: lock_holder(out) == str(first.pid), first), finish(first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        code, stdout, stderr = finish(cli.start(indir, report, "--wait", "0"), timeout=120)
        assert code == EXIT_LOCKED, stderr
        message = one_line(stderr)
        assert f"pid {first.pid}" in message and "Traceback" not in stderr
        assert stdout == ""

        waiter_log = tmp_path / "waiter.log"
        waiter = cli.start(indir, report, "--wait", "300", "--log-file", str(waiter_log))
        waiting = lambda: waiter_log.is_file() and "waiting up to" in waiter_log.read_text()  # noqa: E731
        assert wait_until(waiting, waiter), finish(waiter)
        assert waiter.poll() is None

        # SIGTERM while waiting for the lock: give up at once, touch nothing.
        quitter_log = tmp_path / "quitter.log"
        quitter = cli.start(indir, report, "--wait", "300", "--log-file", str(quitter_log))
        assert wait_until(lambda: quitter_log.is_file() and "waiting up to" in quitter_log.read_text(),
                          quitter), finish(quitter)
        quitter.send_signal(signal.SIGTERM)
        code, stdout, stderr = finish(quitter, timeout=60)
        assert code == EXIT_INTERRUPTED and "no output was changed" in stderr, stderr
        assert not (out / "report.csv").exists() and waiter.poll() is None
    finally:
        os.kill(first.pid, signal.SIGCONT)

    code, stdout, stderr = finish(first)
    assert code == EXIT_OK, stderr
    assert "60 found, 60 scored (60 this run)" in stdout
    code, stdout, stderr = finish(waiter)
    assert code == EXIT_OK, stderr
    # It ran after the first one had finished writing: every row carried over.
    assert "60 found, 60 scored (0 this run)" in one_line(stdout)
    log_text = waiter_log.read_text()
    assert log_text.index("waiting up to") < log_text.index("lock taken") < log_text.index("60 found")
    first_outputs = check_outputs(out, pdf=False)
    assert first_outputs.statuses() == {"ok": 60}

    # A holder SIGKILLed while it holds the lock: the kernel frees it, the next run goes ahead.
    doomed = cli.start(indir, report, "--full")
    assert wait_until(lambda: lock_holder(out) == str(doomed.pid), doomed), finish(doomed)
    doomed.kill()
    assert finish(doomed)[0] == -signal.SIGKILL
    assert lock_holder(out) == str(doomed.pid)  # the stale pid is still in the file
    code, stdout, stderr = finish(cli.start(indir, report, "--wait", "0"))
    assert code == EXIT_OK, stderr
    assert check_outputs(out, pdf=False).rows == first_outputs.rows


# --------------------------------------------------------------------------- 2. SIGKILL


@pytest.mark.slow
def test_sigkill_at_any_point_keeps_the_previous_outputs(cli: Cli, tmp_path: Path) -> None:
    """Killed mid-scan, just after the CSV is renamed, while the PDF renders: every output
    stays whole (the previous version or the new one), and a rerun completes."""
    indir, out = tmp_path / "in", tmp_path / "out"
    report, log_file = out / "report.pdf", tmp_path / "kill.log"
    before_names = [f"scan{i:03d}.png" for i in range(100)]
    write_images(indir, before_names, seed=2)
    code, _, stderr = finish(cli.start(indir, report))
    assert code == EXIT_OK, stderr
    first = check_outputs(out)
    assert len(first.rows) == 100

    # The folder changes: 20 new files, 6 deleted.
    write_images(indir, [f"new{i:03d}.png" for i in range(20)], seed=3)
    for name in before_names[:6]:
        (indir / name).unlink()
    after = files_in(indir)

    def log_says(text: str) -> Callable[[], bool]:
        return lambda: log_file.is_file() and text in log_file.read_text()

    def renamed(path: Path) -> Callable[[], bool]:
        old = inode(path)
        return lambda: inode(path) != old

    def scanning() -> Callable[[], bool]:
        ready = log_says("full rescan asked for: scanning everything")
        since: list[float] = []

        def predicate() -> bool:  # 0.3 s into the scan
            if not since and ready():
                since.append(time.monotonic())
            return bool(since) and time.monotonic() - since[0] > 0.3
        return predicate

    # What each kill point must leave untouched (the rest may be the new run's, whole).
    everything = {"CSV", "HTML", "PDF", "run.json", "state"}
    points = [("mid-scan", scanning, everything),
              ("CSV renamed", lambda: renamed(out / "report.csv"), everything - {"CSV"}),
              ("HTML renamed", lambda: renamed(out / "report.html"), {"PDF", "run.json", "state"})]
    previous = first
    for point, make_predicate, untouched in points:
        log_file.unlink(missing_ok=True)
        predicate = make_predicate()  # before the start: it remembers the inode to watch
        proc = cli.start(indir, report, "--full", "--log-file", str(log_file))
        hit = wait_until(predicate, proc)
        proc.kill()
        code, _, stderr = finish(proc)
        assert hit and code == -signal.SIGKILL, f"{point}: the run ended before the kill: {stderr}"
        now = check_outputs(out, complete=False)
        versions = {"CSV": (previous.csv, now.csv), "HTML": (previous.html, now.html),
                    "PDF": (previous.pdf, now.pdf), "run.json": (previous.run_bytes, now.run_bytes),
                    "state": (previous.state, now.state)}
        for name in untouched:
            assert versions[name][0] == versions[name][1], f"killed at {point}: {name} changed"
        if now.csv != previous.csv:
            assert {r["path"] for r in now.rows} == after and now.statuses() == {"ok": len(after)}, point
        else:
            assert now.rows == previous.rows, point
        if point == "mid-scan":
            assert now.rows == first.rows  # the CSV parses with the very rows it had
        previous = now

    # What a run killed while writing leaves: temporaries beside the final names.
    strays = [out / ".report.csv.k1ll3d.tmp", out / ".report.pdf.k1ll3d.tmp",
              out / "report_heatmaps" / ".0123-abcd_gradcam.png.tmp"]
    for stray in strays:
        stray.write_bytes(b"half")
    code, stdout, stderr = finish(cli.start(indir, report))  # the next cron run
    assert code == EXIT_OK, stderr
    assert not any(stray.exists() for stray in strays)  # cleaned up under the lock
    final = check_outputs(out)
    assert {r["path"] for r in final.rows} == after and final.statuses() == {"ok": len(after)}
    assert final.run["counts"]["found"] == len(after) and not final.run["interrupted"]
    # Rows of files that never changed are the first run's, to the last digit and heat map.
    old_rows, old_exact, final_exact = first.by_path(), exact_rows(first), exact_rows(final)
    for path, row in final.by_path().items():
        if path in old_rows:
            assert row == old_rows[path], path
            assert final_exact[path] == old_exact[path], path  # float64, whatever the batching
    referenced = {Path(r["heatmap"]).name for r in final.rows if r["heatmap"]}
    state = json.loads(final.state)
    referenced |= {Path(c["original"]).name for c in state["cases"] if c["original"]}
    assert {p.name for p in (out / "report_heatmaps").iterdir()} == referenced  # no orphans left


# --------------------------------------------------------------------------- 3. SIGTERM / SIGINT


def _check_interrupted(out: Path, code: int, stdout: str, stderr: str, everything: set[str],
                       pdf: bool = False) -> Outputs:
    assert code == EXIT_INTERRUPTED, stderr
    assert "not scanned (interrupted)" in one_line(stdout)
    assert "Traceback" not in stderr
    outputs = check_outputs(out, pdf=pdf)
    assert {r["path"] for r in outputs.rows} == everything  # every file accounted for
    statuses = outputs.statuses()
    assert set(statuses) == {"ok", "not_scanned"}, statuses
    assert statuses["ok"] >= 1 and statuses["not_scanned"] >= 1, statuses
    assert outputs.run["interrupted"] is True
    assert outputs.run["counts"]["scored"] == statuses["ok"]
    assert outputs.run["counts"]["not_scanned"] == statuses["not_scanned"]
    for row in outputs.rows:
        if row["status"] == "not_scanned":
            assert row["probability"] == "" and row["reason"]
    html = outputs.html.decode()
    for row in outputs.rows:  # the report holds every flagged scan that was scored
        if row["flagged"] == "true":
            assert row["path"] in html, row["path"]
    return outputs


@pytest.mark.slow
def test_sigterm_and_sigint_stop_after_the_batch_and_write_everything(cli: Cli, tmp_path: Path) -> None:
    indir, out = tmp_path / "in", tmp_path / "out"
    pdf, html, heatmaps = out / "report.pdf", out / "report.html", out / "report_heatmaps"
    write_images(indir, [f"scan{i:03d}.png" for i in range(240)], seed=4, size=32)
    everything = files_in(indir)

    def heatmap_count() -> int:
        with contextlib.suppress(OSError):
            return sum(1 for p in heatmaps.iterdir() if p.name.endswith("_gradcam.png"))
        return 0

    # SIGTERM as soon as the first batch's heat maps are written (--explain all: every batch has some).
    proc = cli.start(indir, pdf, "--explain", "all")
    assert wait_until(lambda: heatmap_count() > 0, proc), finish(proc)
    proc.send_signal(signal.SIGTERM)
    terminated = _check_interrupted(out, *finish(proc), everything, pdf=True)

    # The next run goes on where that one stopped, and is SIGINTed (Ctrl-C) in turn.
    # (--out report.html: the same outputs, state and lock, less the PDF, which costs seconds.)
    already = heatmap_count()
    proc = cli.start(indir, html, "--explain", "all")
    assert wait_until(lambda: heatmap_count() > already, proc), finish(proc)
    proc.send_signal(signal.SIGINT)
    interrupted = _check_interrupted(out, *finish(proc), everything)
    assert interrupted.statuses()["ok"] > terminated.statuses()["ok"]
    scored = {path: row for path, row in interrupted.by_path().items() if row["status"] == "ok"}
    for path, row in terminated.by_path().items():
        if row["status"] == "ok":
            assert scored[path] == row

    code, stdout, stderr = finish(cli.start(indir, html, "--explain", "all"))
    assert code == EXIT_OK, stderr
    final = check_outputs(out, pdf=False)
    assert final.statuses() == {"ok": len(everything)}
    assert final.run["interrupted"] is False
    assert final.run["counts"]["scored_this_run"] == interrupted.statuses()["not_scanned"]


# --------------------------------------------------------------------------- 4. incremental


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Path:
    """Another model file: the trained one, its .keras zip given a comment (other bytes, other
    sha256, the model's identity for the state) without the cost of training a second one."""
    out = tmp_path_factory.mktemp("model") / "other-model"
    shutil.copytree(trained_model, out)
    with zipfile.ZipFile(out / "model.keras", "a") as archive:
        archive.comment = b"another model"
    return out


@dataclass
class Incremental:
    folder: Path
    runs: dict[str, subprocess.CompletedProcess[str]]
    outputs: dict[str, Outputs]
    logs: dict[str, str]


@pytest.fixture(scope="module")
def incremental(cli: Cli, tmp_path_factory: pytest.TempPathFactory, other_model: Path) -> Incremental:
    """Run, add/change/delete files, run again incrementally, and --full into another folder;
    then change the threshold, the explain option, the model, and spoil the state."""
    root = tmp_path_factory.mktemp("incremental")
    indir, out, full = root / "in", root / "out", root / "full"
    names = [f"case{i:02d}.png" for i in range(36)]
    write_images(indir, names, seed=5)
    (indir / "sub").mkdir()
    write_images(indir / "sub", ["deep.png"], seed=6)
    (indir / "broken.png").write_bytes((indir / names[0]).read_bytes()[:120])  # failed rows carry over too
    (indir / "notes.txt").write_text("not an image")
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    outputs: dict[str, Outputs] = {}
    logs: dict[str, str] = {}

    def scan(name: str, target: Path, *extra: str, model: Path | None = None, pdf: bool = True) -> None:
        """``pdf=False``: --out report.html, the same outputs but the PDF (same stem, same state)."""
        log_file = root / f"{name}.log"
        report = target / ("report.pdf" if pdf else "report.html")
        runs[name] = cli.run(indir, report, "--log-file", str(log_file), *extra, model=model)
        logs[name] = log_file.read_text() if log_file.is_file() else ""
        if runs[name].returncode in (EXIT_OK, EXIT_SOME_FAILED):
            outputs[name] = check_outputs(target, pdf=pdf)

    scan("first", out)
    # 5 new files, one changed (new content, new mtime), one deleted.
    write_images(indir, [f"added{i}.png" for i in range(4)], seed=7)
    write_images(indir / "sub", ["added.png"], seed=8)
    changed = indir / names[1]
    stat = changed.stat()
    write_images(indir, [names[1]], seed=9)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    (indir / names[2]).unlink()
    scan("incremental", out)
    scan("full", full, "--full")
    scan("threshold", out, "--threshold", "0.3", pdf=False)
    scan("explain", out, "--threshold", "0.3", "--explain", "all", pdf=False)
    scan("model", out, "--threshold", "0.3", "--explain", "all", model=other_model, pdf=False)
    # A truncated state file, then a JSON file some other program left under that name.
    state = full / ".report.state.json"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    scan("corrupt-state", full, pdf=False)
    state.write_text(json.dumps([{"path": "case00.png", "status": "ok"}]))
    scan("foreign-state", full, pdf=False)
    return Incremental(indir, runs, outputs, logs)


@pytest.mark.slow
def test_incremental_run_rescans_only_new_and_changed_files(incremental: Incremental) -> None:
    runs, outputs = incremental.runs, incremental.outputs
    assert runs["first"].returncode == EXIT_SOME_FAILED, runs["first"].stderr  # broken.png, notes.txt
    assert runs["incremental"].returncode == EXIT_SOME_FAILED, runs["incremental"].stderr
    counts = outputs["incremental"].run["counts"]
    assert counts["scored_this_run"] == 6  # 5 new + 1 changed
    assert counts["removed_since_last"] == 1
    assert counts["found"] == len(files_in(incremental.folder)) == 43
    assert outputs["incremental"].run["incremental"] is True
    assert "incremental:" in incremental.logs["incremental"]
    assert "(6 this run)" in runs["incremental"].stdout
    # The report covers the whole folder, not only what was scored this time.
    assert {r["path"] for r in outputs["incremental"].rows} == files_in(incremental.folder)


@pytest.mark.slow
def test_incremental_rows_equal_a_full_scan(incremental: Incremental) -> None:
    """Carried-over rows, probability strings included, are those a fresh scan gives."""
    outputs = incremental.outputs
    assert incremental.runs["full"].returncode == EXIT_SOME_FAILED, incremental.runs["full"].stderr
    assert outputs["full"].run["counts"]["scored_this_run"] == outputs["full"].run["counts"]["scored"]
    assert outputs["incremental"].rows == outputs["full"].rows
    assert outputs["incremental"].csv == outputs["full"].csv
    # To the last bit: the 6 rescanned images were batched together, the full scan batched
    # all 41 in other groups; a probability must not depend on its batch neighbours.
    assert exact_rows(outputs["incremental"]) == exact_rows(outputs["full"])


@pytest.mark.slow
@pytest.mark.parametrize("run, what", [("threshold", "threshold"), ("explain", "explain"),
                                       ("model", "model")])
def test_other_settings_mean_a_full_rescan_said_in_the_log(incremental: Incremental, run: str,
                                                           what: str) -> None:
    result = incremental.runs[run]
    assert result.returncode == EXIT_SOME_FAILED, result.stderr
    counts = incremental.outputs[run].run["counts"]
    assert counts["scored_this_run"] == counts["scored"] > 0
    lines = [line for line in incremental.logs[run].splitlines() if "scanning everything" in line]
    assert len(lines) == 1 and what in lines[0], incremental.logs[run]
    assert "incremental:" not in incremental.logs[run]


@pytest.mark.slow
@pytest.mark.parametrize("run", ["corrupt-state", "foreign-state"])
def test_unusable_state_means_a_full_rescan_with_a_warning(incremental: Incremental, run: str) -> None:
    result = incremental.runs[run]
    assert result.returncode == EXIT_SOME_FAILED, result.stderr  # the normal exit: the folder has bad files
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "state" in line]
    assert len(warnings) == 1 and "scanning everything" in warnings[0], result.stderr
    assert "WARNING" in incremental.logs[run]
    counts = incremental.outputs[run].run["counts"]
    assert counts["scored_this_run"] == counts["scored"] > 0
    assert incremental.outputs[run].rows == incremental.outputs["full"].rows


def test_garbage_state_files_are_never_trusted(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                               request: pytest.FixtureRequest) -> None:
    """In-process, over many shapes of garbage: no exception, nothing reused, a warning each time."""
    from triage.scan.state import STATE_SCHEMA_VERSION, load_state

    settings = {"model_sha256": "ab", "threshold": 0.5}
    good_row = {"path": "a.png", "status": "ok", "sha256": "cd" * 32, "reason": "", "probability": 0.25,
                "flagged": False, "heatmap": None, "original": None, "width": 8, "height": 8,
                "format": "PNG", "size": 10, "mtime_ns": 1, "new": True}

    def state(*rows: object, **top: object) -> str:
        return json.dumps({"schema_version": STATE_SCHEMA_VERSION, "settings": settings, "cases": list(rows),
                           **top})

    # The CLI's "triage" logger may not propagate to the root (in-process CLI tests set it so).
    logging.getLogger("triage.scan.run").addHandler(caplog.handler)
    request.addfinalizer(lambda: logging.getLogger("triage.scan.run").removeHandler(caplog.handler))
    path = tmp_path / ".report.state.json"
    path.write_text(state(good_row))
    assert set(load_state(path, settings, "report_heatmaps")) == {"a.png"}  # the control

    deep = "[" * 100_000 + "]" * 100_000
    garbage = [
        b"\x00\xff\xfe binary", b"", b"{", b"[]", b"null", b"42", b'"text"', deep.encode(),
        json.dumps({"schema_version": STATE_SCHEMA_VERSION}).encode(),
        json.dumps({"schema_version": STATE_SCHEMA_VERSION, "settings": "x", "cases": []}).encode(),
        json.dumps({"schema_version": STATE_SCHEMA_VERSION, "settings": settings, "cases": 5}).encode(),
        state(good_row, schema_version=99).encode(),
        state([1, 2]).encode(), state("a.png").encode(), state({"path": "a.png"}).encode(),
        state({**good_row, "extra": 1}).encode(),
        state({**good_row, "probability": "0.25"}).encode(),
        state({**good_row, "probability": float("nan")}).encode(),
        state({**good_row, "probability": 7.0}).encode(),
        state({**good_row, "size": "10"}).encode(),
        state({**good_row, "size": True}).encode(),
        state({**good_row, "status": "bogus"}).encode(),
        state({**good_row, "status": "not_scanned"}).encode(),
        state({**good_row, "path": None}).encode(),
        state({**good_row, "heatmap": "../../etc/passwd"}).encode(),
        state({**good_row, "heatmap": "/etc/passwd"}).encode(),
        state({**good_row, "original": "report_heatmaps/../../x.jpg"}).encode(),
        state({**good_row, "heatmap": ["report_heatmaps/x.png"]}).encode(),
    ]
    for i, content in enumerate(garbage):
        path.write_bytes(content)
        caplog.clear()
        assert load_state(path, settings, "report_heatmaps") == {}, (i, content[:80])
        warned = [r for r in caplog.records if r.levelname == "WARNING"]
        assert warned and "scanning everything" in warned[0].getMessage(), (i, content[:80])


# --------------------------------------------------------------------------- 6. logs for cron


@pytest.mark.slow
def test_log_file_is_timestamped_and_stdout_is_one_summary_line(incremental: Incremental) -> None:
    run, log_text = incremental.runs["incremental"], incremental.logs["incremental"]
    lines = log_text.splitlines()
    assert lines and all(TIMESTAMP.match(line) for line in lines), log_text
    summaries = [line for line in lines if SUMMARY.search(line.split(" ", 3)[3])]
    assert len(summaries) == 1, log_text
    # stdout is a pipe here, as under cron: the one summary line and nothing else.
    assert run.stdout.endswith("\n") and run.stdout.count("\n") == 1
    assert summaries[0].split(" ", 3)[3] == run.stdout.strip()
    assert SUMMARY.match(run.stdout).groups()[:3] == ("43", "41", "6")  # type: ignore[union-attr]
    # No progress bar on a pipe (stderr is one too).
    assert "\r" not in run.stderr and "it/s" not in run.stderr and "image/s" not in run.stderr
    assert "%|" not in run.stderr


# --------------------------------------------------------------------------- 5. many files, flat memory


def _many_files(folder: Path, n: int) -> dict[str, int]:
    """``n`` files, 5% of them corrupt (truncated PNGs, zero-byte files, text named .png).

    The good ones are 128 px PNGs (written from a few pre-encoded variants, so it is fast):
    a run that kept each decoded image (48 KB) would grow by more than 200 MB over 5,000.
    """
    folder.mkdir(parents=True)
    rng = np.random.default_rng(n)
    variants = []
    for i in range(16):
        buffer = io.BytesIO()
        Image.fromarray(blob_image(rng, tumour=i % 2 == 0, size=128)).save(buffer, "PNG", compress_level=1)
        variants.append(buffer.getvalue())
    expected = {"ok": 0, "unreadable": 0, "empty": 0, "unsupported": 0}
    for i in range(n):
        path = folder / f"{i // 500:02d}" / f"img{i:05d}.png"
        path.parent.mkdir(exist_ok=True)
        kind = ("unreadable", "empty", "unsupported")[(i // 20) % 3] if i % 20 == 7 else "ok"
        data = variants[i % len(variants)]
        path.write_bytes({"ok": data, "unreadable": data[:150], "empty": b"",
                          "unsupported": b"patient notes, not an image\n"}[kind])
        expected[kind] += 1
    assert expected["ok"] == n * 95 // 100
    return expected


def _scan_measured(cli: Cli, indir: Path, report: Path) -> tuple[int, str, float, int]:
    """Run a scan; return its exit code, stderr, seconds and the peak RSS (KiB) of that process alone."""
    err = report.parent.parent / f"{report.parent.name}.stderr"
    report.parent.mkdir(parents=True)
    with open(err, "w") as stderr:
        clock = time.perf_counter()
        proc = cli.start(indir, report, "--explain", "none", stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err.read_text(), time.perf_counter() - clock, usage.ru_maxrss


@pytest.mark.slow
def test_five_thousand_files_all_accounted_for_in_flat_memory(cli: Cli, tmp_path: Path) -> None:
    results = {}
    for n in (500, 5000):
        expected = _many_files(tmp_path / f"in{n}", n)
        out = tmp_path / f"out{n}"
        code, stderr, seconds, peak_kib = _scan_measured(cli, tmp_path / f"in{n}", out / "report.html")
        assert code == EXIT_SOME_FAILED, stderr
        outputs = check_outputs(out, pdf=False)
        assert len(outputs.rows) == n
        assert {r["path"] for r in outputs.rows} == files_in(tmp_path / f"in{n}")
        assert outputs.statuses() == {k: v for k, v in expected.items() if v}
        assert outputs.run["counts"]["failed"] == n // 20
        results[n] = (seconds, peak_kib)
    print(f"\n500 files: {results[500][0]:.1f} s, peak {results[500][1] / 1024:.0f} MiB; "
          f"5,000 files: {results[5000][0]:.1f} s, peak {results[5000][1] / 1024:.0f} MiB")
    # Peak RSS is ~0.9 GB, nearly all TensorFlow, the model and its thread pools, and it
    # wobbles by a few percent from run to run (allocator arenas, lazily built kernels).
    # What legitimately grows with the file count is small: a row per file (~1 KB each,
    # ~5 MB for 5,000) and the HTML table. 15% (~130 MB) absorbs that and the noise, while
    # a run that kept each decoded 128 px image would exceed it (~220 MB more at 5,000).
    assert results[5000][1] <= results[500][1] * 1.15, results
