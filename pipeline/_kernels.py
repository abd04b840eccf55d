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
from numba.extending import intrinsic

_U32 = np.uint64(32)
_M32 = np.uint64(0xFFFFFFFF)


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to fetch arr[idx] into cache (llvm.prefetch: read, high locality)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


_AHEAD = 128  # copies trail their prefetch by this many pixels (a power of two)


@njit(cache=True, nogil=True)
def shuffle(src, sel, radii, bits, wrap, out):
    """out[p] = src[q] for every selected p, q uniform in p's window (clipped, or wrapped in x).

    ``bits`` holds one uint64 per selected pixel, consumed in row-major order: the high 32 bits
    pick the row, the low 32 bits the column (multiply-shift, bias below span / 2**32).
    ``src`` and ``out`` are C-contiguous HxWx3 uint8 and distinct. The source reads are random
    within windows up to hundreds of rows tall, so each is prefetched and copied _AHEAD pixels
    later: the loads overlap instead of waiting on memory one by one.
    """
    h, w = sel.shape
    s3 = src.reshape(h * w * 3)
    o3 = out.reshape(h * w * 3)
    pend_src = np.empty(_AHEAD, np.int64)
    pend_dst = np.empty(_AHEAD, np.int64)
    cols = np.empty(w, np.int64)
    i = 0
    for y in range(h):
        # the row's selected columns, gathered without a branch: a dissolve band selects
        # pixels at random, and a branch on each would mispredict half the time
        n = 0
        for x in range(w):
            cols[n] = x
            n += sel[y, x] != 0
        row = y * w
        for c in range(n):
            x = cols[c]
            r = radii[sel[y, x]]
            b = bits[i]
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
            _prefetch(s3, si)
            slot = i & (_AHEAD - 1)
            if i >= _AHEAD:
                ps, pd = pend_src[slot], pend_dst[slot]
                o3[pd] = s3[ps]
                o3[pd + 1] = s3[ps + 1]
                o3[pd + 2] = s3[ps + 2]
            pend_src[slot] = si
            pend_dst[slot] = (row + x) * 3
            i += 1
    for j in range(max(0, i - _AHEAD), i):
        slot = j & (_AHEAD - 1)
        ps, pd = pend_src[slot], pend_dst[slot]
        o3[pd] = s3[ps]
        o3[pd + 1] = s3[ps + 1]
        o3[pd + 2] = s3[ps + 2]
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
        x = 0
        while x < w:
            v = np.int64(sel[y, x])
            if v == 0:
                x += 1
                continue
            xe = x + 1  # one update per run of equal labels
            while xe < w and sel[y, xe] == v:
                xe += 1
            if v < 0 or v > n:
                if bad == 0:
                    bad = v
            elif boxes[v, 0] < 0:
                boxes[v, 0], boxes[v, 1], boxes[v, 2], boxes[v, 3] = y, y, x, xe - 1
            else:
                boxes[v, 1] = y
                boxes[v, 2] = min(boxes[v, 2], x)
                boxes[v, 3] = max(boxes[v, 3], xe - 1)
            x = xe
    return boxes, bad


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
