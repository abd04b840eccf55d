#!/usr/bin/env python3
"""The finder's recipe table: each stage combination scored on one eval set, as found and +3 px.

    python3 scripts/recipe_table.py ../shared/data/pennfudan-dev
    python3 scripts/recipe_table.py /tmp/mosaics        # scripts/make_mosaics.py

DIR holds images/ and masks/ in the layout ``fuzzy-people eval`` reads. Each recipe runs the
finder once per image; its mask is scored as found and dilated 3 px (as the pipeline does) with
``pipeline.evaluate``. Prints one Markdown row per recipe: pixel recall / leak rate / precision
for both, and the mean process CPU ms per image (every thread).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPES: dict[str, dict] = {
    "whole image, threshold .5": dict(preset="fast", tile_fractions=(), tile_threshold=0.5),
    "T (fast)": dict(preset="fast"),
    "T + C": dict(preset="max", proposers=("components",)),
    "T + C + H": dict(preset="max", proposers=("components", "hog")),
    "T + C + S (balanced)": dict(preset="balanced"),
    "T + C + S + H (max)": dict(preset="max"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="eval set with images/ and masks/")
    args = p.parse_args(argv)

    from pipeline.anonymize import dilate_mask
    from pipeline.evaluate import load_image, load_labels, pair_files, score_image, summarize
    from pipeline.segment import PersonFinder

    pairs = pair_files(args.dir / "images", args.dir / "masks")
    print("| recipe | as found | +3 px | CPU ms per image |\n|---|---|---|---|")
    for name, spec in RECIPES.items():
        spec = dict(spec)
        finder = PersonFinder.create(spec.pop("preset"), **spec)
        found, grown, ms = [], [], []
        for _, image_path, mask_path in pairs:
            image, truth = load_image(image_path), load_labels(mask_path)
            t0 = time.process_time()
            mask = finder.find([image])[0].mask
            ms.append(1000 * (time.process_time() - t0))
            found.append(score_image(mask, truth))
            grown.append(score_image(dilate_mask(mask, 3), truth))
        a, b = summarize(found, ms), summarize(grown)
        cells = [f"{f['pixel_recall']:.3f} / {f['leak_rate']:.3f} / {f['precision']:.3f}" for f in (a, b)]
        print(f"| {name} | {cells[0]} | {cells[1]} | {a['ms_per_image']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
