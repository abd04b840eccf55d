"""Evaluation harness (pipeline/evaluate.py) and the mosaic builder (scripts/make_mosaics.py)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from pipeline import evaluate as ev
from pipeline.evaluate import ImageScore, pair_files, score_image, summarize

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "pennfudan-dev"
needs_dev = pytest.mark.skipif(
    not (DEV / "images").is_dir(), reason=f"shared dev data absent: {DEV} (see shared/README.md)"
)


def two_people() -> tuple[np.ndarray, np.ndarray]:
    """10x10: person 1 = columns 0-1 (20 px), person 2 = columns 5-6 (20 px).

    pred covers person 1 fully, rows 0-7 of person 2 (16 of 20 = 80 %), and 6 background
    pixels (column 9, rows 0-5).
    """
    gt = np.zeros((10, 10), np.uint8)
    gt[:, 0:2] = 1
    gt[:, 5:7] = 2
    pred = np.zeros((10, 10), bool)
    pred[:, 0:2] = True
    pred[0:8, 5:7] = True
    pred[0:6, 9] = True
    return pred, gt


# ---------------------------------------------------------------------------- score_image

def test_two_people_known_answer():
    pred, gt = two_people()
    s = score_image(pred, gt)
    assert (s.tp, s.fp, s.fn) == (36, 6, 4)
    assert s.iou == pytest.approx(36 / 46)
    assert s.labels == (1, 2)
    assert s.person_pixels == (20, 20)
    assert s.person_covered == (20, 16)
    assert s.covered == pytest.approx((1.0, 0.8))
    assert s.leaked() == 1
    f = summarize([s], 12.5)
    assert f["pixel_recall"] == pytest.approx(36 / 40)
    assert f["precision"] == pytest.approx(36 / 42)
    assert f["mean_iou"] == pytest.approx(36 / 46)
    assert f["leak_rate"] == 0.5
    assert (f["people"], f["leaked"], f["images"], f["ms_per_image"]) == (2, 1, 1, 12.5)


def test_exactly_ninety_percent_is_not_a_leak():
    gt = np.zeros((3, 10), np.uint8)
    gt[:, :] = 1  # 30 px
    pred = np.ones((3, 10), bool)
    pred[0, 0:3] = False  # 27 of 30 = 90 %
    assert score_image(pred, gt).leaked() == 0
    pred[0, 3] = False  # 26 of 30
    assert score_image(pred, gt).leaked() == 1


def test_labels_need_not_be_contiguous():
    gt = np.zeros((4, 4), np.uint8)
    gt[0, :] = 3
    gt[3, :2] = 7
    pred = np.zeros((4, 4), bool)
    pred[3, 0] = True
    s = score_image(pred, gt)
    assert s.labels == (3, 7)
    assert s.person_pixels == (4, 2)
    assert s.covered == (0.0, 0.5)


def test_no_people_empty_prediction():
    s = score_image(np.zeros((5, 5), bool), np.zeros((5, 5), np.uint8))
    assert (s.tp, s.fp, s.fn, s.labels) == (0, 0, 0, ())
    assert s.iou == 1.0
    f = summarize([s])
    assert f["mean_iou"] == 1.0
    assert f["pixel_recall"] is None and f["precision"] is None and f["leak_rate"] is None
    assert (f["people"], f["leaked"], f["ms_per_image"]) == (0, 0, None)


def test_no_people_extra_pixels():
    pred = np.zeros((5, 5), bool)
    pred[1:3, 1:3] = True
    s = score_image(pred, np.zeros((5, 5), np.uint8))
    assert (s.tp, s.fp, s.fn) == (0, 4, 0)
    assert s.iou == 0.0
    f = summarize([s])
    assert f["precision"] == 0.0
    assert f["pixel_recall"] is None and f["leak_rate"] is None


def test_empty_prediction_with_people():
    _, gt = two_people()
    s = score_image(np.zeros_like(gt, bool), gt)
    assert (s.tp, s.fp, s.fn) == (0, 0, 40)
    assert s.iou == 0.0
    f = summarize([s])
    assert f["pixel_recall"] == 0.0
    assert f["leak_rate"] == 1.0 and f["leaked"] == 2
    assert f["precision"] is None


def test_prediction_with_extra_pixels_keeps_recall_lowers_precision():
    _, gt = two_people()
    pred = np.ones_like(gt, bool)
    s = score_image(pred, gt)
    assert (s.tp, s.fp, s.fn) == (40, 60, 0)
    f = summarize([s])
    assert f["pixel_recall"] == 1.0
    assert f["leak_rate"] == 0.0
    assert f["precision"] == pytest.approx(0.4)
    assert f["mean_iou"] == pytest.approx(0.4)


def test_mean_iou_is_per_image_mean_and_recall_is_pooled():
    # image A: 1 px person fully found; image B: 99 px person, 9 found.
    a = score_image(np.ones((1, 1), bool), np.ones((1, 1), np.uint8))
    gt_b = np.ones((9, 11), np.uint8)
    pred_b = np.zeros((9, 11), bool)
    pred_b[0, :9] = True
    b = score_image(pred_b, gt_b)
    f = summarize([a, b], [10.0, 30.0])
    assert f["mean_iou"] == pytest.approx((1.0 + 9 / 99) / 2)
    assert f["pixel_recall"] == pytest.approx(10 / 100)
    assert f["leak_rate"] == 0.5
    assert f["ms_per_image"] == 20.0


def test_score_image_rejects_bad_inputs():
    with pytest.raises(ValueError, match="differs"):
        score_image(np.zeros((4, 5), bool), np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="integer"):
        score_image(np.zeros((4, 4), bool), np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        score_image(np.zeros((4, 4, 1), bool), np.zeros((4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match="no images"):
        summarize([])


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, (7, 9), elements=st.integers(0, 4)),
    arrays(bool, (7, 9)),
)
def test_counts_are_consistent(gt, pred):
    s = score_image(pred, gt)
    assert s.tp + s.fn == np.count_nonzero(gt)
    assert s.tp + s.fp == np.count_nonzero(pred)
    assert sum(s.person_covered) == s.tp
    assert sum(s.person_pixels) == s.gt_pixels
    assert s.labels == tuple(int(k) for k in np.unique(gt) if k)
    assert 0.0 <= s.iou <= 1.0
    perfect = score_image(gt > 0, gt)
    assert perfect.iou == 1.0 and perfect.leaked() == 0 and perfect.fp == 0


# ---------------------------------------------------------------------------- files

def _png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path)


def test_pair_files_naming(tmp_path):
    imgs, masks = tmp_path / "images", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    rgb = np.zeros((4, 4, 3), np.uint8)
    lab = np.zeros((4, 4), np.uint8)
    _png(imgs / "a.png", rgb)
    Image.fromarray(rgb).save(imgs / "b.jpg")
    Image.fromarray(rgb).save(imgs / "c.JPEG", format="JPEG")
    (imgs / "notes.txt").write_text("x")
    _png(masks / "a_mask.png", lab)
    _png(masks / "a.png", lab)  # NAME_mask.png wins over NAME.png
    _png(masks / "b.png", lab)
    _png(masks / "c_mask.png", lab)
    pairs = pair_files(imgs, masks)
    assert [(n, i.name, m.name) for n, i, m in pairs] == [
        ("a", "a.png", "a_mask.png"), ("b", "b.jpg", "b.png"), ("c", "c.JPEG", "c_mask.png"),
    ]
    _png(imgs / "d.png", rgb)
    with pytest.raises(FileNotFoundError, match="d.png"):
        pair_files(imgs, masks)
    with pytest.raises(FileNotFoundError, match="not found"):
        pair_files(tmp_path / "nope", masks)


def test_pair_files_same_directory(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    _png(tmp_path / "x.png", rgb)
    _png(tmp_path / "x_mask.png", np.zeros((4, 4), np.uint8))
    Image.fromarray(rgb).save(tmp_path / "y.jpg")
    _png(tmp_path / "y_mask.png", np.zeros((4, 4), np.uint8))
    pairs = pair_files(tmp_path, tmp_path)
    assert [(n, i.name, m.name) for n, i, m in pairs] == [
        ("x", "x.png", "x_mask.png"), ("y", "y.jpg", "y_mask.png"),
    ]
    # an image never pairs with itself
    _png(tmp_path / "z.png", rgb)
    with pytest.raises(FileNotFoundError, match="z.png"):
        pair_files(tmp_path, tmp_path)


# ---------------------------------------------------------------------------- evaluate

RED = np.array([255, 0, 0], np.uint8)


class RedFinder:
    """Finds exactly the pure-red pixels."""

    def __init__(self):
        self.calls = 0

    def find(self, images):
        self.calls += 1
        return [types.SimpleNamespace(mask=np.all(im == RED, axis=-1)) for im in images]


def _scene(tmp_path: Path) -> tuple[Path, Path]:
    """Two PNG images; red pixels = what RedFinder will find, masks = the truth."""
    imgs, masks = tmp_path / "images", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    pred, gt = two_people()
    im = np.full((10, 10, 3), 90, np.uint8)
    im[pred] = RED
    _png(imgs / "p1.png", im)
    _png(masks / "p1_mask.png", gt)
    gt2 = np.zeros((6, 8), np.uint8)
    gt2[1:5, 2:4] = 1  # 8 px, found 4
    im2 = np.full((6, 8, 3), 90, np.uint8)
    im2[1:3, 2:4] = RED
    _png(imgs / "p2.png", im2)
    _png(masks / "p2_mask.png", gt2)
    return imgs, masks


def test_evaluate_scores_and_saves_masks(tmp_path, capsys):
    imgs, masks = _scene(tmp_path)
    out = tmp_path / "pred"
    finder = RedFinder()
    r = ev.evaluate(imgs, masks, "fast", dilate=0, save_masks=out, finder=finder)
    assert finder.calls == 2
    f = r["figures"]
    assert f["images"] == 2 and f["people"] == 3 and f["leaked"] == 2
    assert f["pixel_recall"] == pytest.approx(40 / 48)
    assert f["precision"] == pytest.approx(40 / 46)
    assert f["mean_iou"] == pytest.approx((36 / 46 + 4 / 8) / 2)
    assert f["leak_rate"] == pytest.approx(2 / 3)
    assert f["ms_per_image"] >= 0
    assert [p["name"] for p in r["per_image"]] == ["p1", "p2"]
    assert r["per_image"][0]["covered"] == [1.0, 0.8]
    assert r["settings"]["dilate"] == 0 and r["settings"]["preset"] == "fast"
    json.dumps(r, allow_nan=False)
    # save-masks: NAME.png, 8-bit, 255 = person, image size
    assert sorted(p.name for p in out.iterdir()) == ["p1.png", "p2.png"]
    with Image.open(out / "p2.png") as m:
        assert m.mode == "L" and m.size == (8, 6)
        arr = np.asarray(m)
    assert set(np.unique(arr)) == {0, 255}
    assert np.array_equal(arr == 255, np.all(np.asarray(Image.open(imgs / "p2.png")) == RED, -1))
    assert "eval 2/2" in capsys.readouterr().err


def test_evaluate_limit_and_quiet(tmp_path, capsys):
    imgs, masks = _scene(tmp_path)
    r = ev.evaluate(imgs, masks, "max", dilate=0, limit=1, progress=False, finder=RedFinder())
    assert r["figures"]["images"] == 1 and r["per_image"][0]["name"] == "p1"
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="dilate"):
        ev.evaluate(imgs, masks, "max", dilate=-1, finder=RedFinder())


def test_evaluate_rejects_mask_of_other_size(tmp_path):
    imgs, masks = _scene(tmp_path)
    _png(masks / "p2_mask.png", np.zeros((5, 8), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        ev.evaluate(imgs, masks, "max", dilate=0, progress=False, finder=RedFinder())


def test_evaluate_dilates_like_the_anonymizer(tmp_path):
    anonymize = pytest.importorskip("pipeline.anonymize", reason="pipeline/anonymize.py not landed yet")
    imgs, masks = _scene(tmp_path)
    out = tmp_path / "pred"
    r0 = ev.evaluate(imgs, masks, "max", dilate=0, progress=False, finder=RedFinder())
    r1 = ev.evaluate(imgs, masks, "max", dilate=1, save_masks=out, progress=False, finder=RedFinder())
    raw = np.all(np.asarray(Image.open(imgs / "p1.png")) == RED, -1)
    saved = np.asarray(Image.open(out / "p1.png")) == 255
    assert np.array_equal(saved, anonymize.dilate_mask(raw, 1))
    assert saved.sum() > raw.sum()
    assert r1["figures"]["pixel_recall"] > r0["figures"]["pixel_recall"]


def test_command_prints_table_and_writes_json(tmp_path, monkeypatch, capsys):
    imgs, masks = _scene(tmp_path)
    fake = types.ModuleType("pipeline.segment")
    created = []

    class PersonFinder:
        @classmethod
        def create(cls, preset="max", model="selfie", providers=None):
            created.append((preset, model))
            return RedFinder()

    fake.PersonFinder = PersonFinder
    monkeypatch.setitem(sys.modules, "pipeline.segment", fake)
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    out_json = tmp_path / "res" / "eval.json"
    ns = parser.parse_args([
        "--images", str(imgs), "--masks", str(masks), "--dilate", "0",
        "--recall", "balanced", "--json", str(out_json),
    ])
    assert ev.command(ns) == 0
    assert created == [("balanced", "selfie")]
    table = capsys.readouterr().out
    assert "leak rate" in table and "0.667 (2 of 3)" in table and "0.833" in table
    data = json.loads(out_json.read_text())
    assert data["figures"]["people"] == 3
    assert data["settings"]["preset"] == "balanced" and data["settings"]["dilate"] == 0


def test_cli_flags_defaults_and_validation(tmp_path):
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    ns = parser.parse_args(["--images", "a", "--masks", "b"])
    assert (ns.recall, ns.dilate, ns.model, ns.limit, ns.json, ns.save_masks) == ("max", 3, "selfie", None, None, None)
    for bad in (["--dilate", "-1"], ["--limit", "0"], ["--recall", "best"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--images", "a", "--masks", "b", *bad])
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="--images"):
        ev.command(parser.parse_args(["--images", str(tmp_path / "nope"), "--masks", str(tmp_path)]))


# ---------------------------------------------------------------------------- mosaics

def _mosaics_module():
    spec = importlib.util.spec_from_file_location("make_mosaics", REPO / "scripts" / "make_mosaics.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_mosaics", mod)  # dataclasses resolve annotations through it
    spec.loader.exec_module(sys.modules["make_mosaics"])
    return sys.modules["make_mosaics"]


def test_build_mosaic_layout_and_labels():
    mm = _mosaics_module()
    a = np.zeros((4, 6), np.uint8)
    a[0, 0] = 2
    a[3, 5] = 5
    b = np.zeros((2, 2), np.uint8)
    b[1, 1] = 1
    c = np.zeros((3, 3), np.uint8)
    items = [
        ("a", np.full((4, 6, 3), 10, np.uint8), a),
        ("b", np.full((2, 2, 3), 20, np.uint8), b),
        ("c", np.full((3, 3, 3), 30, np.uint8), c),
    ]
    canvas, labels, cells = mm.build_mosaic(items)
    assert canvas.shape == (8, 12, 3) and labels.shape == (8, 12)
    assert [c.box for c in cells] == [(0, 0, 6, 4), (8, 1, 10, 3), (1, 4, 4, 7)]
    assert [c.labels for c in cells] == [{2: 1, 5: 2}, {1: 3}, {}]
    assert labels[0, 0] == 1 and labels[3, 5] == 2 and labels[2, 9] == 3
    assert np.count_nonzero(labels) == 3
    assert (canvas[1:3, 8:10] == 20).all() and (canvas[4:7, 1:4] == 30).all()
    assert (canvas[4:, 6:] == 0).all()  # empty fourth cell
    with pytest.raises(ValueError):
        mm.build_mosaic(items * 2)


@needs_dev
def test_mosaics_from_dev_images(tmp_path):
    mm = _mosaics_module()
    manifest = mm.make_mosaics(DEV, tmp_path / "m", limit=6)
    assert [m["name"] for m in manifest] == ["MOSAIC_001", "MOSAIC_002"]
    assert [len(m["cells"]) for m in manifest] == [4, 2]
    sources = mm.source_pairs(DEV)[:6]
    assert [c["source"] for m in manifest for c in m["cells"]] == [n for n, _, _ in sources]
    src = {n: (i, k) for n, i, k in sources}
    assert json.loads((tmp_path / "m" / "mosaics.json").read_text()) == manifest

    for m in manifest:
        with Image.open(tmp_path / "m" / "images" / f"{m['name']}.jpg") as im:
            assert im.format == "JPEG"
            image = np.asarray(im.convert("RGB")).astype(np.int16)
        with Image.open(tmp_path / "m" / "masks" / f"{m['name']}_mask.png") as mk:
            assert mk.mode == "L"
            labels = np.asarray(mk)
        assert image.shape[:2] == labels.shape == (m["size"][1], m["size"][0])
        expected_people = 0
        seen: list[int] = []
        outside = np.ones(labels.shape, bool)
        for cell in m["cells"]:
            x0, y0, x1, y1 = cell["box"]
            outside[y0:y1, x0:x1] = False
            src_image, src_mask = (np.asarray(Image.open(p)) for p in src[cell["source"]])
            n_src = len(np.unique(src_mask)) - 1
            expected_people += n_src
            small, small_mask = mm.half(np.asarray(Image.open(src[cell["source"]][0]).convert("RGB")), src_mask)
            assert small_mask.shape == (y1 - y0, x1 - x0)
            assert small_mask.shape == (round(src_mask.shape[0] / 2), round(src_mask.shape[1] / 2))
            # mask: exactly the resized source, relabelled
            lut = np.zeros(256, np.uint8)
            for k, v in cell["labels"].items():
                lut[int(k)] = v
            assert np.array_equal(labels[y0:y1, x0:x1], lut[small_mask])
            assert len(cell["labels"]) == n_src
            seen += list(cell["labels"].values())
            # image: the resized source at the same place (JPEG q90 error only, ~2-4 levels) ...
            crop = image[y0:y1, x0:x1]
            err = np.abs(crop - small.astype(np.int16)).mean()
            assert err < 6.0
            # ... and a 3 px shift would be far worse (~15-28 levels on the dev photos)
            shifted = np.abs(image[y0:y1 - 3, x0 + 3:x1] - small[:-3, :-3].astype(np.int16)).mean()
            assert shifted > 2 * err
        assert not labels[outside].any()
        assert sorted(seen) == list(range(1, expected_people + 1))  # unique, 1..n
        assert sorted(int(k) for k in np.unique(labels) if k) == sorted(seen)

    # deterministic
    mm.make_mosaics(DEV, tmp_path / "again", limit=6)
    for sub in ("images/MOSAIC_002.jpg", "masks/MOSAIC_001_mask.png"):
        assert (tmp_path / "m" / sub).read_bytes() == (tmp_path / "again" / sub).read_bytes()
    # and the harness reads the layout as is
    assert [n for n, _, _ in pair_files(tmp_path / "m" / "images", tmp_path / "m" / "masks")] == [
        "MOSAIC_001", "MOSAIC_002",
    ]
