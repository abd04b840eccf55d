"""pipeline/decode.py and pipeline/encode.py: every corpus file decodes upright or fails with a
clear message; the JPEG writer keeps what is useful and drops what identifies or shows the
original (thumbnails, maker notes, serials, XMP previews)."""

from __future__ import annotations

import io
import time
import tracemalloc
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

import exif_blob as eb
from corpus import (
    BASE_SIZE, BOMB_SIZE, EXIF_DATETIME, EXIF_GPS, MAKER_NOTE, STRIP_SIZE, corpus_files, fit_cover,
    photo_like,
)
from pipeline.decode import DecodeError, decode_image, to_rgb, xmp_projection
from pipeline.encode import clean_exif, clean_xmp, encode_jpeg

MAX_PIXELS = 100_000_000
IFD_EXIF, IFD_GPS = ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo
TAG_ORIENTATION, TAG_DATETIME_ORIGINAL, TAG_MAKER_NOTE = 0x0112, 0x9003, 0x927C
TAG_PIXEL_X, TAG_PIXEL_Y, TAG_BODY_SERIAL = 0xA002, 0xA003, 0xA431

_CONTENT = photo_like(*BASE_SIZE)
REFERENCE = fit_cover(_CONTENT, *BASE_SIZE)  # what the corpus's ordinary images show
CORPUS = {item.relpath: (item, data) for item, data in corpus_files(_CONTENT)}
GRAY_ITEMS = {"formats/gray.jpg", "formats/gray16.png"}
ERROR_MESSAGES = {  # what a person reading the error row must learn
    "bad/truncated_header.jpg": ["header"],
    "bad/empty.jpg": ["empty", "0 bytes"],
    "bad/text.jpg": ["not a recognised image format"],
    "bad/bomb_60000x60000.png": [f"{BOMB_SIZE[0]}x{BOMB_SIZE[1]}", f"{BOMB_SIZE[0] * BOMB_SIZE[1]:,}", "--max-pixels",
                                 "before decoding"],
}


def luma(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)


def jpeg_bytes(rgb: np.ndarray, **params) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90, **params)
    return buf.getvalue()


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def xmp_doc(inner: str, attrs: str = "") -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:xap="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:xmpGImg="http://ns.adobe.com/xap/1.0/g/img/"\n'
        '    xmlns:xapGImg="http://ns.adobe.com/xap/1.0/g/img/"\n'
        '    xmlns:GPano="http://ns.google.com/photos/1.0/panorama/"\n'
        '    xmlns:GCamera="http://ns.google.com/photos/1.0/camera/"\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        f'    GPano:ProjectionType="equirectangular" xmp:CreatorTool="StreetRig" {attrs}>\n'
        '   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">Main street</rdf:li></rdf:Alt></dc:description>\n'
        f'{inner}'
        '  </rdf:Description>\n'
        ' </rdf:RDF>\n'
        '</x:xmpmeta>\n'
        '<?xpacket end="w"?>'
    ).encode("utf-8")


PREVIEW_B64 = "/9j/4AAQSkZJRgABAgEASABIAAD" + "QUJDREVGR0hJSktMTU5PUA" * 20


def thumbnails_element(ns: str = "xmp", img: str = "xmpGImg") -> str:
    return (
        f'   <{ns}:Thumbnails><rdf:Alt><rdf:li rdf:parseType="Resource">\n'
        f'     <{img}:format>JPEG</{img}:format><{img}:width>256</{img}:width>\n'
        f'     <{img}:image>{PREVIEW_B64}</{img}:image>\n'
        f'   </rdf:li></rdf:Alt></{ns}:Thumbnails>\n'
    )


def assert_wellformed_xml(xmp: bytes) -> None:
    ET.fromstring(xmp.decode("utf-8").split("?>", 1)[1].rsplit("<?xpacket", 1)[0])


# ------------------------------------------------------------------------------ decode: the corpus

@pytest.mark.parametrize("relpath", sorted(CORPUS))
def test_every_corpus_file_decodes_upright_or_fails_clearly(relpath):
    item, data = CORPUS[relpath]
    if item.expect == "error":
        with pytest.raises(DecodeError) as err:
            decode_image(data, max_pixels=MAX_PIXELS)
        msg = str(err.value)
        for fragment in ERROR_MESSAGES[relpath]:
            assert fragment in msg, (relpath, msg)
        return
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    w, h = item.expect_size
    img = decoded.image
    assert img.dtype == np.uint8 and img.shape == (h, w, 3) and img.flags.c_contiguous, relpath
    assert (decoded.width, decoded.height) == (w, h)
    assert not decoded.panorama
    if (w, h) != BASE_SIZE:
        return
    # the picture itself, upright (an unapplied orientation would not even have this shape)
    if relpath in GRAY_ITEMS:
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
        assert np.abs(luma(img) - luma(REFERENCE)).mean() < 3, relpath
    else:
        diff = np.abs(img.astype(np.int16) - REFERENCE).mean()
        assert diff < 6, (relpath, diff)


def test_lossless_formats_decode_to_the_exact_pixels():
    rgba = decode_image(CORPUS["formats/rgba.png"][1], MAX_PIXELS).image
    np.testing.assert_array_equal(rgba, REFERENCE)  # alpha dropped, colours untouched
    tiff = decode_image(CORPUS["formats/photo.tiff"][1], MAX_PIXELS).image
    np.testing.assert_array_equal(tiff, REFERENCE)
    gray16 = decode_image(CORPUS["formats/gray16.png"][1], MAX_PIXELS).image
    np.testing.assert_array_equal(gray16[..., 0], np.asarray(Image.fromarray(REFERENCE).convert("L")))


def test_the_bomb_is_refused_from_its_header_without_allocating():
    data = CORPUS["bad/bomb_60000x60000.png"][1]
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(DecodeError, match="refused before decoding"):
            decode_image(data, max_pixels=MAX_PIXELS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak
    assert time.perf_counter() - t0 < 2.0


def test_max_pixels_is_inclusive():
    data = CORPUS["ok/baseline.jpg"][1]
    w, h = BASE_SIZE
    assert decode_image(data, max_pixels=w * h).image.shape == (h, w, 3)
    with pytest.raises(DecodeError, match=f"{w}x{h} = {w * h:,} pixels, over --max-pixels {w * h - 1:,}"):
        decode_image(data, max_pixels=w * h - 1)


def test_a_truncated_image_body_is_a_decode_error():
    data = CORPUS["ok/baseline.jpg"][1]
    png = io.BytesIO()
    Image.fromarray(REFERENCE).save(png, "PNG")
    for cut in (data[: len(data) // 2], png.getvalue()[: len(png.getvalue()) // 2]):
        try:
            decoded = decode_image(cut, MAX_PIXELS)
        except DecodeError as exc:
            assert "truncated" in str(exc) or "corrupt" in str(exc)
        else:  # a decoder may pad a cut JPEG; it must still be a full-size RGB image
            assert decoded.image.shape == (BASE_SIZE[1], BASE_SIZE[0], 3)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                                  "I;16", "I", "F"])
def test_every_pillow_mode_becomes_rgb_uint8(mode):
    im = Image.new(mode, (5, 3))
    out = to_rgb(im)
    assert out.shape == (3, 5, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_high_bit_depth_modes_are_scaled_to_8_bit():
    g = np.arange(256, dtype=np.int64).reshape(16, 16)
    np.testing.assert_array_equal(to_rgb(Image.fromarray((g * 257).astype(np.uint16)))[..., 1], g)  # I;16
    np.testing.assert_array_equal(to_rgb(Image.fromarray((g * 257).astype(np.int32)))[..., 2], g)  # I, 16-bit range
    np.testing.assert_array_equal(to_rgb(Image.fromarray(g.astype(np.int32)))[..., 0], g)  # I, 8-bit range
    f = to_rgb(Image.fromarray((g / 255.0 * 7.5 - 3).astype(np.float32)))  # F: stretched to 0..255
    assert f[0, 0, 0] == 0 and f[-1, -1, 0] == 255
    assert (np.diff(f[..., 0].ravel().astype(int)) >= 0).all()


def test_decoded_metadata_is_returned_raw():
    icc = srgb_icc()
    xmp = xmp_doc("")
    exif = eb.build_exif([(eb.TAG_MAKE, eb.ASCII, "FuzzyCam")])
    data = jpeg_bytes(REFERENCE, icc_profile=icc, xmp=xmp, exif=b"Exif\x00\x00" + exif)
    d = decode_image(data, MAX_PIXELS)
    assert d.icc == icc and d.xmp == xmp and d.format == "JPEG"
    assert d.exif is not None and b"FuzzyCam" in d.exif
    assert d.panorama  # the XMP says equirectangular, though the image is 4:3


def test_panorama_from_xmp_in_png_and_webp_and_from_aspect():
    pano_xmp = '<x:xmpmeta><rdf:Description GPano:ProjectionType="equirectangular"/></x:xmpmeta>'
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", pano_xmp)
    png = io.BytesIO()
    Image.new("RGB", (60, 40)).save(png, "PNG", pnginfo=info)
    assert decode_image(png.getvalue(), MAX_PIXELS).panorama
    webp = io.BytesIO()
    Image.new("RGB", (60, 40)).save(webp, "WEBP", xmp=pano_xmp.encode())
    assert decode_image(webp.getvalue(), MAX_PIXELS).panorama
    assert decode_image(jpeg_bytes(np.zeros((1000, 2000, 3), np.uint8)), MAX_PIXELS).panorama
    assert not decode_image(jpeg_bytes(np.zeros((1000, 1500, 3), np.uint8)), MAX_PIXELS).panorama


# ------------------------------------------------------------------------------ xmp_projection

@pytest.mark.parametrize("xmp,expected", [
    (b'<rdf:Description GPano:ProjectionType="equirectangular"/>', "equirectangular"),
    (b"<rdf:Description GPano:ProjectionType='equirectangular'/>", "equirectangular"),
    (b'<rdf:Description GPano:ProjectionType = "cylindrical" GPano:UsePanoramaViewer="True"/>', "cylindrical"),
    (b"<GPano:ProjectionType>equirectangular</GPano:ProjectionType>", "equirectangular"),
    (b"<GPano:ProjectionType>\n  equirectangular\n</GPano:ProjectionType>", "equirectangular"),
    (b'<rdf:Description dc:format="image/jpeg"/>', None),
    (b"", None),
    (None, None),
])
def test_xmp_projection_attribute_and_element_forms(xmp, expected):
    assert xmp_projection(xmp) == expected


def test_xmp_projection_in_a_full_packet():
    assert xmp_projection(xmp_doc("")) == "equirectangular"
    element = xmp_doc("   <GPano:ProjectionType>equirectangular</GPano:ProjectionType>\n").replace(
        b'GPano:ProjectionType="equirectangular" ', b"")
    assert b'ProjectionType="' not in element
    assert xmp_projection(element) == "equirectangular"


# ------------------------------------------------------------------------------ encode: keep

@pytest.fixture(scope="module")
def rotated_camera_jpeg():
    """The corpus's orientation-6 file decoded, and the JPEG written from it with 'keep'."""
    item, data = CORPUS["exif/orientation6_gps_thumb.jpg"]
    assert data.count(b"\xff\xd8\xff") == 2  # the input does carry an IFD1 thumbnail
    decoded = decode_image(data, MAX_PIXELS)
    out = encode_jpeg(decoded.image, 90, "keep", decoded.exif, decoded.xmp, decoded.icc)
    return decoded, out


def test_keep_preserves_gps_and_capture_time_and_resets_orientation(rotated_camera_jpeg):
    decoded, out = rotated_camera_jpeg
    src = Image.Exif()
    src.load(decoded.exif)
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == BASE_SIZE
        exif = im.getexif()
        pixels = np.asarray(im.convert("RGB"))
    assert exif[TAG_ORIENTATION] == 1
    assert exif[0x010F] == "FuzzyCam" and exif[0x0110] == "StreetRig 360-S"
    gps = exif.get_ifd(IFD_GPS)
    assert gps == src.get_ifd(IFD_GPS) and gps  # every GPS tag, same values
    assert gps[1] == "N" and gps[3] == "E"
    lat = sum(float(v) / 60 ** k for k, v in enumerate(gps[2]))
    lon = sum(float(v) / 60 ** k for k, v in enumerate(gps[4]))
    assert abs(lat - EXIF_GPS["lat"]) < 1e-5 and abs(lon - EXIF_GPS["lon"]) < 1e-5
    sub = exif.get_ifd(IFD_EXIF)
    assert sub[TAG_DATETIME_ORIGINAL] == EXIF_DATETIME
    assert (sub[TAG_PIXEL_X], sub[TAG_PIXEL_Y]) == BASE_SIZE  # the written (upright) size
    # the written pixels are upright, like the decoded ones
    assert np.abs(pixels.astype(np.int16) - REFERENCE).mean() < 6
    # a reader applying the orientation must not rotate them again
    with Image.open(io.BytesIO(out)) as im:
        from PIL import ImageOps

        assert ImageOps.exif_transpose(im).size == BASE_SIZE


def test_keep_drops_thumbnail_maker_note_and_serial(rotated_camera_jpeg):
    _, out = rotated_camera_jpeg
    assert out.count(b"\xff\xd8\xff") == 1  # no embedded JPEG thumbnail
    assert MAKER_NOTE not in out and b"CORPUS-MAKERNOTE" not in out
    assert b"FC-0042-SERIAL" not in out
    with Image.open(io.BytesIO(out)) as im:
        exif = im.getexif()
        assert not exif.get_ifd(ExifTags.IFD.IFD1)
        sub = exif.get_ifd(IFD_EXIF)
    assert TAG_MAKER_NOTE not in sub and TAG_BODY_SERIAL not in sub


def test_keep_drops_identifiers_and_large_blobs_from_the_exif_ifd():
    tiff = eb.build_exif(
        [(eb.TAG_MAKE, eb.ASCII, "FuzzyCam"), (0x013C, eb.ASCII, "owner-laptop")],  # HostComputer: not kept
        exif=[
            (eb.TAG_DATETIME_ORIGINAL, eb.ASCII, EXIF_DATETIME),
            (0xA420, eb.ASCII, "UNIQUE-ID-1234"),      # ImageUniqueID
            (0xA430, eb.ASCII, "Jane Owner"),          # CameraOwnerName
            (0xA435, eb.ASCII, "LENS-SERIAL-99"),      # LensSerialNumber
            (0x9286, eb.UNDEFINED, b"ASCII\x00\x00\x00" + b"P" * 6000),  # a big UserComment blob
            (0xA434, eb.ASCII, "FuzzyLens 8mm"),       # LensModel: harmless, kept
        ],
    )
    out = clean_exif(tiff, (64, 32))
    assert out is not None
    for secret in (b"owner-laptop", b"UNIQUE-ID-1234", b"Jane Owner", b"LENS-SERIAL-99", b"PPPPPPPP"):
        assert secret not in out
    exif = Image.Exif()
    exif.load(out)
    assert exif[0x010F] == "FuzzyCam" and exif[TAG_ORIENTATION] == 1
    sub = exif.get_ifd(IFD_EXIF)
    assert sub[0xA434] == "FuzzyLens 8mm" and sub[TAG_DATETIME_ORIGINAL] == EXIF_DATETIME
    assert (sub[TAG_PIXEL_X], sub[TAG_PIXEL_Y]) == (64, 32)


def test_unparseable_exif_is_dropped_not_copied():
    assert clean_exif(b"certainly not a TIFF structure") is None
    assert clean_exif(None) is None and clean_exif(b"") is None
    out = encode_jpeg(REFERENCE, 90, "keep", exif=b"certainly not a TIFF structure")
    assert b"certainly not" not in out


def test_keep_retains_icc_and_xmp():
    icc = srgb_icc()
    xmp = xmp_doc("")
    out = encode_jpeg(REFERENCE, 90, "keep", None, xmp, icc)
    with Image.open(io.BytesIO(out)) as im:
        assert im.info.get("icc_profile") == icc
        assert im.info.get("xmp") == xmp


# ------------------------------------------------------------------------------ encode: strip

def test_strip_leaves_only_the_icc_profile():
    icc = srgb_icc()
    camera = CORPUS["exif/orientation6_gps_thumb.jpg"][1]
    src = decode_image(camera, MAX_PIXELS)
    xmp = xmp_doc(thumbnails_element())
    out = encode_jpeg(src.image, 85, "strip", src.exif, xmp, icc)
    assert b"Exif\x00\x00" not in out and b"http://ns.adobe.com/xap/1.0/" not in out
    assert b"FuzzyCam" not in out and b"equirectangular" not in out
    assert out.count(b"\xff\xd8\xff") == 1
    with Image.open(io.BytesIO(out)) as im:
        assert "exif" not in im.info and "xmp" not in im.info
        assert not im.getexif()
        assert im.info.get("icc_profile") == icc
    # ... and no ICC when the input had none
    bare = encode_jpeg(src.image, 85, "strip", src.exif, xmp, None)
    with Image.open(io.BytesIO(bare)) as im:
        assert "icc_profile" not in im.info and "exif" not in im.info


def test_strip_end_to_end_from_a_file_with_icc():
    icc = srgb_icc()
    data = jpeg_bytes(REFERENCE, icc_profile=icc, xmp=xmp_doc(""),
                      exif=b"Exif\x00\x00" + eb.build_exif([(eb.TAG_MAKE, eb.ASCII, "FuzzyCam")]))
    d = decode_image(data, MAX_PIXELS)
    out = encode_jpeg(d.image, 90, "strip", d.exif, d.xmp, d.icc)
    with Image.open(io.BytesIO(out)) as im:
        assert im.info.get("icc_profile") == icc
        assert "exif" not in im.info and "xmp" not in im.info


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="keep or strip"):
        encode_jpeg(REFERENCE, 90, "redact")


# ------------------------------------------------------------------------------ XMP previews

@pytest.mark.parametrize("inner,attrs,gone", [
    (thumbnails_element(), "", [b"xmp:Thumbnails", b"xmpGImg:image"]),
    ('   <rdf:Description><xmpGImg:image>' + PREVIEW_B64 + '</xmpGImg:image></rdf:Description>\n', "",
     [b"xmpGImg:image"]),
    ("", f'xmpGImg:image="{PREVIEW_B64}"', [b"xmpGImg:image"]),
    ('   <GCamera:Data>' + PREVIEW_B64 + '</GCamera:Data>\n', "", [b"GCamera:Data"]),
])
def test_xmp_previews_are_removed_and_other_tags_kept(inner, attrs, gone):
    xmp = xmp_doc(inner, attrs)
    assert PREVIEW_B64.encode() in xmp
    out = encode_jpeg(REFERENCE, 90, "keep", xmp=xmp)
    with Image.open(io.BytesIO(out)) as im:
        kept = im.info["xmp"]
    assert PREVIEW_B64[:40].encode() not in kept and PREVIEW_B64[:40].encode() not in out
    for tag in gone:
        assert tag not in kept
    assert b'GPano:ProjectionType="equirectangular"' in kept and b'xmp:CreatorTool="StreetRig"' in kept
    assert b"Main street" in kept
    assert xmp_projection(kept) == "equirectangular"
    assert_wellformed_xml(kept)
    # written files keep their panorama flag through decode
    assert decode_image(out, MAX_PIXELS).panorama


def test_xmp_previews_under_other_namespace_prefixes_are_removed():
    xmp = xmp_doc(thumbnails_element(ns="xap", img="xapGImg"))
    kept = clean_xmp(xmp)
    assert kept is not None and PREVIEW_B64[:40].encode() not in kept


def test_an_oversized_xmp_is_dropped():
    big = xmp_doc("   <dc:subject>" + "x" * 70000 + "</dc:subject>\n")
    assert clean_xmp(big) is None
    out = encode_jpeg(REFERENCE, 90, "keep", xmp=big)
    with Image.open(io.BytesIO(out)) as im:
        assert "xmp" not in im.info


def test_strip_size_stays_the_written_size():
    item, data = CORPUS["sizes/strip_9000x40.jpg"]
    d = decode_image(data, MAX_PIXELS)
    out = encode_jpeg(d.image, 80, "keep", d.exif, d.xmp, d.icc)
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == STRIP_SIZE
