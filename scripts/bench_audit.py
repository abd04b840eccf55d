"""Measure the audit's face detector (CenterFace) on dev photos.

    python3 scripts/bench_audit.py [--images DIR] [--n 20] [--threshold 0.2] [--threads 2]

For each of the first N images (every 51//N-th when there are more) it runs the 1x pass alone, the
2x pass alone and both merged (what the audit does), and prints faces found, how many detections
lie on an annotated person (when DIR/../masks/NAME_mask.png exists: 0 = background, k = person k),
how many annotated people got at least one detection, and milliseconds per image (median of the
per-image times, and the mean). Nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import audit as A  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "pennfudan-dev" / "images"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threshold", type=float, default=A.DEFAULT_THRESHOLD)
    ap.add_argument("--threads", type=int, default=None)
    ns = ap.parse_args()
    from PIL import Image

    paths = sorted(ns.images.glob("*.png")) + sorted(ns.images.glob("*.jpg"))
    if not paths:
        print(f"no images under {ns.images}", file=sys.stderr)
        return 2
    step = max(1, len(paths) // ns.n)
    paths = paths[::step][: ns.n]
    det = A.CenterFace(threads=ns.threads)
    det.detect(np.zeros((64, 64, 3), np.uint8))  # warm-up
    runs = {"1x": (1.0,), "2x": (2.0,), "1x+2x": A.SCALES}
    rows = {k: {"faces": 0, "on": 0, "off": 0, "people_hit": 0, "ms": []} for k in runs}
    people = 0
    sizes = []
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        sizes.append(img.shape[:2])
        mpath = p.parent.parent / "masks" / f"{p.stem}_mask.png"
        labels = np.asarray(Image.open(mpath)) if mpath.exists() else None
        if labels is not None:
            people += len(np.unique(labels)) - 1
        for name, scales in runs.items():
            t0 = time.perf_counter()
            faces = det.detect(img, ns.threshold, scales)
            rows[name]["ms"].append(1000 * (time.perf_counter() - t0))
            rows[name]["faces"] += len(faces)
            if labels is not None:
                hit = set()
                for x0, y0, x1, y1, _ in faces:
                    lab = int(labels[min(int((y0 + y1) / 2), labels.shape[0] - 1), min(int((x0 + x1) / 2), labels.shape[1] - 1)])
                    rows[name]["on" if lab else "off"] += 1
                    if lab:
                        hit.add(lab)
                rows[name]["people_hit"] += len(hit)
    h = [s[0] for s in sizes]
    w = [s[1] for s in sizes]
    print(f"{len(paths)} images from {ns.images} ({min(w)}-{max(w)} x {min(h)}-{max(h)} px), "
          f"{people} annotated people, threshold {ns.threshold}")
    print(f"{'pass':7} {'faces':>6} {'on person':>10} {'off':>5} {'people w/ face':>15} {'ms/img median':>14} {'mean':>7}")
    for name, r in rows.items():
        print(f"{name:7} {r['faces']:6d} {r['on']:10d} {r['off']:5d} {r['people_hit']:15d} "
              f"{statistics.median(r['ms']):14.1f} {statistics.mean(r['ms']):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
