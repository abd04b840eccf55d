"""The hostile-input corpus builder writes each file with the properties it claims."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

import corpus
from corpus import BASE_SIZE, BOMB_SIZE, MAKER_NOTE, STRIP_SIZE, CorpusItem, build_corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, CorpusItem]]:
    root = tmp_path_factory.mktemp("corpus")
    items = build_corpus(root)
    return root, {i.relpath: i for i in items}


def open_at(root: Path, relpath: str) -> Image.Image:
    return Image.open(root.joinpath(*relpath.split("/")))


def cv2_decodes(data: bytes) -> bool:
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    except cv2.error:  # OpenCV asserts on an empty buffer
        return False


def test_items_are_well_formed_and_written(built):
    root, items = built
    assert len(items) == 19  # relpaths unique
    for rel, item in items.items():
        assert item.expect in ("ok", "error"), rel
        assert item.why, rel
        assert (item.expect_size is not None) == (item.expect == "ok"), rel
        assert root.joinpath(*rel.split("/")).is_file(), rel
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == set(items)


def test_ok_items_decode_to_their_expected_upright_size(built):
    root, items = built
    for rel, item in items.items():
        if item.expect != "ok":
            continue
        with open_at(root, rel) as im:
            im.load()
            assert ImageOps.exif_transpose(im).size == item.expect_size, rel
        assert cv2_decodes(root.joinpath(*rel.split("/")).read_bytes()), rel


def test_error_items_cannot_be_decoded(built):
    root, items = built
    for rel, item in items.items():
        if item.expect != "error":
            continue
        data = root.joinpath(*rel.split("/")).read_bytes()
        with pytest.raises((OSError, SyntaxError, Image.DecompressionBombError, ValueError)):
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        if "bomb" not in rel:  # OpenCV would try to allocate 10.8 GB for the bomb
            assert not cv2_decodes(data), rel


def test_formats_and_modes(built):
    root, _ = built
    expected = {
        "ok/baseline.jpg": ("JPEG", "RGB"),
        "formats/cmyk.jpg": ("JPEG", "CMYK"),
        "formats/gray.jpg": ("JPEG", "L"),
        "formats/rgba.png": ("PNG", "RGBA"),
        "formats/palette.png": ("PNG", "P"),
        "formats/photo.webp": ("WEBP", "RGB"),
        "formats/photo.tiff": ("TIFF", "RGB"),
    }
    for rel, (fmt, mode) in expected.items():
        with open_at(root, rel) as im:
            assert (im.format, im.mode) == (fmt, mode), rel
    with open_at(root, "ok/progressive.jpg") as im:
        assert im.info.get("progressive") or im.info.get("progression")
    with open_at(root, "ok/baseline.jpg") as im:
        assert not (im.info.get("progressive") or im.info.get("progression"))
    rgba = np.asarray(open_at(root, "formats/rgba.png"))
    assert rgba[..., 3].min() < 100 and rgba[..., 3].max() == 255
    assert len(open_at(root, "formats/palette.png").getcolors(256)) <= 64


def test_gray16_png_is_16_bit(built):
    root, _ = built
    data = (root / "formats" / "gray16.png").read_bytes()
    assert corpus.png_ihdr(data) == (*BASE_SIZE, 16, 0)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode in ("I;16", "I")
        assert np.asarray(im).max() > 255  # really uses the 16-bit range


def test_orientation6_jpeg_has_gps_maker_note_and_thumbnail(built):
    root, _ = built
    with open_at(root, "exif/orientation6_gps_thumb.jpg") as im:
        exif = im.getexif()
        assert im.size == BASE_SIZE[::-1]  # stored rotated
        assert exif[ExifTags.Base.Orientation] == 6
        assert exif[ExifTags.Base.Make] == "FuzzyCam"
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        assert gps[ExifTags.GPS.GPSLatitudeRef] == "N" and gps[ExifTags.GPS.GPSLongitudeRef] == "E"
        d, m, s = (float(v) for v in gps[ExifTags.GPS.GPSLatitude])
        assert d + m / 60 + s / 3600 == pytest.approx(corpus.EXIF_GPS["lat"], abs=1e-6)
        d, m, s = (float(v) for v in gps[ExifTags.GPS.GPSLongitude])
        assert d + m / 60 + s / 3600 == pytest.approx(corpus.EXIF_GPS["lon"], abs=1e-6)
        assert float(gps[ExifTags.GPS.GPSAltitude]) == pytest.approx(corpus.EXIF_GPS["alt_m"])
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        assert sub[ExifTags.Base.DateTimeOriginal] == corpus.EXIF_DATETIME
        assert sub[ExifTags.Base.MakerNote] == MAKER_NOTE
        ifd1 = exif.get_ifd(ExifTags.IFD.IFD1)
        assert ifd1[ExifTags.Base.Compression] == 6
        offset = ifd1[ExifTags.Base.JpegIFOffset]
        length = ifd1[ExifTags.Base.JpegIFByteCount]
        tiff = im.info["exif"][len(b"Exif\x00\x00"):]
        with Image.open(io.BytesIO(tiff[offset:offset + length])) as thumb:
            thumb.load()
            assert thumb.format == "JPEG" and max(thumb.size) == 160
            assert thumb.width < thumb.height  # same (stored) orientation as the main image
        upright = np.asarray(ImageOps.exif_transpose(im), np.float32)
    content = corpus.fit_cover(corpus.photo_like(*BASE_SIZE), *BASE_SIZE).astype(np.float32)
    assert upright.shape == content.shape
    assert np.abs(upright - content).mean() < 4  # JPEG loss only: the rotation is the right way


def test_bomb_png_reports_its_size_from_the_header_only(built, monkeypatch):
    root, _ = built
    path = root / "bad" / "bomb_60000x60000.png"
    assert path.stat().st_size < 1024
    assert corpus.png_ihdr(path.read_bytes()) == (*BOMB_SIZE, 8, 2)
    # Pillow's default guard (other code in the process may have changed the global)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(1024 * 1024 * 1024 // 4 // 3))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)  # refused at open, from the header, before any decoding
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(path) as im:  # lazy: reads the header, allocates no pixels
        assert im.size == BOMB_SIZE and im.format == "PNG"


def test_truncated_jpeg_stops_before_the_frame_header(built):
    root, _ = built
    data = (root / "bad" / "truncated_header.jpg").read_bytes()
    whole = (root / "ok" / "baseline.jpg").read_bytes()
    assert whole.startswith(data) and len(data) < len(whole) // 10
    assert b"\xff\xc0" not in data and b"\xff\xc2" not in data and b"\xff\xdb" in data


def test_odd_keys_and_sizes(built):
    root, items = built
    assert (root / "nested" / "dir one" / "ünïcødé 東京.jpg").is_file()
    assert (root / "odd" / "100%+plus#hash.jpg").is_file()
    assert items["sizes/strip_9000x40.jpg"].expect_size == STRIP_SIZE
    with open_at(root, "sizes/one_pixel.jpg") as im:
        assert im.size == (1, 1)


def test_people_image_is_the_content_of_ordinary_images(tmp_path):
    person = np.zeros((300, 200, 3), np.uint8)
    person[:, :100] = (220, 30, 30)
    person[:, 100:] = (30, 30, 220)
    build_corpus(tmp_path, person)
    got = np.asarray(Image.open(tmp_path / "ok" / "baseline.jpg"), np.float32)
    want = corpus.fit_cover(person, *BASE_SIZE).astype(np.float32)
    assert np.abs(got - want).mean() < 6
    assert got[:, :200, 0].mean() > 150 and got[:, 280:, 2].mean() > 150  # red left, blue right
    gray_items = build_corpus(tmp_path / "gray", person[..., 0])  # HxW accepted
    assert len(gray_items) == 19
    with pytest.raises(ValueError):
        build_corpus(tmp_path / "bad", person.astype(np.float32))
