"""The HTML and PDF reports, rendered from hand-built ScanResults (no TensorFlow)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape as markup_escape
from PIL import Image

from triage import RESEARCH_NOTICE
from triage.model.summary import ModelSummary
from triage.report.html import render_html, write_html
from triage.report.pdf import _restricted_url_fetcher, write_pdf
from triage.report.view import RANDOM_BACKBONE_WARNING
from triage.results.records import Row, ScanResult

pypdf = pytest.importorskip("pypdf")

NASTY = "a<b>&\"'.png"


# --------------------------------------------------------------------------- fixtures


def _model(backbone: str = "imagenet", **overrides: object) -> ModelSummary:
    fields: dict[str, object] = dict(
        id="vgg19-test", path="models/vgg19-test.keras", sha256="ab" * 32, version="1.2.3",
        threshold=0.5, image_size=256, backbone_weights=backbone,
        trained_on="brain_tumor_dataset (253 images)", trained_at="2025-11-20T10:00:00+00:00",
        val_sensitivity=(0.94, 0.80, 0.98, 31), val_specificity=(0.84, 0.63, 0.94, 19),
        calibration="Platt scaling fitted on 160 out-of-fold predictions of the training part",
    )
    fields.update(overrides)
    return ModelSummary(**fields)  # type: ignore[arg-type]


def _png(path: Path, seed: int, size: int = 24) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _flagged(folder: Path, name: str, probability: float, seed: int, **kw: object) -> Row:
    """A flagged case whose original and overlay exist under ``folder/img``."""
    _png(folder / "img" / f"{seed}_orig.png", seed)
    _png(folder / "img" / f"{seed}_cam.png", seed + 10_000)
    fields: dict[str, object] = dict(
        path=name, status="ok", sha256="cd" * 32, probability=probability, flagged=True,
        original=f"img/{seed}_orig.png", heatmap=f"img/{seed}_cam.png", width=24, height=24,
        format="PNG",
    )
    fields.update(kw)
    return Row(**fields)  # type: ignore[arg-type]


def _result(cases: list[Row], model: ModelSummary | None = None, **kw: object) -> ScanResult:
    fields: dict[str, object] = dict(
        input_dir="/data/incoming", rows=tuple(sorted(cases, key=lambda c: c.path)),
        model=model or _model(), threshold=0.5, cam_layer="block5_conv4", explain="gradcam",
        started_at="2025-11-25T19:28:03+00:00", finished_at="2025-11-25T19:29:41+00:00",
        seconds=98.0, versions={"triage": "0.1.0"},
    )
    fields.update(kw)
    return ScanResult(**fields)  # type: ignore[arg-type]


def _clean(n: int) -> list[Row]:
    return [
        Row(path=f"clean/{i:03d}.png", status="ok", probability=i / (n * 2.5), flagged=False)
        for i in range(n)
    ]


FAILURES = [
    Row(path="bad/truncated.jpg", status="unreadable", reason="file is truncated"),
    Row(path="bad/empty.png", status="empty", reason="zero-byte file"),
    Row(path="bad/x<script>.txt", status="unsupported", reason="not an image <txt>"),
]


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def sample(report_dir: Path) -> ScanResult:
    """Six flagged cases (one with a nasty name), clean cases and three failures."""
    probabilities = [0.61, 0.97, 0.55, 0.83, 0.72, 0.90]
    flagged = [
        _flagged(report_dir, NASTY if i == 2 else f"scans/case{i}.png", p, seed=i)
        for i, p in enumerate(probabilities)
    ]
    return _result(flagged + _clean(40) + FAILURES)


def _esc(text: str) -> str:
    """Text as the template's autoescape writes it (a plain str, not Markup)."""
    return str(markup_escape(text))


def _cards(page: str) -> list[str]:
    return page.split('<article class="card">')[1:]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _pdf_pages(path: Path) -> list[str]:
    reader = pypdf.PdfReader(str(path))
    return [" ".join((page.extract_text() or "").split()) for page in reader.pages]


# --------------------------------------------------------------------------- HTML


def test_html_escapes_file_names(sample: ScanResult, report_dir: Path) -> None:
    write_html(sample, report_dir / "report.html")
    text = (report_dir / "report.html").read_text(encoding="utf-8")
    assert NASTY not in text
    assert "<script>" not in text and "x<script>" not in text
    assert "a&lt;b&gt;&amp;&#34;&#39;.png" in text
    assert "bad/x&lt;script&gt;.txt" in text
    assert "not an image &lt;txt&gt;" in text


def test_html_cards_in_descending_probability_order(sample: ScanResult, report_dir: Path) -> None:
    text = render_html(sample)
    probabilities = [float(p) for p in re.findall(r'<span class="prob">([0-9.]+)</span>', text)]
    assert probabilities == [0.970, 0.900, 0.830, 0.720, 0.610, 0.550]
    positions = [text.index(_esc(c.path)) for c in sample.flagged]
    assert positions == sorted(positions)
    assert "clean/001.png" not in text  # unflagged cases get no card


def test_html_references_images_relatively_and_notes_missing_ones(report_dir: Path) -> None:
    cases = [
        _flagged(report_dir, "with.png", 0.9, seed=1),
        _flagged(report_dir, "no-original.png", 0.8, seed=2, original=None),
        _flagged(report_dir, "odd.png", 0.7, seed=3, heatmap="img/odd #1?.png"),
    ]
    text = render_html(_result(cases))
    assert 'src="img/1_orig.png"' in text and 'src="img/1_cam.png"' in text
    assert 'src="img/odd%20%231%3F.png"' in text  # a file name, not a fragment or query
    assert text.count("no image") == 1
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text


def test_html_lists_each_failure_with_status_and_reason(sample: ScanResult) -> None:
    text = render_html(sample)
    table = text[text.index('id="failures"'):]
    for case in FAILURES:
        row = re.search(
            re.escape(_esc(case.path)) + r".*?</tr>", table, flags=re.S
        )
        assert row, case.path
        assert case.status in row.group(0) and _esc(case.reason) in row.group(0)


def test_html_says_when_nothing_failed_or_was_flagged(report_dir: Path) -> None:
    text = render_html(_result(_clean(5)))
    assert "No file failed" in text
    assert "No image reached the threshold" in text
    assert "data:image/png;base64," in text  # the histogram of the 5 scored images


def test_no_histogram_without_scored_images() -> None:
    text = render_html(_result(list(FAILURES)))
    assert "data:image/png" not in text
    assert "nothing to plot" in text


@pytest.mark.parametrize("backbone", ["random", "imagenet"])
def test_random_backbone_warning_iff_random(backbone: str) -> None:
    text = render_html(_result(_clean(3), model=_model(backbone)))
    assert (RANDOM_BACKBONE_WARNING in text) == (backbone == "random")
    assert ("RANDOM BACKBONE" in text) == (backbone == "random")


def test_html_has_notice_as_banner_and_footer(sample: ScanResult) -> None:
    text = render_html(sample)
    assert RESEARCH_NOTICE in text
    assert text.index('class="notice-banner"') < text.index("<h1>")
    assert text.index('class="notice-footer"') > text.index('id="failures"')


def test_html_model_facts() -> None:
    text = render_html(_result(_clean(3)))
    assert "0.94 (95% CI 0.80–0.98, n=31)" in text
    assert "0.84 (95% CI 0.63–0.94, n=19)" in text
    for fact in ("vgg19-test", "1.2.3", "brain_tumor_dataset (253 images)", "256 × 256 px",
                 "imagenet", "2025-11-20 10:00:00 UTC"):
        assert fact in text
    missing = _model(val_sensitivity=None, val_specificity=None)
    assert render_html(_result(_clean(3), model=missing)).count("not recorded") == 2


def test_model_facts_say_what_the_threshold_promises_and_how_probabilities_are_calibrated() -> None:
    import html

    promise = "sensitivity ≥ 0.90 with 90% confidence, from 118 tumour images of the training part"
    certified = _model(certified=promise + " (2 below the threshold)", threshold_source="certified")
    text = html.unescape(_flat(render_html(_result(_clean(3), model=certified))))
    assert promise in text and "Platt scaling fitted on 160" in text
    assert "Certified" not in html.unescape(_flat(render_html(_result(_clean(3)))))
    old = _model(calibration="none: this model was trained before calibration, so probabilities are "
                             "the network's raw output")
    text = html.unescape(_flat(render_html(_result(_clean(3), model=old))))
    assert text.count("trained before calibration") == 1


def test_validation_figures_say_what_they_were_measured_on() -> None:
    import html

    model = _model(val_images=50, val_split="grouped", threshold_source="out-of-fold", threshold=0.42)
    same = html.unescape(_flat(render_html(_result(_clean(3), model=model, threshold=0.42))))
    assert ("at the model's threshold 0.42 (out-of-fold) on its validation set of 50 images "
            "(grouped split)") in same
    assert "do not apply" not in same
    other = html.unescape(_flat(render_html(_result(_clean(3), model=model, threshold=0.3))))
    assert "this run flags at 0.30, where these figures do not apply" in other


def test_html_summary_incremental_and_interrupted(report_dir: Path) -> None:
    cases = [
        _flagged(report_dir, "fresh.png", 0.9, seed=1, new=True),
        _flagged(report_dir, "old.png", 0.8, seed=2, new=False),
        Row(path="late.png", status="not_scanned", reason="interrupted"),
        Row(path="later.png", status="not_scanned", reason="interrupted"),
    ]
    plain = render_html(_result(cases))
    assert "scored in this run" not in plain and "This run was interrupted" not in plain

    text = _flat(render_html(
        _result(cases, incremental=True, removed_since_last=4, interrupted=True)
    ))
    fresh, old = _cards(text)
    assert "fresh.png" in fresh and 'title="scored in this run">new<' in fresh
    assert "old.png" in old and "scored in this run" not in old
    assert "1 image scored this run, 1 carried over" in text
    assert "4 files removed since the last run" in text
    assert "This run was interrupted." in text and "2 files were not scanned" in text


def _disk_full(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fail", ["render", "fsync", "rename"])
def test_write_html_is_atomic_and_complete(sample: ScanResult, report_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch, fail: str) -> None:
    """A write that fails at any point leaves the old report as it was and no temporary file."""
    target = report_dir / "report.html"
    target.write_text("old", encoding="utf-8")
    with monkeypatch.context() as patch:
        if fail == "render":  # rendering fails: the old page must stay
            def render(*args: object, **kwargs: object) -> str:
                raise RuntimeError("template error")

            patch.setattr("triage.report.html.render_html", render)
        elif fail == "fsync":  # the whole page is in the temporary file, the disk is full
            patch.setattr(os, "fsync", _disk_full)
        else:
            patch.setattr(os, "replace", _disk_full)
        with pytest.raises((RuntimeError, OSError)):
            write_html(sample, target)
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in report_dir.iterdir()) == ["img", "report.html"]

    write_html(sample, target)
    assert target.read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert sorted(p.name for p in report_dir.iterdir()) == ["img", "report.html"]


def test_import_is_light() -> None:
    code = (
        "import sys, triage.report, triage.report.charts; "
        "print(sorted(m for m in ('weasyprint', 'matplotlib', 'PIL', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- PDF


def test_pdf_is_valid_with_notice_on_every_page(sample: ScanResult, report_dir: Path) -> None:
    write_pdf(sample, report_dir / "report.pdf")
    pages = _pdf_pages(report_dir / "report.pdf")
    assert len(pages) >= 2
    for number, text in enumerate(pages, start=1):
        assert RESEARCH_NOTICE in text, f"page {number}"
        assert f"Page {number} of {len(pages)}" in text
    everything = " ".join(pages)
    assert NASTY in everything  # printed as text, not markup
    assert "RANDOM BACKBONE" not in everything
    for case in FAILURES:
        assert case.path in everything and case.reason in everything
    assert not list(report_dir.glob(".report.pdf.*"))  # no temporary file left behind


def test_pdf_random_backbone_on_first_page(report_dir: Path) -> None:
    write_pdf(_result(_clean(3), model=_model("random")), report_dir / "r.pdf")
    assert RANDOM_BACKBONE_WARNING in _pdf_pages(report_dir / "r.pdf")[0]


def test_pdf_grows_with_cases(report_dir: Path) -> None:
    few = _result([_flagged(report_dir, "one.png", 0.9, seed=1)])
    many = _result([_flagged(report_dir, f"c{i}.png", 0.5 + i / 40, seed=i) for i in range(12)])
    write_pdf(few, report_dir / "few.pdf")
    write_pdf(many, report_dir / "many.pdf")
    assert 1 <= len(_pdf_pages(report_dir / "few.pdf")) < len(_pdf_pages(report_dir / "many.pdf"))


def test_pdf_holds_only_the_top_max_cases(report_dir: Path) -> None:
    names = ["alpha.png", "bravo.png", "charlie.png", "delta.png", "echo.png"]
    cases = [_flagged(report_dir, n, 0.95 - i * 0.1, seed=i) for i, n in enumerate(names)]
    write_pdf(_result(list(reversed(cases))), report_dir / "top.pdf", max_cases=2)
    text = " ".join(_pdf_pages(report_dir / "top.pdf"))
    assert "alpha.png" in text and "bravo.png" in text
    assert not any(name in text for name in names[2:])
    assert "top 2 of 5 flagged cases" in text
    assert "3 more flagged cases are in the HTML report and the CSV" in text


def test_pdf_rejects_negative_max_cases(sample: ScanResult, report_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_cases"):
        write_pdf(sample, report_dir / "x.pdf", max_cases=-1)
    assert not (report_dir / "x.pdf").exists()


def test_pdf_embeds_no_image_from_outside_the_folder(tmp_path: Path, report_dir: Path) -> None:
    _png(tmp_path / "outside.png", seed=5, size=64)
    (report_dir / "link.png").symlink_to(tmp_path / "outside.png")
    sneaky = _flagged(
        report_dir, "sneaky.png", 0.9, seed=1, original="../outside.png", heatmap="link.png"
    )
    honest = _flagged(report_dir, "honest.png", 0.8, seed=2)
    write_pdf(_result([sneaky, honest]), report_dir / "r.pdf")
    reader = pypdf.PdfReader(str(report_dir / "r.pdf"))
    # Pages may share one resource dictionary: count distinct images, not listings.
    distinct = {im.data: im.image.size for page in reader.pages for im in page.images}
    sizes = list(distinct.values())
    assert (64, 64) not in sizes  # neither the ../ path nor the link out was embedded...
    assert sizes.count((24, 24)) == 2  # ...but the files inside the folder were
    assert " ".join(_pdf_pages(report_dir / "r.pdf")).count("image unavailable") == 2


def test_url_fetcher_allows_only_data_and_the_folder(tmp_path: Path, report_dir: Path) -> None:
    _png(report_dir / "inside.png", seed=1)
    _png(tmp_path / "outside.png", seed=2)
    fetch = _restricted_url_fetcher(report_dir)

    for url in (
        "http://example.com/x.png",
        "https://example.com/x.png",
        "ftp://example.com/x.png",
        (tmp_path / "outside.png").as_uri(),
        report_dir.as_uri() + "/../outside.png",
        "file://otherhost" + str(report_dir / "inside.png"),
        "file:///etc/passwd",
    ):
        with pytest.raises(ValueError):
            fetch(url)

    inside = fetch((report_dir / "inside.png").as_uri())
    data = fetch("data:text/plain;base64,aGk=")
    try:
        body = inside.read() if hasattr(inside, "read") else inside["file_obj"].read()
        assert body == (report_dir / "inside.png").read_bytes()
        assert (data.read() if hasattr(data, "read") else data["string"]) == b"hi"
    finally:
        for response in (inside, data):
            if hasattr(response, "close"):
                response.close()


def test_pdf_of_100_noisy_cases_stays_small(tmp_path: Path, report_dir: Path) -> None:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(100):
        for kind in ("orig", "cam"):
            pixels = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
            # JPEG q95 keeps the noise and writes 10x faster than PNG (the report reads either).
            Image.fromarray(pixels).save(report_dir / f"{i}_{kind}.jpg", quality=95)
        cases.append(Row(
            path=f"case{i:03d}.png", status="ok", probability=0.5 + i / 250, flagged=True,
            original=f"{i}_orig.jpg", heatmap=f"{i}_cam.jpg",
        ))
    write_pdf(_result(cases), report_dir / "big.pdf")
    size = (report_dir / "big.pdf").stat().st_size
    assert size < 15_000_000, f"{size / 1e6:.1f} MB"
    pages = _pdf_pages(report_dir / "big.pdf")
    assert len(pages) >= 100 // 3
    text = " ".join(pages)
    assert text.index("case099.png") < text.index("case050.png") < text.index("case000.png")
