"""Compiled inner loops of :mod:`pipeline.anonymize` (numba, ``cache=True``).

Imported lazily by ``pipeline.anonymize``: the first import in a fresh environment compiles
every function here (a few seconds, once per machine and numba version); later processes load
the machine code from numba's cache (``__pycache__`` beside this file, or ``NUMBA_CACHE_DIR``).
Every function is single-threaded and releases the GIL.

Selections: ``sel`` is an HxW integer map, 0 = leave the pixel alone, v > 0 = change it with the
radius ``radii[v]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_U32 = np.uint64(32)
_M32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def shuffle(src, sel, radii, bits, wrap, out):
    """out[p] = src[q] for every selected p, q uniform in p's window (clipped, or wrapped in x).

    ``bits`` holds one uint64 per selected pixel, consumed in row-major order: the high 32 bits
    pick the row, the low 32 bits the column (multiply-shift, bias below span / 2**32).
    ``src`` and ``out`` are C-contiguous HxWx3 uint8 and distinct.
    """
    h, w = sel.shape
    s3 = src.reshape(h * w * 3)
    o3 = out.reshape(h * w * 3)
    i = 0
    for y in range(h):
        row = y * w
        for x in range(w):
            v = sel[y, x]
            if v == 0:
                continue
            r = radii[v]
            b = bits[i]
            i += 1
            y0 = max(y - r, 0)
            sy = y0 + np.int64(((b >> _U32) * np.uint64(min(y + r, h - 1) - y0 + 1)) >> _U32)
            lo = b & _M32
            if wrap:
                span = 2 * r + 1
                if span >= w:
                    sx = np.int64((lo * np.uint64(w)) >> _U32)
                else:
                    sx = (x - r + np.int64((lo * np.uint64(span)) >> _U32)) % w
            else:
                x0 = max(x - r, 0)
                sx = x0 + np.int64((lo * np.uint64(min(x + r, w - 1) - x0 + 1)) >> _U32)
            si = (sy * w + sx) * 3
            di = (row + x) * 3
            o3[di] = s3[si]
            o3[di + 1] = s3[si + 1]
            o3[di + 2] = s3[si + 2]
    return i


@njit(cache=True, nogil=True)
def label_boxes(sel, n):
    """Bounding boxes of labels 1..n: rows (n+1, 4) = y0, y1, x0, x1 inclusive, -1 when absent.

    Returns (boxes, bad): bad is the first value found outside 0..n (0 when there is none).
    """
    h, w = sel.shape
    boxes = np.full((n + 1, 4), -1, np.int64)
    bad = 0
    for y in range(h):
        for x in range(w):
            v = np.int64(sel[y, x])
            if v == 0:
                continue
            if v < 0 or v > n:
                if bad == 0:
                    bad = v
                continue
            if boxes[v, 0] < 0:
                boxes[v, 0] = y
                boxes[v, 2] = x
                boxes[v, 3] = x
            boxes[v, 1] = y
            if x < boxes[v, 2]:
                boxes[v, 2] = x
            if x > boxes[v, 3]:
                boxes[v, 3] = x
    return boxes, bad


@njit(cache=True, nogil=True)
def occupancy(labels, k, y0, x0, gh, gw, s, wrap, by0, by1):
    """Coarse grid over the crop whose top-left pixel is (y0, x0): 0 where a cell holds a pixel
    of label k, 1 elsewhere (the input of a distance transform). Columns wrap when ``wrap``."""
    h, w = labels.shape
    occ = np.ones((gh, gw), np.uint8)
    for y in range(max(by0, y0), min(by1 + 1, y0 + gh * s, h)):
        gy = (y - y0) // s
        for j in range(gw * s):
            x = x0 + j
            if wrap:
                x %= w
            elif x < 0 or x >= w:
                continue
            if labels[y, x] == k:
                occ[gy, j // s] = 0
    return occ


@njit(cache=True, nogil=True)
def unit_hash(seed, index):
    """A float in [0, 1) from (seed, index): the SplitMix64 output function (not a secret)."""
    z = seed + (np.uint64(index) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, nogil=True)
def grow_person(labels, ring, k, y0, x0, s, dist, dilate, band, seed, wrap, grown, score):
    """Claim pixels for person k inside its crop (top-left (y0, x0), coarse cells of s px).

    A pixel's score is t = (distance to person k - dilate) / band, the distance read from the
    coarse distance map ``dist`` (in cells). Person k's own pixels score -inf; pixels in
    ``ring`` (the exact dilation of all persons) are always claimed; other pixels are claimed
    when band > 0 and a per-pixel uniform draw u >= t, so the claim probability falls off
    linearly from 1 at the dilated edge to 0 at ``band`` px beyond it. Among persons that claim
    a pixel the lowest score wins (ties: the first processed); pixels of other persons are never
    claimed. ``score`` is only meaningful where ``grown`` is nonzero.
    """
    h, w = labels.shape
    gh, gw = dist.shape
    inv = 1.0 / max(band, 1.0)
    ring_reach = dilate + 2.0 * s
    for gy in range(gh):
        ya = y0 + gy * s
        yb = min(ya + s, h)
        if ya < 0:
            ya = 0
        for gx in range(gw):
            dc = dist[gy, gx] * s
            t = (dc - dilate) * inv
            if t >= 1.0 and dc > ring_reach:
                continue
            for y in range(ya, yb):
                for j in range(gx * s, gx * s + s):
                    x = x0 + j
                    if wrap:
                        x %= w
                    elif x < 0 or x >= w:
                        continue
                    v = labels[y, x]
                    if v == k:
                        tt = -np.inf
                    elif v != 0:
                        continue
                    elif ring[y, x]:
                        tt = t
                    elif band > 0.0 and t < 1.0 and unit_hash(seed, y * w + x) >= t:
                        tt = t
                    else:
                        continue
                    if grown[y, x] == 0 or tt < score[y, x]:
                        grown[y, x] = k
                        score[y, x] = tt
