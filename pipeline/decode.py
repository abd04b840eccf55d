"""Bytes -> upright RGB pixels plus the metadata the encoder may keep.

The image's header is read first and its size checked against ``--max-pixels`` before any
pixel is decoded, so a file that claims 60000x60000 costs nothing. EXIF orientation is
applied to the pixels; every mode (CMYK, grayscale, 16-bit, palette, alpha) becomes 8-bit RGB.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np

from .segment import is_panorama


class DecodeError(ValueError):
    """The bytes are not an image we can process; the message says why, for a person."""


@dataclass
class Decoded:
    image: np.ndarray  # HxWx3 uint8, upright
    exif: bytes | None  # raw EXIF (TIFF) block as read, or None
    xmp: bytes | None
    icc: bytes | None
    format: str
    panorama: bool

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


_GPANO = re.compile(rb"GPano:ProjectionType\s*(?:=\s*[\"']|>)\s*([A-Za-z]+)")


def xmp_projection(xmp: bytes | None) -> str | None:
    if not xmp:
        return None
    m = _GPANO.search(xmp)
    return m.group(1).decode("ascii", "replace") if m else None


def decode_image(data: bytes, max_pixels: int) -> Decoded:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise DecodeError("empty file (0 bytes)")
    Image.MAX_IMAGE_PIXELS = None  # our own guard below runs before decoding, with a clear message
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError(f"not a recognised image format (first bytes {data[:8]!r})") from None
    except Exception as exc:
        raise DecodeError(f"unreadable image header: {type(exc).__name__}: {exc}") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise DecodeError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise DecodeError(
            f"image is {w}x{h} = {w * h:,} pixels, over --max-pixels {max_pixels:,}; refused before decoding"
        )
    fmt = img.format or "unknown"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except Exception as exc:
        raise DecodeError(f"corrupt or truncated {fmt} data: {type(exc).__name__}: {exc}") from None
    exif_raw = img.info.get("exif")
    xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    icc = img.info.get("icc_profile")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:
        pass  # a broken orientation tag: keep the pixels as stored
    arr = to_rgb(img)
    pano = is_panorama(arr.shape[1], arr.shape[0], xmp_projection(xmp))
    return Decoded(arr, exif_raw if isinstance(exif_raw, bytes) else None, xmp, icc, fmt, pano)


def to_rgb(img) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 (16-bit scaled, alpha dropped, palette and CMYK converted)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img)
        if mode == "I":
            top = max(int(a.max()), 1)
            a = (a.astype(np.float64) * (255.0 / (65535 if top > 255 else 255))).clip(0, 255)
        else:
            a = a >> 8
        a = a.astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = ((a - lo) / (hi - lo or 1) * 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if mode in ("P", "PA", "LA") else img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
