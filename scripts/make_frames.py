#!/usr/bin/env python3
"""Build the wide-frame variant of the dev set: 1920x1080 frames of photos on a 5x4 grid.

    python3 scripts/make_frames.py --src ../shared/data/pennfudan-dev --out /tmp/frames1080

Street video and panorama crops are wide: people 50-250 px tall in a 16:9 frame. Each frame
holds up to 20 photos in name order (51 photos: frames of 20, 20 and 11); a photo is fitted
into its 384x270 cell (aspect kept, Lanczos; masks nearest neighbour) and centred, the rest of
the cell black and background. Writes ``OUT/images/FRAME_NNN.jpg`` (JPEG quality 90) and
``OUT/masks/FRAME_NNN_mask.png`` (8-bit labels, people renumbered 1..n in cell order), the
layout ``fuzzy-people eval`` reads. Deterministic; built on demand, never committed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT, COLS, ROWS = 1920, 1080, 5, 4
JPEG_QUALITY = 90


def build(src: Path, out: Path) -> list[tuple[str, int]]:
    names = sorted(p.stem for p in (src / "images").glob("*.png"))
    if not names:
        raise SystemExit(f"no images/*.png under {src}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    cw, ch, per = WIDTH // COLS, HEIGHT // ROWS, COLS * ROWS
    made = []
    for first in range(0, len(names), per):
        frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        labels = np.zeros((HEIGHT, WIDTH), np.uint8)
        people = 0
        for j, name in enumerate(names[first:first + per]):
            image = Image.open(src / "images" / f"{name}.png").convert("RGB")
            mask = Image.open(src / "masks" / f"{name}_mask.png")
            s = min(cw / image.width, ch / image.height)
            w, h = max(1, round(image.width * s)), max(1, round(image.height * s))
            x0, y0 = (j % COLS) * cw + (cw - w) // 2, (j // COLS) * ch + (ch - h) // 2
            frame[y0:y0 + h, x0:x0 + w] = np.asarray(image.resize((w, h), Image.LANCZOS))
            cell = np.asarray(mask.resize((w, h), Image.NEAREST))
            for k in np.unique(cell)[1:]:
                people += 1
                if people > 255:
                    raise SystemExit("more than 255 people in one frame: 8-bit masks cannot hold them")
                labels[y0:y0 + h, x0:x0 + w][cell == k] = people
        stem = f"FRAME_{first // per + 1:03d}"
        Image.fromarray(frame).save(out / "images" / f"{stem}.jpg", quality=JPEG_QUALITY)
        Image.fromarray(labels).save(out / "masks" / f"{stem}_mask.png")
        made.append((stem, people))
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, type=Path, help="dataset with images/NAME.png and masks/NAME_mask.png")
    p.add_argument("--out", required=True, type=Path, help="output directory (images/, masks/)")
    args = p.parse_args(argv)
    for stem, people in build(args.src, args.out):
        print(f"{stem}: {people} people")
    return 0


if __name__ == "__main__":
    sys.exit(main())
