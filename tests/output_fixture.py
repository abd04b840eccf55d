"""Build a small finished-run output prefix (JPEGs + ``_metadata/*.parquet`` + ``_stats.json``)
in the layout the pipeline writes, for the report and audit tests."""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pennfudan-dev"
DEV_REASON = f"dev data set absent ({DEV.resolve()}): it is shared, read-only, never in the repo"


@dataclass
class Item:
    relkey: str                          # input key relative to the input dir, e.g. "a/b.png"
    original: np.ndarray | None = None   # HxWx3 uint8 (None: the input is not written)
    mask: np.ndarray | None = None       # HxW bool person mask (None: empty)
    anonymized: np.ndarray | None = None # None: pixels inside the mask shuffled
    status: str = "ok"
    error_message: str | None = None
    boxes: list = field(default_factory=list)
    age_seconds: float = 0.0             # processed_at = base time - age


def shuffle_inside(img: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    out = img.copy()
    ys, xs = np.nonzero(mask)
    order = np.random.default_rng(seed).permutation(len(ys))
    out[ys, xs] = img[ys[order], xs[order]]
    return out


def boxes_of(mask_labels: np.ndarray) -> list[list[int]]:
    out = []
    for k in np.unique(mask_labels):
        if k == 0:
            continue
        ys, xs = np.nonzero(mask_labels == k)
        out.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return out


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def build_output(root: Path, items: list[Item], *, output_format: str = "jpeg", stats: bool = True,
                 run_id: str = "run-test-1") -> str:
    """Write inputs under ``root/input``, the run output under ``root/output``; return the
    output dir (a local path, as a user would pass it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline import rle
    from pipeline.metastore import METADATA_SCHEMA

    in_dir, out_dir = root / "input", root / "output"
    (out_dir / "_metadata").mkdir(parents=True, exist_ok=True)
    base = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    rows = []
    for n, it in enumerate(items):
        key = str(in_dir / it.relkey)
        out_rel = it.relkey.rsplit(".", 1)[0] + ".jpg"
        row = {
            "key": key, "output_key": None, "status": it.status, "error_message": it.error_message,
            "width": None, "height": None, "person_pixels": None, "person_fraction": None,
            "num_people": None, "boxes": None, "mask_rle": None, "model": "selfie",
            "model_sha256": "0" * 64, "mode": "shuffle", "radius": "person:0.15", "radii": None,
            "source_size": None, "source_etag": None, "metadata": "strip", "panorama": False,
            "seconds_decode": 0.01, "seconds_segment": 0.2, "seconds_anonymize": 0.03,
            "seconds_encode": 0.02, "run_id": run_id,
            "processed_at": base - dt.timedelta(seconds=it.age_seconds), "image": None,
        }
        if it.original is not None:
            (in_dir / it.relkey).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(it.original).save(in_dir / it.relkey)
            row["source_size"] = (in_dir / it.relkey).stat().st_size
            row["source_etag"] = f"etag-{n}"
        if it.status == "ok":
            h, w = it.original.shape[:2]
            mask = np.zeros((h, w), bool) if it.mask is None else it.mask.astype(bool)
            anon = it.anonymized if it.anonymized is not None else shuffle_inside(it.original, mask, n)
            data = jpeg(anon)
            if output_format == "jpeg":
                (out_dir / out_rel).parent.mkdir(parents=True, exist_ok=True)
                (out_dir / out_rel).write_bytes(data)
                row["output_key"] = str(out_dir / out_rel)
            else:
                row["image"] = data
            row.update(
                width=w, height=h, person_pixels=int(mask.sum()),
                person_fraction=float(mask.mean()), num_people=len(it.boxes), boxes=it.boxes,
                mask_rle=rle.encode(mask), radii=[max(3, int(0.15 * (b[3] - b[1]))) for b in it.boxes],
            )
        rows.append(row)
    schema = METADATA_SCHEMA
    if output_format == "parquet":
        schema = schema.append(pa.field("image", pa.binary()))
    if output_format != "parquet":
        for row in rows:
            row.pop("image")
    # two shards, so readers must combine files
    half = max(1, len(rows) // 2)
    for i, chunk in enumerate((rows[:half], rows[half:])):
        if chunk:
            pq.write_table(pa.Table.from_pylist(chunk, schema=schema), out_dir / "_metadata" / f"part-{i:05d}.parquet")
    # a crashed run's staged shard: readers must not count it
    staging = out_dir / "_metadata" / "_staging" / "run-crashed"
    staging.mkdir(parents=True, exist_ok=True)
    stray = dict(rows[0], key=str(in_dir / "staged-only.png"), status="error", error_message="staged, never committed")
    pq.write_table(pa.Table.from_pylist([stray], schema=schema), staging / "part-run-crashed-000000-000000.parquet")
    if stats:
        counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("ok", "error", "skipped")}
        (out_dir / "_stats.json").write_text(json.dumps({
            "run_id": run_id, "counts": counts, "images_per_second": 12.5, "wall_seconds": 3.25,
            "output": str(out_dir),
            "config": {"model": "selfie", "mode": "shuffle", "radius": 0.15, "radius_mode": "person",
                       "recall": "high", "jpeg_quality": 90, "note": "<b>escaped?</b>"},
        }))
    return str(out_dir)


def synthetic_person(h: int, w: int, seed: int, frac: float) -> tuple[np.ndarray, np.ndarray, list]:
    """A textured scene with one elliptical 'person' covering about ``frac`` of the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)),
                    np.full_like(xx, 60 + 40 * seed % 200)], -1).astype(np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    ry = max(2.0, np.sqrt(frac * h * w / np.pi * 2.0))
    rx = max(2.0, ry / 2.0)
    cy, cx = h / 2, w / 2
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    img[mask] = (img[mask] // 2 + np.array([120, 20, 20], np.uint8))
    labels = mask.astype(np.uint8)
    return img, mask, boxes_of(labels)
