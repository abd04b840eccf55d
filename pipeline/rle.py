"""COCO run-length encoding of masks (the compressed string form pycocotools reads).

Counts run over the mask in column-major (Fortran) order, starting with a run of zeros, and
are packed into a string with COCO's 5-bit-per-character delta code. Implemented here so the
pipeline needs no pycocotools at run time; the tests check it against pycocotools.
"""

from __future__ import annotations

import numpy as np


def _runs(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return counts


def _pack(counts: list[int]) -> str:
    out = []
    for i, c in enumerate(counts):
        x = int(c)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def _unpack(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x = 0
        k = 0
        more = True
        while more:
            ch = ord(s[p]) - 48
            x |= (ch & 0x1F) << (5 * k)
            more = bool(ch & 0x20)
            p += 1
            k += 1
            if not more and (ch & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray) -> dict:
    """Mask (HxW, truthy = person) -> {"size": [h, w], "counts": str}."""
    h, w = mask.shape[:2]
    return {"size": [int(h), int(w)], "counts": _pack(_runs(mask))}


def decode(rle: dict) -> np.ndarray:
    """{"size": [h, w], "counts": str | bytes} -> bool mask HxW."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _unpack(counts)
    if sum(runs) != h * w:
        raise ValueError(f"RLE counts sum to {sum(runs)}, expected {h * w} for size {h}x{w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((h, w), order="F")


def area(rle: dict) -> int:
    return int(sum(_unpack(rle["counts"] if isinstance(rle["counts"], str) else rle["counts"].decode())[1::2]))
