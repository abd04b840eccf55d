"""The shipped demo samples are what pipeline/samples/README.md says they are."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageOps

import exif_blob

SAMPLES = Path(__file__).resolve().parents[1] / "pipeline" / "samples"
JPEGS = ["street_scene_exif.jpg", "plaza_xmp.jpg", "astronaut.jpg", "grace_hopper.jpg", "cameraman.jpg"]


def test_samples_are_small_jpegs_with_a_readme():
    files = sorted(p.name for p in SAMPLES.iterdir() if p.is_file())
    assert files == sorted(JPEGS + ["README.md"])
    assert sum(p.stat().st_size for p in SAMPLES.iterdir()) < 3_000_000
    readme = (SAMPLES / "README.md").read_text()
    for name in JPEGS:
        assert f"`{name}`" in readme
        with Image.open(SAMPLES / name) as im:
            assert im.format == "JPEG"


def test_street_scene_has_camera_exif_thumbnail_and_maker_note():
    with Image.open(SAMPLES / "street_scene_exif.jpg") as im:
        exif = im.getexif()
        assert im.size == (900, 1600)
        assert exif[ExifTags.Base.Orientation] == 6
        assert ImageOps.exif_transpose(im).size == (1600, 900)
        assert {ExifTags.Base.Make, ExifTags.Base.Model} <= set(exif)
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        assert {ExifTags.GPS.GPSLatitude, ExifTags.GPS.GPSLongitude, ExifTags.GPS.GPSAltitude} <= set(gps)
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        assert sub[ExifTags.Base.DateTimeOriginal] == "2024:05:17 10:42:07"
        assert b"PRIVATE-MAKERNOTE" in sub[ExifTags.Base.MakerNote]
        ifd1 = exif.get_ifd(ExifTags.IFD.IFD1)
        off, n = ifd1[ExifTags.Base.JpegIFOffset], ifd1[ExifTags.Base.JpegIFByteCount]
        thumb = Image.open(io.BytesIO(im.info["exif"][6:][off:off + n]))
        assert thumb.size == (90, 160)


def test_plaza_has_xmp_description_and_no_exif():
    with Image.open(SAMPLES / "plaza_xmp.jpg") as im:
        xmp = im.info["xmp"]
        assert im.size == (1280, 720)
        assert not im.getexif()
    assert re.search(rb"<dc:description>.*fuzzy-people demo", xmp, re.S)
    assert b"GPano" not in xmp


def test_build_exif_rejects_caller_supplied_pointer_tags():
    with pytest.raises(ValueError):
        exif_blob.build_exif([(exif_blob.TAG_GPS_IFD, exif_blob.LONG, 0)])
    with pytest.raises(ValueError):
        exif_blob.build_exif([], thumbnail=b"not a jpeg")
