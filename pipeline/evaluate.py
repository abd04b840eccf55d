"""Measure how well the person finder covers annotated people (``fuzzy-people eval``).

Ground truth follows the Penn-Fudan convention: one byte per pixel, 0 = background, k = the
k-th annotated person. The prediction is the finder's mask, dilated by the same number of pixels
the anonymizer grows it by (3 by default), because that is what actually gets hidden.

Definitions (all counts are pixels; "gt" means gt > 0, i.e. any annotated person):

- tp = pred & gt, fp = pred & ~gt, fn = ~pred & gt.
- IoU of an image = tp / (tp + fp + fn); an image with neither predicted nor annotated pixels has
  IoU 1.0 (nothing to find, nothing claimed).
- mean IoU = the mean over images of the per-image IoU.
- pixel recall = sum of tp / sum of gt pixels, over all images.
- precision = sum of tp / sum of predicted pixels, over all images. Small, far or occluded people
  are often unannotated, so this is a lower bound on the true precision.
- covered share of a person = that person's pixels inside pred / that person's pixels.
- leak rate = share of annotated people whose covered share is under 0.9 (90 %); each such person
  is a privacy leak. ``leaked`` is their count, ``people`` the count of annotated people.

A ratio whose denominator is zero (no gt pixels, no predicted pixels, no people) is ``None``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

LEAK_THRESHOLD = 0.9
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PROGRESS_EVERY = 10


# ---------------------------------------------------------------------------- scoring

@dataclass(frozen=True)
class ImageScore:
    """Pixel counts of one image, plus per annotated person (label, pixels, pixels masked)."""

    tp: int
    fp: int
    fn: int
    labels: tuple[int, ...] = ()
    person_pixels: tuple[int, ...] = ()
    person_covered: tuple[int, ...] = ()

    @property
    def gt_pixels(self) -> int:
        return self.tp + self.fn

    @property
    def pred_pixels(self) -> int:
        return self.tp + self.fp

    @property
    def iou(self) -> float:
        """tp / (tp + fp + fn); 1.0 when the union is empty."""
        union = self.tp + self.fp + self.fn
        return 1.0 if union == 0 else self.tp / union

    @property
    def covered(self) -> tuple[float, ...]:
        """Per annotated person (in ``labels`` order): pixels inside pred / its pixels."""
        return tuple(c / p for c, p in zip(self.person_covered, self.person_pixels))

    def leaked(self, threshold: float = LEAK_THRESHOLD) -> int:
        """Number of people whose covered share is under ``threshold``."""
        return sum(1 for share in self.covered if share < threshold)


def score_image(pred: np.ndarray, gt: np.ndarray) -> ImageScore:
    """Score a boolean prediction (HxW) against a label mask (HxW, 0 background, k person k).

    tp/fp/fn are pixel counts of pred vs gt > 0; per person k (every label > 0 present in gt)
    records its pixel count and how many of them pred covers.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(f"pred and gt must be 2-D, got shapes {pred.shape} and {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    if not np.issubdtype(gt.dtype, np.integer):
        raise ValueError(f"gt must hold integer labels, got dtype {gt.dtype}")
    if gt.size and int(gt.min()) < 0:
        raise ValueError("gt labels must be >= 0")
    pred = pred.astype(bool, copy=False)
    person = gt > 0
    tp = int(np.count_nonzero(pred & person))
    fp = int(np.count_nonzero(pred & ~person))
    fn = int(np.count_nonzero(~pred & person))
    labels = gt[person]
    if labels.size == 0:
        return ImageScore(tp, fp, fn)
    labels = labels.astype(np.int64, copy=False)
    pixels = np.bincount(labels)
    covered = np.bincount(labels, weights=pred[person].astype(np.int64)).astype(np.int64)
    present = np.flatnonzero(pixels)
    present = present[present > 0]
    return ImageScore(
        tp, fp, fn,
        labels=tuple(int(k) for k in present),
        person_pixels=tuple(int(pixels[k]) for k in present),
        person_covered=tuple(int(covered[k]) for k in present),
    )


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def summarize(
    scores: Sequence[ImageScore],
    ms_per_image: float | Sequence[float] | None = None,
    leak_threshold: float = LEAK_THRESHOLD,
) -> dict[str, Any]:
    """Aggregate figures over images (see the module docstring for the exact definitions).

    Keys: ``mean_iou`` (mean over images of per-image IoU), ``pixel_recall`` (sum tp / sum gt
    pixels), ``precision`` (sum tp / sum predicted pixels, a lower bound), ``leak_rate`` (share of
    annotated people with under ``leak_threshold`` of their pixels masked), ``people``,
    ``leaked``, ``images``, ``ms_per_image`` (the number given, or the mean of the per-image
    times given; ``None`` when not given). Undefined ratios are ``None``.
    """
    scores = list(scores)
    if not scores:
        raise ValueError("no images to summarize")
    if ms_per_image is None or isinstance(ms_per_image, (int, float)):
        ms = None if ms_per_image is None else float(ms_per_image)
    else:
        times = [float(t) for t in ms_per_image]
        ms = sum(times) / len(times) if times else None
    tp = sum(s.tp for s in scores)
    gt = sum(s.gt_pixels for s in scores)
    pred = sum(s.pred_pixels for s in scores)
    people = sum(len(s.labels) for s in scores)
    leaked = sum(s.leaked(leak_threshold) for s in scores)
    return {
        "mean_iou": sum(s.iou for s in scores) / len(scores),
        "pixel_recall": _ratio(tp, gt),
        "leak_rate": _ratio(leaked, people),
        "precision": _ratio(tp, pred),
        "people": people,
        "leaked": leaked,
        "images": len(scores),
        "ms_per_image": ms,
    }


# ---------------------------------------------------------------------------- files

def pair_files(images_dir: str | Path, masks_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, image path, mask path) for every image, sorted by name.

    Images are ``NAME.png|.jpg|.jpeg`` (any case) in ``images_dir``; the mask is
    ``NAME_mask.png`` (Penn-Fudan naming) or else ``NAME.png`` in ``masks_dir``. Files that are
    themselves the mask of another image (when both dirs are the same) are not images. Raises
    FileNotFoundError naming the images that have no mask.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for d, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} directory not found: {d}")
    candidates = sorted(
        p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    stems = {p.stem for p in candidates}
    same_dir = images_dir.resolve() == masks_dir.resolve()
    pairs: list[tuple[str, Path, Path]] = []
    missing: list[str] = []
    for image in candidates:
        name = image.stem
        if same_dir and name.endswith("_mask") and name[: -len("_mask")] in stems:
            continue
        mask = None
        for candidate in (masks_dir / f"{name}_mask.png", masks_dir / f"{name}.png"):
            if candidate.is_file() and candidate.resolve() != image.resolve():
                mask = candidate
                break
        if mask is None:
            missing.append(image.name)
        else:
            pairs.append((name, image, mask))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"no mask (NAME_mask.png or NAME.png) in {masks_dir} for {len(missing)} image(s): {shown}"
        )
    if not pairs:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    return pairs


def load_image(path: str | Path) -> np.ndarray:
    """RGB uint8 HxWx3."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_labels(path: str | Path) -> np.ndarray:
    """A label mask as a 2-D integer array (palette images give their indices)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "1"):
            raise ValueError(f"{path}: expected a single-channel label mask, got mode {im.mode}")
        arr = np.asarray(im)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    """Write a boolean mask as an 8-bit PNG: 255 = person, 0 = background."""
    from PIL import Image

    Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), mode="L").save(path)


# ---------------------------------------------------------------------------- running

def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _progress_line(done: int, total: int, scores: list[ImageScore], times: list[float]) -> str:
    s = summarize(scores, times)
    return (
        f"eval {done}/{total}: mIoU {_fmt(s['mean_iou'])} recall {_fmt(s['pixel_recall'])} "
        f"leak {_fmt(s['leak_rate'])} ({s['leaked']}/{s['people']}) "
        f"precision {_fmt(s['precision'])} {_fmt(s['ms_per_image'], 1)} ms/image"
    )


def evaluate(
    images_dir: str | Path,
    masks_dir: str | Path,
    preset: str = "max",
    dilate: int = 3,
    save_masks: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    *,
    model: str = "selfie",
    providers: Sequence[str] | None = None,
    finder: Any = None,
) -> dict[str, Any]:
    """Run the finder over every (image, mask) pair and score the dilated masks.

    Images are paired with masks by :func:`pair_files` and processed one at a time, in name
    order (the first ``limit`` when given). Each predicted mask is dilated by ``dilate`` pixels
    with :func:`pipeline.anonymize.dilate_mask` before scoring (0 = as found). ``ms_per_image``
    is the mean wall time of ``finder.find`` per image (model loading excluded, reported as
    ``load_s``). With ``save_masks``, each dilated mask is written there as ``NAME.png`` (255 =
    person) at the image's size. ``finder`` replaces the PersonFinder built from
    ``preset``/``model``/``providers`` (anything with ``find(list of RGB arrays)`` returning
    objects with a boolean ``.mask``).

    Returns ``{"figures": summarize(...), "settings": {...}, "per_image": [...]}``, JSON-ready.
    """
    if dilate < 0:
        raise ValueError(f"dilate must be >= 0, got {dilate}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    pairs = pair_files(images_dir, masks_dir)
    if limit is not None:
        pairs = pairs[:limit]
    out_dir = None
    if save_masks is not None:
        out_dir = Path(save_masks)
        out_dir.mkdir(parents=True, exist_ok=True)
    grow: Callable[[np.ndarray], np.ndarray] = lambda m: m
    if dilate > 0:
        from .anonymize import dilate_mask

        grow = lambda m: dilate_mask(m, dilate)  # noqa: E731

    load_s = 0.0
    if finder is None:
        from .segment import PersonFinder

        t0 = time.perf_counter()
        extra = {} if providers is None else {"providers": list(providers)}
        finder = PersonFinder.create(preset, model=model, **extra)
        load_s = time.perf_counter() - t0

    scores: list[ImageScore] = []
    times: list[float] = []
    per_image: list[dict[str, Any]] = []
    total = len(pairs)
    for i, (name, image_path, mask_path) in enumerate(pairs, 1):
        image = load_image(image_path)
        gt = load_labels(mask_path)
        if gt.shape != image.shape[:2]:
            raise ValueError(
                f"{mask_path.name}: mask size {gt.shape[1]}x{gt.shape[0]} differs from "
                f"{image_path.name} size {image.shape[1]}x{image.shape[0]}"
            )
        t0 = time.perf_counter()
        (found,) = finder.find([image])
        ms = (time.perf_counter() - t0) * 1000.0
        pred = np.asarray(found.mask, dtype=bool)
        if pred.shape != gt.shape:
            raise ValueError(f"{name}: finder mask shape {pred.shape} differs from image {gt.shape}")
        pred = np.asarray(grow(pred), dtype=bool)
        score = score_image(pred, gt)
        scores.append(score)
        times.append(ms)
        per_image.append({
            "name": name,
            "iou": score.iou,
            "tp": score.tp,
            "fp": score.fp,
            "fn": score.fn,
            "people": len(score.labels),
            "leaked": score.leaked(),
            "covered": [round(c, 4) for c in score.covered],
            "ms": round(ms, 2),
        })
        if out_dir is not None:
            save_mask(pred, out_dir / f"{name}.png")
        if progress and (i % PROGRESS_EVERY == 0 or i == total):
            print(_progress_line(i, total, scores, times), file=sys.stderr, flush=True)

    return {
        "figures": summarize(scores, times),
        "settings": {
            "images": str(images_dir),
            "masks": str(masks_dir),
            "preset": preset,
            "model": model,
            "dilate": dilate,
            "limit": limit,
            "leak_threshold": LEAK_THRESHOLD,
            "load_s": round(load_s, 3),
        },
        "per_image": per_image,
    }


# ---------------------------------------------------------------------------- CLI

def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _positive(text: str) -> int:
    n = _non_negative(text)
    if n == 0:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``eval`` flags."""
    from .config import DEFAULT_MODEL, PRESETS

    parser.add_argument("--images", required=True, help="directory of NAME.png/.jpg images")
    parser.add_argument("--masks", required=True, help="directory of NAME_mask.png (or NAME.png) label masks: 0 background, k person k")
    parser.add_argument("--recall", choices=PRESETS, default="max", help="finder preset (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="segmentation model (default: %(default)s)")
    parser.add_argument("--dilate", type=_non_negative, default=3, help="grow the predicted mask by N pixels before scoring, as the anonymizer does (default: %(default)s)")
    parser.add_argument("--save-masks", metavar="DIR", help="write each dilated predicted mask as DIR/NAME.png (255 = person)")
    parser.add_argument("--json", metavar="FILE", help="write figures, settings and per-image scores as JSON")
    parser.add_argument("--limit", type=_positive, help="evaluate only the first N images (name order)")


def format_table(figures: dict[str, Any], dilate: int) -> str:
    rows = [
        ("images", str(figures["images"])),
        ("people", str(figures["people"])),
        (f"mean IoU (dilated {dilate} px)", _fmt(figures["mean_iou"])),
        ("pixel recall", _fmt(figures["pixel_recall"])),
        ("precision (lower bound)", _fmt(figures["precision"])),
        ("leak rate (<90 % covered)", f"{_fmt(figures['leak_rate'])} ({figures['leaked']} of {figures['people']})"),
        ("ms per image", _fmt(figures["ms_per_image"], 1)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def command(ns: argparse.Namespace) -> int:
    """Run :func:`evaluate` from parsed ``eval`` flags; print the table, write ``--json``."""
    from .config import ConfigError

    for flag, d in (("--images", ns.images), ("--masks", ns.masks)):
        if not Path(d).is_dir():
            raise ConfigError(f"{flag}: directory not found: {d}")
    try:
        result = evaluate(
            ns.images, ns.masks, ns.recall,
            dilate=ns.dilate, save_masks=ns.save_masks, limit=ns.limit, progress=True,
            model=ns.model,
        )
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    print(format_table(result["figures"], ns.dilate))
    if ns.json:
        path = Path(ns.json)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return 0
