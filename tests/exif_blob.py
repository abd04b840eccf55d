"""Build EXIF (TIFF) blobs and JPEG APP segments by hand, for test inputs and sample images.

Pillow can write IFD0, the Exif IFD and the GPS IFD, but not an IFD1 with an embedded JPEG
thumbnail, which is exactly the part a privacy pipeline must drop (it is a small unblurred
copy of the photo). :func:`build_exif` lays out a complete little-endian TIFF structure:

    header | IFD0 (+ pointers to Exif IFD and GPS IFD) | Exif IFD | GPS IFD | IFD1 | thumbnail

An entry is ``(tag, type, value)`` with ``type`` one of the TIFF type codes below and
``value``: ``str`` (ASCII), ``bytes`` (BYTE/UNDEFINED), ``int`` or a sequence of ints
(SHORT/LONG/BYTE), a ``(num, den)`` pair or a sequence of pairs (RATIONAL/SRATIONAL).

``scripts/make_samples.py`` loads this file by path (tests/ is not a package), so there is
a single copy of the builder.
"""

from __future__ import annotations

import struct
from typing import Iterable, Sequence, Union

BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SRATIONAL = 1, 2, 3, 4, 5, 7, 10
_TYPE_SIZE = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, UNDEFINED: 1, SRATIONAL: 8}

# Tags used by the builders (TIFF/EXIF 2.32 numbering).
TAG_MAKE, TAG_MODEL, TAG_ORIENTATION = 0x010F, 0x0110, 0x0112
TAG_X_RES, TAG_Y_RES, TAG_RES_UNIT, TAG_SOFTWARE, TAG_DATETIME = 0x011A, 0x011B, 0x0128, 0x0131, 0x0132
TAG_COMPRESSION, TAG_THUMB_OFFSET, TAG_THUMB_LENGTH = 0x0103, 0x0201, 0x0202
TAG_EXIF_IFD, TAG_GPS_IFD = 0x8769, 0x8825
TAG_EXIF_VERSION, TAG_DATETIME_ORIGINAL, TAG_MAKER_NOTE = 0x9000, 0x9003, 0x927C
TAG_PIXEL_X, TAG_PIXEL_Y, TAG_BODY_SERIAL = 0xA002, 0xA003, 0xA431

Value = Union[str, bytes, int, Sequence[int], tuple[int, int], Sequence[tuple[int, int]]]
Entry = tuple[int, int, Value]

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_HEADER = b"Exif\x00\x00"


def _pack_value(typ: int, value: Value) -> tuple[int, bytes]:
    """Return ``(count, little-endian bytes)`` of one entry's value."""
    if typ == ASCII:
        raw = value.encode("ascii") if isinstance(value, str) else bytes(value)
        raw = raw if raw.endswith(b"\x00") else raw + b"\x00"
        return len(raw), raw
    if typ in (BYTE, UNDEFINED):
        raw = bytes(value) if not isinstance(value, int) else bytes([value])
        return len(raw), raw
    if typ in (SHORT, LONG):
        ints = [value] if isinstance(value, int) else list(value)
        fmt = "H" if typ == SHORT else "I"
        return len(ints), struct.pack("<" + fmt * len(ints), *ints)
    if typ in (RATIONAL, SRATIONAL):
        pairs = [value] if isinstance(value[0], int) else list(value)  # type: ignore[index]
        fmt = "II" if typ == RATIONAL else "ii"
        return len(pairs), b"".join(struct.pack("<" + fmt, n, d) for n, d in pairs)
    raise ValueError(f"unsupported TIFF type {typ}")


def _ifd_size(entries: Sequence[Entry]) -> int:
    """Bytes taken by an IFD and its out-of-line data (each data item padded to even)."""
    size = 2 + 12 * len(entries) + 4
    for _tag, typ, value in entries:
        _count, raw = _pack_value(typ, value)
        if len(raw) > 4:
            size += len(raw) + (len(raw) & 1)
    return size


def _pack_ifd(entries: Sequence[Entry], offset: int, next_ifd: int) -> bytes:
    """Serialize one IFD placed at ``offset``; entries are sorted by tag as TIFF requires."""
    entries = sorted(entries, key=lambda e: e[0])
    data_offset = offset + 2 + 12 * len(entries) + 4
    head = [struct.pack("<H", len(entries))]
    data = []
    for tag, typ, value in entries:
        count, raw = _pack_value(typ, value)
        if len(raw) <= 4:
            head.append(struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\x00"))
        else:
            head.append(struct.pack("<HHII", tag, typ, count, data_offset))
            padded = raw + b"\x00" * (len(raw) & 1)
            data.append(padded)
            data_offset += len(padded)
    head.append(struct.pack("<I", next_ifd))
    return b"".join(head) + b"".join(data)


def build_exif(
    ifd0: Sequence[Entry],
    exif: Sequence[Entry] = (),
    gps: Sequence[Entry] = (),
    thumbnail: bytes | None = None,
) -> bytes:
    """A little-endian TIFF structure (no ``Exif\\0\\0`` prefix) holding the given IFDs.

    Pointer tags (0x8769, 0x8825) and the IFD1 thumbnail tags are added here; do not pass
    them. ``thumbnail`` must be a complete baseline JPEG (SOI..EOI).
    """
    reserved = {TAG_EXIF_IFD, TAG_GPS_IFD, TAG_THUMB_OFFSET, TAG_THUMB_LENGTH}
    if any(e[0] in reserved for e in ifd0):
        raise ValueError("pointer/thumbnail tags are added by build_exif")
    if thumbnail is not None and not (thumbnail.startswith(b"\xff\xd8") and thumbnail.endswith(b"\xff\xd9")):
        raise ValueError("thumbnail must be a complete JPEG")
    ifd0 = list(ifd0)
    if exif:
        ifd0.append((TAG_EXIF_IFD, LONG, 0))
    if gps:
        ifd0.append((TAG_GPS_IFD, LONG, 0))
    ifd1: list[Entry] = []
    if thumbnail is not None:
        ifd1 = [
            (TAG_COMPRESSION, SHORT, 6),
            (TAG_X_RES, RATIONAL, (72, 1)),
            (TAG_Y_RES, RATIONAL, (72, 1)),
            (TAG_RES_UNIT, SHORT, 2),
            (TAG_THUMB_OFFSET, LONG, 0),
            (TAG_THUMB_LENGTH, LONG, len(thumbnail)),
        ]
    off0 = 8
    off_exif = off0 + _ifd_size(ifd0)
    off_gps = off_exif + (_ifd_size(exif) if exif else 0)
    off_ifd1 = off_gps + (_ifd_size(gps) if gps else 0)
    off_thumb = off_ifd1 + (_ifd_size(ifd1) if ifd1 else 0)

    def patch(entries: list[Entry], tag: int, value: int) -> list[Entry]:
        return [(t, ty, value if t == tag else v) for t, ty, v in entries]

    ifd0 = patch(patch(ifd0, TAG_EXIF_IFD, off_exif), TAG_GPS_IFD, off_gps)
    ifd1 = patch(ifd1, TAG_THUMB_OFFSET, off_thumb)
    parts = [b"II*\x00" + struct.pack("<I", off0), _pack_ifd(ifd0, off0, off_ifd1 if ifd1 else 0)]
    if exif:
        parts.append(_pack_ifd(exif, off_exif, 0))
    if gps:
        parts.append(_pack_ifd(gps, off_gps, 0))
    if ifd1:
        parts.append(_pack_ifd(ifd1, off_ifd1, 0))
        parts.append(thumbnail)  # type: ignore[arg-type]
    blob = b"".join(parts)
    expected = off_thumb + (len(thumbnail) if thumbnail is not None else 0)
    assert len(blob) == expected, (len(blob), expected)
    return blob


def app_segment(marker: int, payload: bytes) -> bytes:
    """One JPEG APPn segment (``marker`` 0xE0..0xEF) carrying ``payload``."""
    if not 0xE0 <= marker <= 0xEF:
        raise ValueError(f"not an APPn marker: {marker:#x}")
    if len(payload) + 2 > 0xFFFF:
        raise ValueError(f"APP segment payload too large: {len(payload)} bytes")
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def exif_segment(tiff: bytes) -> bytes:
    """APP1 ``Exif\\0\\0`` segment around a TIFF blob from :func:`build_exif`."""
    return app_segment(0xE1, EXIF_HEADER + tiff)


def xmp_segment(packet: bytes) -> bytes:
    """APP1 XMP segment (Adobe namespace header) around an XMP packet."""
    return app_segment(0xE1, XMP_HEADER + packet)


def insert_segments(jpeg: bytes, segments: Iterable[bytes]) -> bytes:
    """Insert APP segments after SOI and any leading APP0 (JFIF), before everything else.

    Existing APP1 segments are kept; callers start from a JPEG written without metadata.
    """
    if not jpeg.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG (no SOI)")
    pos = 2
    while jpeg[pos:pos + 2] == b"\xff\xe0":
        (length,) = struct.unpack(">H", jpeg[pos + 2:pos + 4])
        pos += 2 + length
    return jpeg[:pos] + b"".join(segments) + jpeg[pos:]


def dms(value: float, denominator: int = 10000) -> list[tuple[int, int]]:
    """Degrees as EXIF degrees/minutes/seconds rationals (seconds to 1/denominator)."""
    value = abs(value)
    deg = int(value)
    minutes_f = (value - deg) * 60
    minutes = int(minutes_f)
    seconds = round((minutes_f - minutes) * 60 * denominator)
    return [(deg, 1), (minutes, 1), (seconds, denominator)]


def gps_entries(lat: float, lon: float, alt_m: float, date: str, time_utc: tuple[int, int, int],
                direction: float | None = None) -> list[Entry]:
    """GPS IFD entries: version, lat/lon with refs, altitude, UTC date/time, optional heading."""
    h, m, s = time_utc
    entries: list[Entry] = [
        (0x0000, BYTE, bytes([2, 3, 0, 0])),
        (0x0001, ASCII, "N" if lat >= 0 else "S"),
        (0x0002, RATIONAL, dms(lat)),
        (0x0003, ASCII, "E" if lon >= 0 else "W"),
        (0x0004, RATIONAL, dms(lon)),
        (0x0005, BYTE, bytes([0 if alt_m >= 0 else 1])),
        (0x0006, RATIONAL, (round(abs(alt_m) * 100), 100)),
        (0x0007, RATIONAL, [(h, 1), (m, 1), (s, 1)]),
        (0x001D, ASCII, date),
    ]
    if direction is not None:
        entries += [(0x0010, ASCII, "T"), (0x0011, RATIONAL, (round(direction * 100), 100))]
    return entries


def street_camera_exif(
    *, orientation: int, width: int, height: int, thumbnail: bytes | None, maker_note: bytes,
    lat: float, lon: float, alt_m: float, datetime_original: str,
    make: str = "FuzzyCam", model: str = "StreetRig 360-S", serial: str = "FC-0042-SERIAL",
    heading: float | None = 87.5,
) -> bytes:
    """A street-imagery camera's EXIF blob: IFD0 (Make/Model/Orientation/DateTime), Exif IFD
    (DateTimeOriginal, pixel size, MakerNote, body serial), GPS IFD and an IFD1 thumbnail.

    ``datetime_original`` is ``"YYYY:MM:DD HH:MM:SS"``; ``width``/``height`` are the stored
    (pre-orientation) pixel dimensions. GPS date/time are taken from it (treated as UTC).
    """
    date, time = datetime_original.split(" ")
    h, m, s = (int(p) for p in time.split(":"))
    ifd0: list[Entry] = [
        (TAG_MAKE, ASCII, make),
        (TAG_MODEL, ASCII, model),
        (TAG_ORIENTATION, SHORT, orientation),
        (TAG_X_RES, RATIONAL, (72, 1)),
        (TAG_Y_RES, RATIONAL, (72, 1)),
        (TAG_RES_UNIT, SHORT, 2),
        (TAG_SOFTWARE, ASCII, "fuzzy-people sample generator"),
        (TAG_DATETIME, ASCII, datetime_original),
    ]
    exif: list[Entry] = [
        (TAG_EXIF_VERSION, UNDEFINED, b"0232"),
        (TAG_DATETIME_ORIGINAL, ASCII, datetime_original),
        (TAG_MAKER_NOTE, UNDEFINED, maker_note),
        (TAG_PIXEL_X, LONG, width),
        (TAG_PIXEL_Y, LONG, height),
        (TAG_BODY_SERIAL, ASCII, serial),
    ]
    gps = gps_entries(lat, lon, alt_m, date, (h, m, s), heading)
    return build_exif(ifd0, exif, gps, thumbnail)


def xmp_packet(description: str, rights: str, source: str, creator_tool: str = "fuzzy-people") -> bytes:
    """A minimal XMP packet with dc:description, dc:rights, dc:source and xmp:CreatorTool."""
    from xml.sax.saxutils import escape

    d, r, s, t = (escape(x) for x in (description, rights, source, creator_tool))
    text = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f'    xmp:CreatorTool="{t}" dc:source="{s}">\n'
        f'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{d}</rdf:li></rdf:Alt></dc:description>\n'
        f'   <dc:rights><rdf:Alt><rdf:li xml:lang="x-default">{r}</rdf:li></rdf:Alt></dc:rights>\n'
        '  </rdf:Description>\n'
        ' </rdf:RDF>\n'
        '</x:xmpmeta>\n'
        '<?xpacket end="w"?>'
    )
    return text.encode("utf-8")
