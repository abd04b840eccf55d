"""Time the person SSD on CPU: one 300x300 view at batch 1, and a 1920x1080 frame as 5 views.

    python3 scripts/bench_ssd.py [--threads 1] [--repeat 30] [--image PATH]

The frame is ``--image`` (default: the first dev photo of ../shared, resized to 1920x1080 with
PIL bilinear; a deterministic test card when the dev set is absent). Its views are the whole
frame plus the 4 corner tiles of 0.6 x its width and height, all in one ``SSDDetector.detect``
call (one batched onnxruntime run). Prints the median and the 10th/90th percentiles in ms of:
the model alone (``run`` on a preprocessed batch), ``preprocess``, ``postprocess`` and ``detect``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.models import ssd  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "pennfudan-dev" / "images"


def frame(path: Path | None) -> np.ndarray:
    from PIL import Image

    if path is None:
        photos = sorted(DEV.glob("*.png")) if DEV.is_dir() else []
        if not photos:
            y, x = np.mgrid[0:1080, 0:1920]
            return np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
        path = photos[0]
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((1920, 1080), Image.BILINEAR), np.uint8).copy()


def corner_views(img: np.ndarray, frac: float = 0.6) -> list[np.ndarray]:
    h, w = img.shape[:2]
    th, tw = round(h * frac), round(w * frac)
    tiles = [img[:th, :tw], img[:th, w - tw :], img[h - th :, :tw], img[h - th :, w - tw :]]
    return [img] + tiles


def timed(fn, repeat: int) -> str:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    p10, p50, p90 = np.percentile(ts, [10, 50, 90])
    return f"median {p50:7.2f} ms  (p10 {p10:.2f}, p90 {p90:.2f}, n={repeat})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--image", type=Path)
    ap.add_argument("--providers", default="CPUExecutionProvider")
    args = ap.parse_args(argv)

    det = ssd.SSDDetector(
        ssd.prepare_ssd().read_bytes(), providers=args.providers.split(","),
        intra_op_threads=args.threads,
    )
    print(f"providers {det.session.get_providers()}, intra_op_threads {args.threads}")
    img = frame(args.image)
    views = corner_views(img)
    one = ssd.preprocess([np.ascontiguousarray(img[:300, :300])])
    five = ssd.preprocess(views)
    raw = det.run(five)
    sizes = [v.shape[:2] for v in views]
    print("model, 1 view  (batch 1)      ", timed(lambda: det.run(one), args.repeat))
    print("model, 5 views (batch 5)      ", timed(lambda: det.run(five), args.repeat))
    print("preprocess 1920x1080 + 4 tiles", timed(lambda: ssd.preprocess(views), args.repeat))
    print("postprocess 5 views           ", timed(lambda: ssd.postprocess(*raw, sizes), args.repeat))
    print("detect 1920x1080 + 4 tiles    ", timed(lambda: det.detect(views), args.repeat))
    found = det.detect(views)
    print("detections above 0.05 per view:", [len(s) for _, s in found])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
