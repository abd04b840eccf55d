"""``fuzzy-people report``: built from a small output fixture and opened in headless chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from output_fixture import Item, build_output, synthetic_person
from pipeline import report, runoutput

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (CI installs Debian's chromium)")
DATA_URI = re.compile(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')


def browse(url: str) -> tuple[str, list[str]]:
    """Load ``url`` in headless chromium: (dumped DOM, console messages of the page)."""
    with tempfile.TemporaryDirectory(prefix="fp-chromium-") as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def decode_jpeg(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.float32)


def thumb_of(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(report.thumbnail(jpeg_png(img)))).convert("RGB"), dtype=np.float32)


def jpeg_png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def make_items(n: int = 6) -> tuple[list[Item], dict[str, np.ndarray]]:
    """n ok images (person fraction rising with i; output = inverted original so outputs and
    originals are told apart by their pixels), an error whose key also has an older ok row
    (the newer row must win), a current error and a skipped input."""
    items, originals = [], {}
    for i in range(n):
        img, mask, boxes = synthetic_person(90 + 12 * i, 150, i, 0.02 * (i + 1))
        rel = f"cam{i % 2}/img{i}.png"
        originals[rel] = img
        items.append(Item(rel, img, mask, anonymized=255 - img, boxes=boxes))
    img, mask, boxes = synthetic_person(80, 80, 99, 0.1)
    items.append(Item("late/redo.png", img, mask, boxes=boxes, age_seconds=3600))  # older ok row
    items.append(Item("late/redo.png", img, status="error", error_message="decode failed: <truncated PNG> & more"))
    items.append(Item("bad.png", status="error", error_message="cannot identify image file"))
    items.append(Item("huge.png", status="skipped", error_message="over --max-pixels"))
    return items, originals


@pytest.fixture
def run_output(tmp_path):
    items, originals = make_items()
    return build_output(tmp_path, items), originals


def test_summary_counts_current_rows_and_histogram(run_output):
    out, _ = run_output
    table, has_image = runoutput.read_current(out)
    assert not has_image
    summary = report.summarize(table, runoutput.read_stats(out))
    # late/redo.png: its newer row is an error, the older ok row is not counted
    assert summary["counts"] == {"ok": 6, "error": 2, "skipped": 1}
    assert summary["rows"] == 9
    svg = report.histogram_svg([0.01, 0.02, 0.5, None])
    bars = [int(c) for c in re.findall(r'data-count="(\d+)"', svg)]
    assert len(bars) == 20 and sum(bars) == 3
    assert bars[0] == 2 and bars[-1] == 1  # range 0..50 %: 0.5 falls in the last bar
    # all values <= 5 %: the range shrinks so they spread over the bars
    spread = [int(c) for c in re.findall(r'data-count="(\d+)"', report.histogram_svg([0.001, 0.011, 0.021, 0.049]))]
    assert sum(1 for c in spread if c) == 4


def test_outline_is_a_thin_edge():
    mask = np.zeros((100, 100), bool)
    mask[20:80, 30:70] = True
    edge = report.outline(mask, (50, 50))
    assert edge.any() and not edge[25, 25]  # interior is not drawn
    ys, xs = np.nonzero(edge)
    assert ys.min() == 10 and ys.max() == 39 and xs.min() == 15 and xs.max() == 34
    assert edge.sum() == 2 * (30 + 20) - 4


@needs_chromium
def test_report_in_chromium_without_originals(run_output):
    out, originals = run_output
    path = report.build_report(out)
    assert path == str(Path(out) / "report.html")
    page = Path(path).read_text()
    # self-contained: no external URL in any src/href, and a CSP forbids loading anything
    assert not re.search(r'(?:src|href)="(?!data:)', page)
    assert "default-src 'none'" in page
    dom, console = browse(Path(path).as_uri() + "#sort=key-asc")
    assert console == []
    assert 'data-ready="1"' in dom and 'data-sort="key-asc"' in dom  # the inline script ran
    for status, n in (("ok", 6), ("error", 2), ("skipped", 1), ("total", 9)):
        assert re.search(rf'id="count-{status}">{n}<', dom), status
    assert "decode failed: &lt;truncated PNG&gt; &amp; more" in dom
    keys = re.findall(r'class="card" data-key="([^"]+)"', dom)
    assert keys == sorted(originals)  # sorted by key through the URL hash
    assert 'id="no-originals"' in dom and "originals-banner" not in dom and 'class="original"' not in dom
    # every embedded picture is an anonymized output (inverted original), none is an original
    embedded = DATA_URI.findall(page)
    assert len(embedded) == len(originals)
    by_key = dict(zip(re.findall(r'class="card" data-key="([^"]+)"', page), embedded))
    for rel, img in originals.items():
        pic = decode_jpeg(by_key[rel])
        assert np.abs(pic - thumb_of(255 - img)).mean() < 12
        assert np.abs(pic - thumb_of(img)).mean() > 60
    # default order: most person-heavy first
    dom2, console2 = browse(Path(path).as_uri())
    assert console2 == []
    fractions = [float(f) for f in re.findall(r'data-fraction="([0-9.]+)"', dom2)]
    assert fractions == sorted(fractions, reverse=True) and len(fractions) == 6


@needs_chromium
def test_report_with_originals_says_so(run_output, tmp_path):
    out, originals = run_output
    assert 'id="audit"' not in Path(report.build_report(out, out_path=str(tmp_path / "plain.html"))).read_text()
    (Path(out) / "_audit.json").write_text(json.dumps({
        "detector": {"name": "CenterFace", "threshold": 0.2}, "images": {"audited": 6},
        "faces": {"inputs": 7, "outputs": 3, "hidden_but_detectable": 1, "face_shape_only": 0,
                  "outside_mask": 2, "other": 0},
        "hidden_but_detectable": 1}))
    path = report.build_report(out, include_originals=True, out_path=str(tmp_path / "with.html"))
    dom, console = browse(Path(path).as_uri())
    assert console == []
    assert 'id="originals-banner"' in dom and "CONTAINS ORIGINALS" in dom
    assert 'id="audit-hidden_but_detectable">1<' in dom and 'id="audit-inputs">7<' in dom
    page = Path(path).read_text()
    originals_b64 = re.findall(r'class="original" src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(originals_b64) == len(originals)
    keys = re.findall(r'class="card" data-key="([^"]+)"', page)
    for rel, b64 in zip(keys, originals_b64):
        assert np.abs(decode_jpeg(b64) - thumb_of(originals[rel])).mean() < 12


def test_console_capture_catches_errors(tmp_path):
    """The check above must be able to fail: a page with a script error and an external image."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed (CI installs Debian's chromium)")
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
                   "img-src data:; script-src 'unsafe-inline'\"><img src=\"http://example.invalid/x.png\">"
                   "<script>undefinedFunction();</script>")
    _, console = browse(bad.as_uri())
    assert any("undefinedFunction" in line for line in console)
    assert any("Content Security Policy" in line for line in console)


def test_grid_cap_parquet_images_and_fsspec_output(tmp_path):
    """--output-format parquet (JPEG bytes in the shards), a capped grid, and an output prefix
    on a non-local fsspec filesystem (memory://) read through pyarrow's FSSpecHandler."""
    import fsspec

    items, originals = make_items(5)
    local = build_output(tmp_path, items, output_format="parquet")
    assert not list(Path(local).rglob("*.jpg"))
    mem = fsspec.filesystem("memory")
    for f in Path(local).rglob("*"):
        if f.is_file():
            mem.pipe(f"/fp-test/out/{f.relative_to(local)}", f.read_bytes())
    url = "memory://fp-test/out"
    try:
        path = report.build_report(url, max_grid=3)
        assert path == "memory://fp-test/out/report.html"
        page = mem.cat("/fp-test/out/report.html").decode()
    finally:
        mem.rm("/fp-test", recursive=True)
    assert 'id="grid-capped"' in page and "3 most person-heavy of 5" in page
    cards = re.findall(r'class="card" data-key="([^"]+)" data-fraction="([0-9.]+)"', page)
    assert [k for k, _ in cards] == ["cam0/img4.png", "cam1/img3.png", "cam0/img2.png"]
    embedded = DATA_URI.findall(page)
    assert len(embedded) == 3
    for (rel, _), b64 in zip(cards, embedded):
        assert np.abs(decode_jpeg(b64) - thumb_of(255 - originals[rel])).mean() < 12


def test_missing_metadata_is_a_clear_error(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    rc = report.command(parser.parse_args([str(tmp_path)]))
    assert rc == 1
    assert "no Parquet metadata" in capsys.readouterr().err


def test_cli_writes_out_file(run_output, tmp_path, capsys):
    import argparse

    out, _ = run_output
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    target = tmp_path / "r.html"
    assert report.command(parser.parse_args([out, "--out", str(target), "--storage-options", json.dumps({})])) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert target.read_text().startswith("<!DOCTYPE html>")
