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
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

_U32 = np.uint64(32)
_M32 = np.uint64(0xFFFFFFFF)
_U1, _U2, _U3 = np.uint64(1), np.uint64(2), np.uint64(3)
_ONES8 = np.uint64(0x0101010101010101)  # a label replicated over a word: label * _ONESn
_ONES16 = np.uint64(0x0001000100010001)
_ONES32 = np.uint64(0x0000000100000001)
_LOG2 = np.array([0, 0, 1, 0, 2, 0, 0, 0, 3], np.int64)  # log2 of 1, 2, 4, 8 labels per word


def _u32_pointer(context, builder, aty, arr, idx):
    ary = context.make_array(aty)(context, builder, arr)
    ptr = cgutils.get_item_pointer(context, builder, aty, ary, [idx], wraparound=False)
    return builder.bitcast(ptr, ir.IntType(32).as_pointer())


@intrinsic
def _load4(typingctx, arr, idx):
    """The 4 bytes at arr[idx] (a uint8 array) as one unaligned 32-bit load."""
    def codegen(context, builder, signature, args):
        return builder.load(_u32_pointer(context, builder, signature.args[0], *args), align=1)

    return types.uint32(arr, idx), codegen


@intrinsic
def _store4(typingctx, arr, idx, val):
    """Store 4 bytes at arr[idx] (a uint8 array) as one unaligned 32-bit store."""
    def codegen(context, builder, signature, args):
        builder.store(args[2], _u32_pointer(context, builder, signature.args[0], args[0], args[1]), align=1)
        return context.get_dummy_value()

    return types.void(arr, idx, val), codegen


_G = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, odd: p -> p * _G is a bijection
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


@njit(inline="always")
def _mix(z):
    """The SplitMix64 finalizer: a bijection of uint64 that passes BigCrush on counters."""
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


@njit(inline="always")
def pixel_bits(k0, k1, p):
    """The 64 random bits of pixel index p (y * W + x) under the key (k0, k1): two keyed
    SplitMix64 rounds, mix(mix(p * G ^ k0) + k1). Counter-based, so pixels can be drawn in any
    order (runs, vector lanes) and the result never depends on it."""
    return _mix(_mix((p * _G) ^ k0) + k1)


@njit(inline="always")
def _next_selected(row, words, y, x, w, ppw):
    """The first column in x..w-1 whose label is nonzero (w when none). With a word view
    (``ppw`` labels per little-endian uint64, ``ppw`` > 0, rows a whole number of words) a
    word at a time: the first nonzero label is the word's lowest set bit."""
    if ppw == 0:
        while x < w and row[np.uint64(x)] == 0:
            x += 1
        return x
    lp = _LOG2[ppw]  # shifts, not divisions: an integer division costs tens of cycles
    lb = 6 - lp  # log2 of the bits per label
    while x < w:
        j = x >> lp
        word = words[y, np.uint64(j)] >> np.uint64((x & (ppw - 1)) << lb)  # labels from x on
        if word != 0:
            return x + (np.int64(trailing_zeros(word)) >> lb)
        x = (j + 1) << lp
    return w


@njit(inline="always")
def _run_end(row, words, y, x, w, ppw, v):
    """The first column after x whose label differs from v = row[x] (w when none); with a
    word view, the lowest set bit of (word XOR v replicated) is the first other label."""
    x += 1
    if ppw == 0:
        while x < w and row[np.uint64(x)] == v:
            x += 1
        return x
    lp = _LOG2[ppw]
    lb = 6 - lp
    if ppw == 8:
        rep = (np.uint64(v) & np.uint64(0xFF)) * _ONES8
    elif ppw == 4:
        rep = (np.uint64(v) & np.uint64(0xFFFF)) * _ONES16
    else:
        rep = (np.uint64(v) & _M32) * _ONES32
    while x < w:
        j = x >> lp
        diff = (words[y, np.uint64(j)] ^ rep) >> np.uint64((x & (ppw - 1)) << lb)
        if diff != 0:
            return x + (np.int64(trailing_zeros(diff)) >> lb)
        x = (j + 1) << lp
    return w


@njit(cache=True, nogil=True)
def shuffle(src, sel, words, ppw, radii, k0, k1, wrap, out):
    """out[p] = src[q] for every selected p, q uniform in p's window (clipped, or wrapped in x).

    Pixel p = (y, x) uses the 64 bits ``pixel_bits(k0, k1, y * W + x)``: the high 32 pick the
    row, the low 32 the column (multiply-shift, bias below span / 2**32). ``src`` and ``out``
    are C-contiguous HxWx3 uint8 and distinct; ``words`` is ``sel`` viewed as uint64 (``ppw``
    labels per word, 8 // itemsize) or an empty (H, 0) array with ppw = 0. Works run by run
    (equal labels, so one radius): the run's source offsets first (a loop the compiler
    vectorises), then the copies. Offsets are unsigned so that no negative-index fix-up
    chains the copies together: their loads are independent and overlap, which is what keeps
    large windows (reads spread over hundreds of rows) from waiting on memory one by one.
    Returns the number of pixels changed.
    """
    h, w = sel.shape
    s3 = src.reshape(h * w * 3)
    o3 = out.reshape(h * w * 3)
    buf = np.empty(w, np.int64)
    uw = np.uint64(w)
    last = np.uint64(h * w * 3 - 3)  # the last pixel's offset: a 4-byte read there overruns
    done = 0
    for y in range(h):
        row = sel[y]
        x = _next_selected(row, words, y, 0, w, ppw)
        while x < w:
            v = row[np.uint64(x)]
            xe = _run_end(row, words, y, x, w, ppw, v)
            r = radii[v]
            if r > 0:
                y0 = max(y - r, 0)
                spy = np.uint64(min(y + r, h - 1) - y0 + 1)
                p = np.uint64(y * w)
                span = 2 * r + 1
                if wrap and span >= w:  # the window is the whole row
                    for i in range(xe - x):
                        z = pixel_bits(k0, k1, p + np.uint64(x + i))
                        sy = y0 + np.int64(((z >> _U32) * spy) >> _U32)
                        buf[i] = (sy * w + np.int64(((z & _M32) * uw) >> _U32)) * 3
                elif wrap:
                    for i in range(xe - x):
                        z = pixel_bits(k0, k1, p + np.uint64(x + i))
                        sy = y0 + np.int64(((z >> _U32) * spy) >> _U32)
                        t = x + i - r + np.int64(((z & _M32) * np.uint64(span)) >> _U32)
                        t = t + w if t < 0 else t
                        t = t - w if t >= w else t
                        buf[i] = (sy * w + t) * 3
                else:
                    for i in range(xe - x):
                        xx = x + i
                        z = pixel_bits(k0, k1, p + np.uint64(xx))
                        sy = y0 + np.int64(((z >> _U32) * spy) >> _U32)
                        x0 = max(xx - r, 0)
                        spx = np.uint64(min(xx + r, w - 1) - x0 + 1)
                        buf[i] = (sy * w + x0 + np.int64(((z & _M32) * spx) >> _U32)) * 3
                # copies: one 4-byte load and store per pixel (the 4th byte lands on the next
                # pixel of the run, which is written next); the run's last pixel, and a
                # source at the image's very end, byte by byte
                d = np.uint64((y * w + x) * 3)  # unsigned offsets: no negative-index fix-ups
                n = xe - x
                for i in range(n):
                    si = np.uint64(buf[i])
                    if i < n - 1 and si < last:
                        _store4(o3, d, _load4(s3, si))
                    else:
                        o3[d] = s3[si]
                        o3[d + _U1] = s3[si + _U1]
                        o3[d + _U2] = s3[si + _U2]
                    d += _U3
                done += n
            x = _next_selected(row, words, y, xe, w, ppw)
    return done


@njit(cache=True, nogil=True)
def narrow(labels, out):
    """out[:] = labels (any integer dtypes, same size, both C-contiguous); returns the (min, max)
    of labels (0, 0 when empty), so that a caller can reject values out of range. One pass."""
    src = labels.reshape(labels.size)
    dst = out.reshape(out.size)
    lo = np.int64(0)
    hi = np.int64(0)
    for i in range(src.size):
        v = np.int64(src[i])
        dst[i] = v
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


@njit(cache=True, nogil=True)
def label_boxes(sel, words, ppw, n):
    """Bounding boxes of labels 1..n: rows (n+1, 4) = y0, y1, x0, x1 inclusive, -1 when absent.

    ``words``/``ppw``: ``sel`` viewed as uint64 words, as in :func:`shuffle`. Labels must lie
    in 0..n (:func:`narrow` checks that for ``anonymize``).
    """
    h, w = sel.shape
    boxes = np.full((n + 1, 4), -1, np.int64)
    for y in range(h):
        row = sel[y]
        x = _next_selected(row, words, y, 0, w, ppw)
        while x < w:
            v = row[np.uint64(x)]
            xe = _run_end(row, words, y, x, w, ppw, v)  # one update per run
            if boxes[v, 0] < 0:
                boxes[v, 0], boxes[v, 1], boxes[v, 2], boxes[v, 3] = y, y, x, xe - 1
            else:
                boxes[v, 1] = y
                boxes[v, 2] = min(boxes[v, 2], x)
                boxes[v, 3] = max(boxes[v, 3], xe - 1)
            x = _next_selected(row, words, y, xe, w, ppw)
    return boxes


@njit(cache=True, nogil=True)
def occupancy(labels, k, y0, x0, gh, gw, s, wrap, by0, by1, bx0, bx1):
    """Coarse grid over the crop whose top-left pixel is (y0, x0): 0 where a cell holds a pixel
    of label k, 1 elsewhere (the input of a distance transform). Columns wrap when ``wrap``."""
    h, w = labels.shape
    occ = np.ones((gh, gw), np.uint8)
    for y in range(max(by0, y0), min(by1 + 1, y0 + gh * s, h)):
        gy = (y - y0) // s
        x = x0 % w if wrap else x0
        for gx in range(gw):
            if not wrap and (x + s <= bx0 or x > bx1):  # no column of the person's box here
                x += s
                continue
            hit = False
            for _ in range(s):
                if wrap and x == w:
                    x = 0
                hit |= (x < w) and labels[y, x] == k
                x += 1
            if hit:
                occ[gy, gx] = 0
    return occ


@njit(cache=True, nogil=True)
def unit_hash(seed, index):
    """A float in [0, 1) from (seed, pixel index): the lowbias32 integer hash (not a secret)."""
    z = (np.uint64(seed) + np.uint64(index)) & _M32
    z ^= z >> np.uint64(16)
    z = (z * np.uint64(0x21F0AAAD)) & _M32
    z ^= z >> np.uint64(15)
    z = (z * np.uint64(0x735A2D97)) & _M32
    z ^= z >> np.uint64(15)
    return np.float32(z >> np.uint64(8)) * np.float32(1.0 / 16777216.0)


@njit(cache=True, nogil=True)
def grow_person(labels, ring, k, y0, x0, s, dist, dilate, band, seed, wrap, grown, score):
    """Claim pixels for person k inside its crop (top-left (y0, x0), coarse cells of s px).

    ``grown`` starts as a copy of ``labels`` (every person owns its pixels; they are skipped).
    A pixel's score is t = (distance to person k - dilate) / band, the distance read from the
    coarse distance map ``dist`` (in cells). Pixels in ``ring`` (the exact dilation of all
    persons) are always claimed; other pixels are claimed when band > 0 and a per-pixel uniform
    draw u >= t, so the claim probability falls off linearly from 1 at the dilated edge to 0 at
    ``band`` px beyond it. Among persons that claim a pixel the lowest score wins (ties: the
    first processed), so the result does not depend on the order of persons. ``score`` is only
    meaningful where ``grown`` is nonzero and ``labels`` zero.
    """
    h, w = labels.shape
    gh, gw = dist.shape
    inv = 1.0 / band if band > 0.0 else 1.0
    ring_reach = dilate + 2.0 * s
    cell_t = np.empty(gw, np.float64)
    banded = band > 0.0
    for gy in range(gh):
        any_cell = False
        for gx in range(gw):
            dc = dist[gy, gx] * s
            t = (dc - dilate) * inv
            if t >= 1.0 and dc > ring_reach:
                t = np.inf  # no claim possible anywhere in this cell
            else:
                any_cell = True
            cell_t[gx] = t
        if not any_cell:
            continue
        for y in range(y0 + gy * s, min(y0 + gy * s + s, h)):
            x = x0 % w if wrap else x0  # image column of the current crop column
            for gx in range(gw):
                t = cell_t[gx]
                if t == np.inf:
                    x = (x + s) % w if wrap else x + s
                    continue
                for _ in range(s):
                    if wrap and x == w:
                        x = 0
                    if x < w and labels[y, x] == 0:
                        # branch-free: the claim is a coin flip, a branch on it mispredicts half the time
                        claim = ring[y, x] | (banded & (unit_hash(seed, y * w + x) >= t))
                        g, old = grown[y, x], score[y, x]
                        win = claim & ((g == 0) | (t < old))
                        grown[y, x] = k if win else g
                        score[y, x] = t if win else old
                    x += 1
