"""A corpus of hostile and odd input files, for pipeline tests (no tests in this module).

``build_corpus(root, people_image=None)`` writes every file under ``root`` and returns one
:class:`CorpusItem` per file: its key relative to ``root``, what the pipeline must do with it
(``'ok'``: an anonymized output of ``expect_size``; ``'error'``: an error row, no crash, no
output), and why. Everything is made from code: numpy/Pillow images and raw bytes where a
file must be malformed.

With ``people_image`` (HxW, HxWx3 or HxWx4 uint8) the ordinary ``ok`` images show that image
(cover-scaled and cropped), so they contain a person; otherwise a synthetic photo-like scene.
"""

from __future__ import annotations

import importlib.util
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import exif_blob as eb  # tests/ is on sys.path under pytest's default import mode
except ImportError:  # pragma: no cover - imported some other way
    _spec = importlib.util.spec_from_file_location("exif_blob", Path(__file__).with_name("exif_blob.py"))
    eb = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(eb)  # type: ignore[union-attr]

OK, ERROR = "ok", "error"
BASE_SIZE = (480, 360)  # (width, height) of the ordinary images
BOMB_SIZE = (60000, 60000)
STRIP_SIZE = (9000, 40)
MAKER_NOTE = b"FUZZYCAM\x00\x01\x00CORPUS-MAKERNOTE serial=FC-0042"
EXIF_DATETIME = "2024:05:17 10:42:07"
EXIF_GPS = dict(lat=47.376887, lon=8.541694, alt_m=408.3)


@dataclass(frozen=True)
class CorpusItem:
    relpath: str                              # key under root, "/"-separated
    expect: str                               # "ok" or "error"
    why: str
    expect_size: tuple[int, int] | None = None  # (width, height) after EXIF orientation, ok items


# ----------------------------------------------------------------------------- pixel content

def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """HxWx3 uint8 scene: sky gradient, ground, soft blobs, a few 'buildings', sensor noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    horizon = 0.55
    sky = np.stack([90 + 110 * y, 140 + 80 * y, 215 + 20 * y], -1) * np.ones_like(x)[..., None]
    ground = np.stack([110 - 40 * y, 100 - 30 * y, 85 - 25 * y], -1) * np.ones_like(x)[..., None]
    img = np.where((y < horizon)[..., None], sky, ground).astype(np.float32)
    for _ in range(6):  # buildings on the horizon
        x0, w = rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        top = horizon - rng.uniform(0.1, 0.35)
        sel = (x >= x0) & (x < x0 + w) & (y >= top) & (y < horizon)
        img[sel] = rng.uniform(60, 200, 3)
    for _ in range(8):  # soft blobs
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.15)
        a = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - 0.6 * a) + rng.uniform(0, 255, 3) * 0.6 * a
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """HxW / HxWx1 / HxWx3 / HxWx4 uint8 -> HxWx3 uint8."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"people_image must be uint8, got {a.dtype}")
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3].copy()
    raise ValueError(f"people_image must be HxW, HxWx3 or HxWx4, got shape {a.shape}")


def fit_cover(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``rgb`` to cover (width, height) and centre-crop it."""
    h, w = rgb.shape[:2]
    scale = max(width / w, height / h)
    sw, sh = max(width, round(w * scale)), max(height, round(h * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((sw, sh), Image.Resampling.BILINEAR))
    x0, y0 = (sw - width) // 2, (sh - height) // 2
    return np.ascontiguousarray(resized[y0:y0 + height, x0:x0 + width])


def strip(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """The image scaled to ``height`` and tiled side by side to ``width`` (many small people)."""
    h, w = rgb.shape[:2]
    tile_w = max(1, round(w * height / h))
    tile = np.asarray(Image.fromarray(rgb).resize((tile_w, height), Image.Resampling.BILINEAR))
    reps = -(-width // tile_w)
    return np.ascontiguousarray(np.tile(tile, (1, reps, 1))[:, :width])


# ----------------------------------------------------------------------------- encoders

def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg_segments(jpeg: bytes) -> list[tuple[int, int, int]]:
    """``(marker, offset, length)`` of each marker segment before the scan data (SOS incl.)."""
    out, pos = [], 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF:
        marker = jpeg[pos + 1]
        (length,) = struct.unpack(">H", jpeg[pos + 2:pos + 4])
        out.append((marker, pos, length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def cut_in_header(jpeg: bytes) -> bytes:
    """The JPEG cut half-way through its first quantization table (DQT), before any SOF:
    no decoder can learn the image size from it."""
    for marker, offset, length in jpeg_segments(jpeg):
        if marker == 0xDB:
            return jpeg[:offset + 2 + length // 2]
    raise ValueError("JPEG without DQT")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header (signature, IHDR with CRC) claiming ``width`` x ``height`` RGB
    8-bit, a tiny IDAT (a few compressed zero rows, far short of the claimed size) and IEND.
    A reader must refuse it from the header alone."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_ihdr(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR, read from the bytes."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG with IHDR first")
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    return w, h, depth, ctype


def orientation6_jpeg(upright: np.ndarray) -> bytes:
    """JPEG whose pixels are stored rotated 90 deg CCW with EXIF Orientation 6 (view: rotate
    90 deg CW), plus GPS, DateTimeOriginal, Make/Model, a MakerNote and an IFD1 thumbnail."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    thumb = stored.copy()
    thumb.thumbnail((160, 160))
    tiff = eb.street_camera_exif(
        orientation=6, width=stored.width, height=stored.height,
        thumbnail=encode(thumb, "JPEG", quality=75), maker_note=MAKER_NOTE,
        datetime_original=EXIF_DATETIME, **EXIF_GPS,
    )
    return eb.insert_segments(encode(stored, "JPEG", quality=90), [eb.exif_segment(tiff)])


# ----------------------------------------------------------------------------- the corpus

def corpus_files(content: np.ndarray) -> list[tuple[CorpusItem, bytes]]:
    """Every corpus item with its bytes; ``content`` is the HxWx3 uint8 ordinary picture
    (any size; it is cover-cropped to BASE_SIZE)."""
    w, h = BASE_SIZE
    rgb = fit_cover(content, w, h)
    im = Image.fromarray(rgb)
    jpg = encode(im, "JPEG", quality=90)
    gray = im.convert("L")
    rgba = np.dstack([rgb, np.tile(np.linspace(64, 255, w).astype(np.uint8), (h, 1))])
    gray16 = (np.asarray(gray).astype(np.uint16) * 257)
    sw, sh = STRIP_SIZE
    tiny = rgb.reshape(-1, 3).mean(axis=0).round().astype(np.uint8).reshape(1, 1, 3)
    text = b"This is a text file, not an image.\nIt only has a .jpg name.\n" * 20

    def ok(relpath: str, why: str, data: bytes, size: tuple[int, int] = BASE_SIZE) -> tuple[CorpusItem, bytes]:
        return CorpusItem(relpath, OK, why, size), data

    def error(relpath: str, why: str, data: bytes) -> tuple[CorpusItem, bytes]:
        return CorpusItem(relpath, ERROR, why, None), data

    return [
        ok("ok/baseline.jpg", "ordinary baseline RGB JPEG", jpg),
        ok("ok/progressive.jpg", "progressive RGB JPEG", encode(im, "JPEG", quality=90, progressive=True)),
        ok("formats/cmyk.jpg", "CMYK JPEG (Adobe APP14): must be converted to RGB", encode(im.convert("CMYK"), "JPEG", quality=90)),
        ok("formats/gray.jpg", "8-bit grayscale JPEG (one channel)", encode(gray, "JPEG", quality=90)),
        ok("formats/gray16.png", "16-bit grayscale PNG (Pillow mode I;16)", encode(Image.fromarray(gray16), "PNG")),
        ok("formats/rgba.png", "RGBA PNG with a transparency gradient", encode(Image.fromarray(rgba, "RGBA"), "PNG")),
        ok("formats/palette.png", "palette (mode P) PNG, 64 colours",
           encode(im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG")),
        ok("formats/photo.webp", "lossy WebP", encode(im, "WEBP", quality=85)),
        ok("formats/photo.tiff", "uncompressed RGB TIFF", encode(im, "TIFF")),
        ok("exif/orientation6_gps_thumb.jpg",
           "EXIF Orientation 6 (stored rotated), GPS, MakerNote and IFD1 thumbnail: output must be "
           "upright, keep GPS (metadata=keep), drop thumbnail and MakerNote",
           orientation6_jpeg(rgb)),
        ok("sizes/one_pixel.jpg", "1x1 image", encode(Image.fromarray(tiny), "JPEG", quality=90), (1, 1)),
        ok("sizes/strip_9000x40.jpg", "9000x40 strip: extreme aspect ratio",
           encode(Image.fromarray(strip(rgb, sw, sh)), "JPEG", quality=90), STRIP_SIZE),
        ok("nested/dir one/ünïcødé 東京.jpg", "nested folders, a space and non-ASCII characters in the key", jpg),
        ok("odd/100%+plus#hash.jpg", "'%', '+' and '#' in the key (URL-quoting hazards)", jpg),
        ok("odd/UPPER CASE.JPEG", "upper-case .JPEG extension and a space", jpg),
        error("bad/truncated_header.jpg", "JPEG cut inside its first DQT segment, before SOF: no size, no pixels",
              cut_in_header(jpg)),
        error("bad/empty.jpg", "zero-byte file", b""),
        error("bad/text.jpg", "plain text named .jpg", text),
        error("bad/bomb_60000x60000.png",
              f"PNG header claims {BOMB_SIZE[0]}x{BOMB_SIZE[1]} (3.6 Gpx): must be refused from the header, "
              "before decoding", png_claiming(*BOMB_SIZE)),
    ]


def build_corpus(root: Path, people_image: np.ndarray | None = None) -> list[CorpusItem]:
    """Write the corpus under ``root`` (created if needed) and return its items."""
    content = as_rgb(people_image) if people_image is not None else photo_like(*BASE_SIZE)
    root = Path(root)
    items = []
    for item, data in corpus_files(content):
        path = root.joinpath(*item.relpath.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        items.append(item)
    return items


def by_path(items: list[CorpusItem]) -> dict[str, CorpusItem]:
    return {i.relpath: i for i in items}

