"""COCO run-length encoding of masks (the compressed string form pycocotools reads).

Counts run over the mask in column-major (Fortran) order, starting with a run of zeros, and
are packed into a string with COCO's 5-bit-per-character delta code. Implemented here so the
pipeline needs no pycocotools at run time; the tests check it against pycocotools.
"""

from __future__ import annotations

import numpy as np


def _runs(mask: np.ndarray) -> np.ndarray:
    """Run lengths (int64) in column-major order, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], change, [flat.size]))).astype(np.int64)
    return np.concatenate(([0], counts)) if flat[0] else counts


def _pack(counts) -> str:
    """COCO's string code, vectorised (a frayed mask has 10^5 runs or more): each count, as a
    delta to the count two before it from the fourth on, is written in the fewest 5-bit groups
    that hold it as a signed number, low group first; bit 5 marks "more groups follow"."""
    c = np.asarray(counts, dtype=np.int64)
    if c.size == 0:
        return ""
    x = c.copy()
    x[3:] -= c[1:-2]
    # groups k: the smallest k >= 1 with -2**(5k-1) <= x < 2**(5k-1), i.e. the bits of x (or
    # of ~x when negative) below 5k-1
    mag = np.where(x < 0, ~x, x)
    kmax = int(mag.max()).bit_length() // 5 + 1
    k = np.ones(x.size, np.int64)
    for j in range(1, kmax):
        k += mag >= (np.int64(1) << np.int64(5 * j - 1))
    j = np.arange(kmax, dtype=np.int64)
    groups = (x[:, None] >> (5 * j)[None, :]) & 0x1F
    groups |= np.where(j[None, :] < (k - 1)[:, None], 0x20, 0)
    chars = (groups + 48)[j[None, :] < k[:, None]]
    return chars.astype(np.uint8).tobytes().decode("ascii")


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
