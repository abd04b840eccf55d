"""Pixels -> JPEG bytes under the metadata policy.

``keep`` (default): EXIF (GPS included) and XMP and the ICC profile are kept, Orientation is
set to 1 (the pixels are written upright). Always dropped, because they show or identify the
original: the EXIF thumbnail (IFD1), maker notes, embedded previews (also XMP thumbnails),
camera/lens serial numbers, the owner's name and the image's unique id.
``strip``: only the ICC profile is kept.
"""

from __future__ import annotations

import io
import re

import numpy as np

# IFD0 tags kept: descriptive, no pixels, nothing that points at other data.
IFD0_KEEP = {
    0x010E,  # ImageDescription
    0x010F,  # Make
    0x0110,  # Model
    0x0112,  # Orientation (reset to 1)
    0x011A, 0x011B, 0x0128,  # X/YResolution, ResolutionUnit
    0x0131,  # Software
    0x0132,  # DateTime
    0x013B,  # Artist
    0x0213,  # YCbCrPositioning
    0x8298,  # Copyright
    0x8769,  # ExifIFD pointer
    0x8825,  # GPS IFD pointer
}
# Exif sub-IFD tags dropped: maker notes, identifiers of the camera/owner/original image.
EXIF_DROP = {
    0x927C,  # MakerNote
    0xA420,  # ImageUniqueID
    0xA430,  # CameraOwnerName
    0xA431,  # BodySerialNumber
    0xA435,  # LensSerialNumber
    0xA005,  # InteropIFD pointer (may carry related-image info)
}
IFD_EXIF, IFD_GPS = 0x8769, 0x8825
MAX_EXIF_VALUE_BYTES = 4096  # a larger blob inside the Exif IFD may be an embedded preview

# (older tools bind the same namespaces to the xap:/xapGImg: prefixes)
_XMP_PREVIEWS = [
    re.compile(rb"<(xmp|xap):Thumbnails\b.*?</\1:Thumbnails>", re.S),
    re.compile(rb"<(xmpGImg|xapGImg):image>.*?</\1:image>", re.S),
    re.compile(rb"\b(xmpGImg|xapGImg):image=\"[^\"]*\"", re.S),
    re.compile(rb"<(GCamera|GDepth|GImage):Data>.*?</\1:Data>", re.S),
    re.compile(rb"\b(GCamera|GDepth|GImage):Data=\"[^\"]*\"", re.S),
]


def clean_exif(raw: bytes | None, size: tuple[int, int] | None = None) -> bytes | None:
    """Rebuild an EXIF block from the kept tags only (IFD1 thumbnail never copied).

    ``size`` (width, height) of the pixels written: PixelX/YDimension are set to it, since
    the pixels were turned upright and may no longer match what the camera recorded.
    """
    if not raw:
        return None
    from PIL import Image

    src = Image.Exif()
    try:
        src.load(raw)
    except Exception:
        return None  # unparseable EXIF: keep nothing rather than something unknown
    out = Image.Exif()
    for tag, value in src.items():
        if tag in IFD0_KEEP and tag not in (IFD_EXIF, IFD_GPS):
            out[tag] = value
    out[0x0112] = 1
    exif_ifd = src.get_ifd(IFD_EXIF)
    if exif_ifd:
        dst = out.get_ifd(IFD_EXIF)
        for tag, value in exif_ifd.items():
            if tag in EXIF_DROP:
                continue
            if isinstance(value, bytes) and len(value) > MAX_EXIF_VALUE_BYTES:
                continue
            dst[tag] = value
        if size is not None:
            dst[0xA002], dst[0xA003] = int(size[0]), int(size[1])
    gps = src.get_ifd(IFD_GPS)
    if gps:
        out.get_ifd(IFD_GPS).update(gps)
    try:
        data = out.tobytes()
    except Exception:
        # a value Pillow cannot re-serialise: keep GPS and orientation, which matter most
        out = Image.Exif()
        out[0x0112] = 1
        if gps:
            out.get_ifd(IFD_GPS).update(gps)
        data = out.tobytes()
    return data if len(data) <= 65000 else None


def clean_xmp(xmp: bytes | None) -> bytes | None:
    if not xmp:
        return None
    for pattern in _XMP_PREVIEWS:
        xmp = pattern.sub(b"", xmp)
    return xmp if len(xmp) <= 65000 else None


def encode_jpeg(image: np.ndarray, quality: int, policy: str, exif: bytes | None = None,
                xmp: bytes | None = None, icc: bytes | None = None) -> bytes:
    from PIL import Image

    kwargs: dict = {"quality": int(quality)}
    if icc:
        kwargs["icc_profile"] = icc
    if policy == "keep":
        e = clean_exif(exif, (image.shape[1], image.shape[0]))
        if e:
            kwargs["exif"] = e
        x = clean_xmp(xmp)
        if x:
            kwargs["xmp"] = x
    elif policy != "strip":
        raise ValueError(f"metadata policy must be keep or strip, got {policy!r}")
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, "JPEG", **kwargs)
    return buf.getvalue()
