#!/usr/bin/env python3
"""Build the small-people variant of the dev set: 2x2 mosaics of photos at half scale.

    python3 scripts/make_mosaics.py --src ../shared/data/pennfudan-dev --out /tmp/mosaics

Reads ``SRC/images/NAME.png`` and ``SRC/masks/NAME_mask.png`` (Penn-Fudan layout). Photos are
taken in name order, four per mosaic; the last mosaic holds the remainder (51 photos: 12 mosaics
of 4 and one of 3 whose fourth cell is left black; no photo is reused). Each photo is resized to
half its size (round(w/2) x round(h/2); Lanczos for the image, nearest neighbour for the mask)
and centred in a cell as large as the largest half-size photo of its mosaic; padding is black
and background (0). Cells are laid out 0 1 / 2 3.

Writes the same layout as the source so ``fuzzy-people eval`` reads it unchanged:

- ``OUT/images/MOSAIC_NNN.jpg``: JPEG quality 90 (NNN from 001).
- ``OUT/masks/MOSAIC_NNN_mask.png``: 8-bit labels, 0 background; the people of the four cells are
  renumbered 1..n in cell order, and within a cell in the order of their source labels. A person
  that nearest-neighbour resizing erases entirely gets no label.
- ``OUT/mosaics.json``: per mosaic, its cells: source name, box (x0, y0, x1, y1) in the mosaic,
  and the label map {source label: mosaic label}.

Deterministic: the same sources give the same files. Standalone (numpy + Pillow); the output is
built on demand and never committed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

JPEG_QUALITY = 90
PER_MOSAIC = 4
PREFIX = "MOSAIC"


@dataclass(frozen=True)
class Cell:
    source: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 inside the mosaic
    labels: dict[int, int]  # source label -> mosaic label


def source_pairs(src: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) for every ``images/NAME.png`` with a ``masks/NAME_mask.png``, by name."""
    src = Path(src)
    images, masks = src / "images", src / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise FileNotFoundError(f"{src}: expected images/ and masks/ directories")
    pairs = []
    missing = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        mask = masks / f"{image.stem}_mask.png"
        if mask.is_file():
            pairs.append((image.stem, image, mask))
        else:
            missing.append(image.name)
    if missing:
        raise FileNotFoundError(f"{src}: no masks/NAME_mask.png for {', '.join(missing)}")
    if not pairs:
        raise FileNotFoundError(f"{src}: no images")
    return pairs


def half(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resize an RGB image (Lanczos) and its label mask (nearest) to half size."""
    from PIL import Image

    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    h, w = mask.shape
    size = (max(1, round(w / 2)), max(1, round(h / 2)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    small_mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return small, small_mask


def build_mosaic(
    items: Sequence[tuple[str, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, list[Cell]]:
    """Lay out up to four (name, RGB image, label mask) items, already resized, 2x2.

    Returns the RGB mosaic, its label mask (uint8, people renumbered uniquely) and the cells.
    """
    if not 1 <= len(items) <= PER_MOSAIC:
        raise ValueError(f"a mosaic takes 1 to {PER_MOSAIC} photos, got {len(items)}")
    ch = max(m.shape[0] for _, _, m in items)
    cw = max(m.shape[1] for _, _, m in items)
    canvas = np.zeros((2 * ch, 2 * cw, 3), np.uint8)
    labels = np.zeros((2 * ch, 2 * cw), np.uint8)
    cells: list[Cell] = []
    next_label = 1
    for i, (name, image, mask) in enumerate(items):
        h, w = mask.shape
        y0 = (i // 2) * ch + (ch - h) // 2
        x0 = (i % 2) * cw + (cw - w) // 2
        canvas[y0:y0 + h, x0:x0 + w] = image
        mapping: dict[int, int] = {}
        for k in np.unique(mask):
            if k == 0:
                continue
            if next_label > 255:
                raise ValueError("more than 255 people in one mosaic")
            mapping[int(k)] = next_label
            next_label += 1
        lut = np.zeros(256, np.uint8)
        for k, v in mapping.items():
            lut[k] = v
        labels[y0:y0 + h, x0:x0 + w] = lut[mask]
        cells.append(Cell(name, (x0, y0, x0 + w, y0 + h), mapping))
    return canvas, labels, cells


def _read(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with Image.open(image_path) as im:
        image = np.asarray(im.convert("RGB"))
    with Image.open(mask_path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{mask_path}: expected an 8-bit label mask, got mode {im.mode}")
        mask = np.asarray(im)
    return image, mask


def make_mosaics(src: str | Path, out: str | Path, limit: int | None = None) -> list[dict]:
    """Build every mosaic from the first ``limit`` (default all) source photos into ``out``.

    Returns the manifest written to ``out/mosaics.json``.
    """
    from PIL import Image

    pairs = source_pairs(src)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        pairs = pairs[:limit]
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    manifest = []
    for n, start in enumerate(range(0, len(pairs), PER_MOSAIC), 1):
        items = []
        for name, image_path, mask_path in pairs[start:start + PER_MOSAIC]:
            image, mask = _read(image_path, mask_path)
            items.append((name, *half(image, mask)))
        canvas, labels, cells = build_mosaic(items)
        name = f"{PREFIX}_{n:03d}"
        Image.fromarray(canvas).save(out / "images" / f"{name}.jpg", quality=JPEG_QUALITY)
        Image.fromarray(labels, mode="L").save(out / "masks" / f"{name}_mask.png")
        manifest.append({
            "name": name,
            "size": [int(canvas.shape[1]), int(canvas.shape[0])],
            "cells": [
                {"source": c.source, "box": list(c.box), "labels": {str(k): v for k, v in c.labels.items()}}
                for c in cells
            ],
        })
    (out / "mosaics.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="dataset with images/NAME.png and masks/NAME_mask.png")
    p.add_argument("--out", required=True, help="output directory (images/, masks/, mosaics.json)")
    p.add_argument("--limit", type=int, help="use only the first N photos (name order)")
    ns = p.parse_args(argv)
    try:
        manifest = make_mosaics(ns.src, ns.out, ns.limit)
    except (FileNotFoundError, ValueError) as exc:
        print(f"make_mosaics: error: {exc}", file=sys.stderr)
        return 2
    photos = sum(len(m["cells"]) for m in manifest)
    people = sum(len(c["labels"]) for m in manifest for c in m["cells"])
    print(f"{len(manifest)} mosaics from {photos} photos, {people} people -> {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
