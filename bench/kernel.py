"""Anonymization kernel vs JPEG decode of the same image (one core, as a Ray worker gets).

Run: python bench/kernel.py
A synthetic photo-like 1920x1080 image with person shapes 100-600 px tall covering 30 % of the
pixels. Prints medians; the last line is ratio=<shuffle kernel, per-person default f>/<decode>.
"""

from __future__ import annotations

import io
import os
import sys
import time

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pipeline.anonymize import AnonymizeParams, anonymize, keyed_rng, shuffle_pixels, warm_up  # noqa: E402

H, W, COVER, REPEATS = 1080, 1920, 0.30, 21
DEV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "pennfudan-dev")


def photo(rng: np.random.Generator) -> np.ndarray:
    """Colour noise at several scales: smooth regions, edges and fine texture like a photo."""
    acc = np.full((H, W, 3), 110.0, np.float32)
    for cell, amp in ((200, 60), (50, 40), (10, 25), (2, 12)):
        field = rng.standard_normal((H // cell + 2, W // cell + 2, 3)).astype(np.float32)
        acc += amp * cv2.resize(field, (W, H), interpolation=cv2.INTER_CUBIC)
    return np.clip(acc, 0, 255).astype(np.uint8)


def people(rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Walking-person shapes (head, torso, two legs) until COVER of the pixels are people."""
    labels = np.zeros((H, W), np.int32)
    heights: list[int] = []
    while np.count_nonzero(labels) < COVER * H * W:
        h = int(rng.integers(100, 601))
        x, top = int(rng.integers(0, W)), int(rng.integers(-h // 4, H - h // 2))
        k = len(heights) + 1
        cv2.circle(labels, (x, top + int(0.07 * h)), int(0.065 * h), k, -1)
        cv2.ellipse(labels, (x, top + int(0.33 * h)), (int(0.13 * h), int(0.2 * h)), 0, 0, 360, k, -1)
        for dx in (-1, 1):
            cv2.line(labels, (x + dx * int(0.05 * h), top + int(0.5 * h)),
                     (x + dx * int(0.14 * h), top + h - int(0.03 * h)), k, max(2, int(0.07 * h)))
        heights.append(h)
    return labels, heights


def median_ms(fn, repeats: int = REPEATS) -> float:
    """Median CPU time of this thread: other processes on a shared machine do not count."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return 1000 * float(np.median(times))


def paired_median_ms(a, b, repeats: int = 3 * REPEATS) -> tuple[float, float]:
    """Median CPU times of a and b, measured alternately (a, b, a, b, ...)."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.thread_time()
        a()
        t1 = time.thread_time()
        b()
        t2 = time.thread_time()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return 1000 * float(np.median(ta)), 1000 * float(np.median(tb))


def real_photo(params: AnonymizeParams, name: str = "FudanPed00001") -> None:
    """A dev photo with its ground-truth people, scaled to 1920x1080 (when ../shared is there)."""
    if not os.path.isdir(DEV):
        print(f"real photo: skipped ({DEV} not found)")
        return
    image = np.asarray(Image.open(os.path.join(DEV, "images", f"{name}.png")).convert("RGB").resize((W, H)))
    labels = np.asarray(Image.open(os.path.join(DEV, "masks", f"{name}_mask.png")).resize((W, H), Image.NEAREST))
    labels = labels.astype(np.int32)
    heights = [int(np.ptp(np.nonzero((labels == k).any(axis=1))[0])) + 1 for k in range(1, labels.max() + 1)]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    key = keyed_rng(b"bench-secret-0123456789", name)
    decode = median_ms(lambda: np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
    full = median_ms(lambda: anonymize(image, labels, heights, params, key))
    print(f"real photo {name} at {W}x{H} ({len(heights)} people, {(labels > 0).mean():.1%} of pixels): "
          f"full anonymize at defaults {full:.2f} ms, decode {decode:.2f} ms")


def main() -> None:
    cv2.setNumThreads(1)  # one core per worker: compare single-threaded work
    print(f"warm_up (numba cache load or compile, OpenCV import): {warm_up():.2f} s")
    rng = np.random.default_rng(0)
    image, (labels, heights) = photo(rng), people(rng)
    mask = labels > 0
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    key = keyed_rng(b"bench-secret-0123456789", "bench/photo.jpg")
    default = AnonymizeParams()
    sharp = AnonymizeParams(dilate=0, dissolve=0)
    grown = anonymize(image, labels, heights, default, key).mask

    # the ratio's two sides interleaved, so that both see the same load from other processes
    decode, per_person = paired_median_ms(lambda: np.asarray(Image.open(io.BytesIO(jpeg))),
                                          lambda: anonymize(image, labels, heights, sharp, key))
    r8 = median_ms(lambda: shuffle_pixels(image, mask, 8, key))
    r32 = median_ms(lambda: shuffle_pixels(image, mask, 32, key))
    full = median_ms(lambda: anonymize(image, labels, heights, default, key))
    blur = median_ms(lambda: anonymize(image, labels, heights, AnonymizeParams(mode="blur", dilate=0, dissolve=0), key))
    pixelate = median_ms(lambda: anonymize(image, labels, heights, AnonymizeParams(mode="pixelate", dilate=0, dissolve=0), key))

    radii = sorted(max(default.min_radius, int(np.ceil(default.radius * h))) for h in heights)
    print(f"image {W}x{H}, {len(heights)} people 100-600 px tall, {mask.mean():.1%} of pixels masked; "
          f"JPEG q90 {len(jpeg) / 1e3:.0f} kB; median thread CPU time of {REPEATS}, single thread")
    print(f"shuffle kernel, fixed r=8: {r8:.2f} ms")
    print(f"shuffle kernel, fixed r=32: {r32:.2f} ms")
    print(f"shuffle kernel, per person f={default.radius} (r {radii[0]}-{radii[-1]} px): {per_person:.2f} ms")
    print(f"full anonymize at defaults (dilate {default.dilate}, dissolve {default.dissolve}; "
          f"{grown.mean():.1%} of pixels changed): {full:.2f} ms")
    print(f"blur, per person: {blur:.2f} ms")
    print(f"pixelate, per person: {pixelate:.2f} ms")
    print(f"PIL JPEG decode (q90): {decode:.2f} ms (median of {3 * REPEATS}, alternating with the per-person kernel)")
    real_photo(default)
    print(f"ratio_full={full / decode:.2f}")
    print(f"ratio={per_person / decode:.2f}")


if __name__ == "__main__":
    main()
