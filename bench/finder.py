"""Person finder cost per 1920x1080 frame, per preset, with where the time goes.

Run: python bench/finder.py [--n 6] [--threads 1]
CPU time is the process's (every thread: OpenCV's HOG and resizes use several), median per frame.
Frames are dev photos (../shared/data/pennfudan-dev) resized and tiled into 1920x1080, so people
appear at several sizes; without the dev set, the bundled samples are used. Prints, per preset,
the median ms per frame and the split into model (onnxruntime), HOG, SSD (detector incl. its
resizing) and resize/fuse (cropping, resizing views, pasting probabilities back, components).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "pennfudan-dev" / "images"


def frames(n: int) -> list[np.ndarray]:
    srcs = sorted(DEV.glob("*.png")) if DEV.is_dir() else sorted((ROOT / "pipeline" / "samples").glob("*.jpg"))
    out = []
    for i in range(n):
        canvas = Image.new("RGB", (1920, 1080))
        # one large photo on the left, four smaller ones on the right
        big = Image.open(srcs[(5 * i) % len(srcs)]).convert("RGB").resize((1080, 1080))
        canvas.paste(big, (0, 0))
        for j in range(4):
            small = Image.open(srcs[(5 * i + j + 1) % len(srcs)]).convert("RGB").resize((420, 540))
            canvas.paste(small, (1080 + (j % 2) * 420, (j // 2) * 540))
        out.append(np.asarray(canvas))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--presets", default="fast,balanced,max")
    args = ap.parse_args()
    from pipeline.segment import PersonFinder

    imgs = frames(args.n)
    results = {}
    for preset in args.presets.split(","):
        finder = PersonFinder.create(preset, threads=args.threads)
        finder.find(imgs[:1])  # warm-up
        totals, walls, parts = [], [], {}
        for im in imgs:
            c0, t0 = time.process_time(), time.perf_counter()
            (f,) = finder.find([im])
            totals.append(time.process_time() - c0)  # CPU time of all threads (OpenCV's too)
            walls.append(time.perf_counter() - t0)
            for k, v in f.timings.items():
                parts.setdefault(k, []).append(v)
        ms = 1000 * statistics.median(totals)
        results[preset] = ms
        split = ", ".join(f"{k} {1000 * statistics.median(v):.0f}" for k, v in parts.items())
        print(f"{preset:9s} {ms:7.0f} ms CPU per 1920x1080 frame, {1000 * statistics.median(walls):.0f} ms wall "
              f"(wall split: {split}; onnxruntime {args.threads} thread(s), median of {len(imgs)})")
    if "max" in results and "balanced" in results:
        print(f"max/balanced CPU time ratio: {results['max'] / results['balanced']:.2f}")


if __name__ == "__main__":
    main()
