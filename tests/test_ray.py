"""`triage scan --engine ray`: the same outputs as the local engine, on a small local Ray."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom.uid import generate_uid

from triage.cli import EXIT_SOME_FAILED, EXIT_USAGE, main
from triage.hooks import RunHooks
from triage.model.network import cpu_has_bf16
from triage.results.tables import read_csv
from triage.testing import with_margin, write_blob_images, write_series, write_volume

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def local_ray():
    """One small Ray for the session: two CPUs, a small object store, no dashboard."""
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Loose PNGs (one a copy, one corrupt), a DICOM series and a NIfTI volume."""
    root = tmp_path_factory.mktemp("ray-input")
    write_series(root, generate_uid(), "t2", 5, tumour_slices=(2, 3))
    (root / "vol").mkdir()
    write_volume(root / "vol" / "head.nii.gz", tumour_slices=(1, 4))
    write_blob_images(root / "loose", [f"scan{i}.png" for i in range(9)], seed=3, tumour_every=3)
    shutil.copy(root / "loose" / "scan0.png", root / "loose" / "copy.png")
    (root / "loose" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return root


def scan(folder: Path, out: Path, model: Path, *args: str) -> object:
    return CliRunner().invoke(main, ["scan", str(folder), "--out", str(out / "report.html"), "--model",
                                     str(model), "--quiet", "--precision", "fp32", "--batch-size", "4",
                                     *args])


@pytest.mark.slow
def test_both_engines_write_the_same_outputs(local_ray, folder: Path, trained_model: Path,
                                             tmp_path: Path) -> None:
    local = scan(folder, tmp_path / "local", trained_model)
    remote = scan(folder, tmp_path / "ray", trained_model, "--engine", "ray", "--workers", "1")
    assert local.exit_code == remote.exit_code == EXIT_SOME_FAILED, remote.output
    for name in ("report.csv", "report_cases.csv"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text(), name
    assert sorted(p.name for p in (tmp_path / "ray" / "report_heatmaps").iterdir()) == \
        sorted(p.name for p in (tmp_path / "local" / "report_heatmaps").iterdir())
    csvs = sorted(p.relative_to(tmp_path / "ray").as_posix() for p in (tmp_path / "ray").rglob("*.csv"))
    assert csvs == ["report.csv", "report_cases.csv"]  # one CSV of rows, not a folder of parts
    broken = {row["path"]: row for row in read_csv(tmp_path / "ray" / "report.csv")}["loose/broken.png"]
    assert broken["status"] == "unreadable" and broken["reason"]  # a failed file is a row with its reason
    scored = [row for row in read_csv(tmp_path / "ray" / "report.csv") if row["status"] == "ok"]
    assert scored and all(row["raw_probability"] and row["probability"] != row["raw_probability"]
                          for row in scored)  # the map applied to the actors' raw outputs


@pytest.mark.slow
def test_an_interrupted_ray_run_leaves_the_previous_outputs(local_ray, folder: Path, trained_model: Path,
                                                           tmp_path: Path) -> None:
    from triage.engine.ray_data import RaySettings
    from triage.scan.folder import ScanOptions
    from triage.scan.run import run_scan

    out = tmp_path / "out"
    assert scan(folder, out, trained_model).exit_code == EXIT_SOME_FAILED
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    handled = []

    def second_ctrl_c(n: int) -> None:
        handled.append(n)
        if len(handled) > 2:
            raise KeyboardInterrupt

    options = ScanOptions(engine="ray", ray=RaySettings(workers=1), batch_size=4, precision="fp32")
    with pytest.raises(KeyboardInterrupt):
        run_scan(folder, out / "report.html", model=trained_model, options=options, full=True,
                 hooks=RunHooks(advance=second_ctrl_c))
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "_heatmaps" not in str(p)}
    assert after == {p: b for p, b in before.items() if "_heatmaps" not in str(p)}
    assert not list(out.rglob("*.tmp"))


def test_the_engine_without_ray_installed_says_how_to_install_it(folder: Path, trained_model: Path,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    result = scan(folder, tmp_path / "out", trained_model, "--engine", "ray")
    assert result.exit_code == EXIT_USAGE
    assert "pip install 'triage[ray]'" in result.output and "(--engine)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_ray_settings_are_checked(folder: Path, trained_model: Path, tmp_path: Path) -> None:
    from triage.engine.ray_data import RaySettings
    from triage.errors import UsageError

    with pytest.raises(UsageError):
        RaySettings(workers=0).validate()
    with pytest.raises(UsageError):
        RaySettings(gpus_per_worker=-1).validate()


@pytest.mark.slow
def test_a_worker_that_dies_is_restarted_and_its_batch_retried(local_ray, folder: Path, trained_model: Path,
                                                              tmp_path: Path) -> None:
    """A model actor killed mid-run, and a decode task whose process exits: the same outcomes, in order."""
    import os
    import signal

    from triage.engine.gradcam import CAM_LAYER
    from triage.engine.predictor import decode_image
    from triage.engine.ray_data import ModelSpec, RaySettings, ray_predict

    paths = sorted((folder / "loose").glob("scan*.png")) * 2
    spec = ModelSpec(trained_model, "cpu", "fp32", CAM_LAYER, 32)
    killed, exited = tmp_path / "killed", tmp_path / "exited"

    def actor_processes() -> list[int]:  # defined here: Ray pickles it to the decode tasks by value
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                if cmdline.read_bytes().startswith(b"ray::MapWorker(MapBatches(Score))"):
                    found.append(int(cmdline.parent.name))
        return found

    def dying_decode(path: Path):
        if path.name == "scan2.png" and not killed.exists():
            for _ in range(600):  # until the actor's process is there (it starts with the run)
                pids = actor_processes()
                if pids:
                    break
                time.sleep(0.1)
            killed.write_text(" ".join(map(str, pids)))
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        if path.name == "scan6.png" and not exited.exists():
            exited.write_text("")
            os._exit(1)
        return decode_image(path, 32)

    def outcomes(decode) -> list[tuple[str, float]]:
        return [(o.item.name, o.output.probability) for o in ray_predict(paths, decode, spec, batch_size=2,
                                                                 settings=RaySettings(workers=1))]

    clean = outcomes(lambda path: decode_image(path, 32))
    assert outcomes(dying_decode) == clean and [name for name, _ in clean] == [p.name for p in paths]
    assert killed.read_text() and exited.exists()  # the actor was killed, a decode process exited


@pytest.mark.slow
def test_the_records_say_what_the_actors_ran(local_ray, folder: Path, trained_model: Path,
                                             tmp_path: Path) -> None:
    """The driver loads its copy in fp32 on the CPU; the actors run bf16, and every record says bf16."""
    import json

    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bfloat16")
    # The test model's probabilities lie near 0.5: with its margin, the safety net re-scores some
    # rows of each batch in fp32 (an actor within the batch, the local engine in batches of its own).
    model = with_margin(shutil.copytree(trained_model, tmp_path / "model"), "bf16", margin=0.02)
    scan(folder, tmp_path / "exact", model)
    rows = read_csv(tmp_path / "exact" / "report.csv")
    scored = sorted(float(row["probability"]) for row in rows if row["probability"])
    threshold = ("--threshold", str(scored[len(scored) // 2]))  # the rows lie on both sides of its margin
    local = scan(folder, tmp_path / "local", model, "--precision", "bf16", *threshold)
    remote = scan(folder, tmp_path / "ray", model, "--engine", "ray", "--precision", "bf16", *threshold)
    assert local.exit_code == remote.exit_code == EXIT_SOME_FAILED, remote.output
    assert (tmp_path / "ray" / "report.csv").read_text() == (tmp_path / "local" / "report.csv").read_text()
    assert {row["precision"] for row in read_csv(tmp_path / "ray" / "report.csv") if row["status"] == "ok"} \
        == {"bf16", "fp32"}
    facts = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert (facts["device"], facts["precision"]) == ("cpu", "bf16")
    state = json.loads((tmp_path / "ray" / ".report.state.json").read_text())
    assert (state["settings"]["device"], state["settings"]["precision"]) == ("cpu", "bf16")
    assert "mixed bfloat16" in (tmp_path / "ray" / "report.html").read_text()


@pytest.mark.parametrize("args, words", [
    (("--device", "gpu"), "GPUs per worker"),
    (("--gpus-per-worker", "1"), "need 1 GPU(s), but the Ray cluster has 0 (--gpus-per-worker)"),
    (("--workers", "5"), "need 5.5 CPUs, but the Ray cluster has 2 (--workers)"),
])
@pytest.mark.slow
def test_a_request_the_cluster_cannot_meet_is_refused_before_scanning(
        local_ray, folder: Path, trained_model: Path, tmp_path: Path, args: tuple[str, ...],
        words: str) -> None:
    result = scan(folder, tmp_path / "out", trained_model, "--engine", "ray", *args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "report.csv").exists()


@pytest.mark.slow
def test_an_actor_that_cannot_load_the_model_is_one_typed_sentence(local_ray, folder: Path,
                                                                   trained_model: Path) -> None:
    from triage.engine.gradcam import CAM_LAYER
    from triage.engine.predictor import decode_image
    from triage.engine.ray_data import ModelSpec, RaySettings, ray_predict
    from triage.errors import UsageError

    spec = ModelSpec(trained_model, "gpu", "fp32", CAM_LAYER, 32)  # this machine has no GPU
    paths = sorted((folder / "loose").glob("scan*.png"))
    said = r"^On a Ray worker: A GPU was asked for, but TensorFlow sees none\.$"
    with pytest.raises(UsageError, match=said):
        list(ray_predict(paths, lambda path: decode_image(path, 32), spec, batch_size=2,
                         settings=RaySettings()))
