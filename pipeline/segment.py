"""Find every person: tiled segmentation, box proposals, per-person crops.

Plain Python (no Ray). :class:`PersonFinder` takes RGB uint8 images of any size and returns,
per image, a person probability map, a boolean mask at full resolution and per-person
instances (box, pixel count, box height: the anonymizer scales its radius with it).

The recipe, stage by stage (each stage's figures are in the README):

* **T** - the whole image plus overlapping tiles (fractions of the side, e.g. 1/2 and 1/3, 25 %
  overlap), every view stretched to the model's square input, probabilities max-fused and
  thresholded (0.3 by default: a person at a tile's edge gets lower confidence).
* **C** - each connected component of T's mask: its box, squared, enlarged x1.25, segmented
  again as a crop (threshold 0.5) and OR-ed in. Small far-away people get a zoomed second look.
* **Proposals** - boxes from detectors (OpenCV's HOG people detector on the CPU; the person
  SSD when it is prepared), each segmented as a crop the same way.

All views of a batch of images go through the model as one batched call (tiles first, then
every crop). The CPU-only proposers (HOG) are exposed separately (:meth:`cpu_proposals`) so a
pipeline can run them in a CPU stage and pass the boxes in, keeping a GPU busy.

Panoramas (360-degree equirectangular) wrap: the image is extended across the left/right seam
before tiling, so a person cut by the seam is seen whole, and the results are folded back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

from .models.fetch import ModelError

# What each preset changes from the FinderSettings defaults, which are the ``max`` preset
# (figures and costs: README, model section).
PRESET_SETTINGS: dict[str, dict] = {
    "fast": {"proposers": ()},  # T: tiles only
    "balanced": {"proposers": ("components", "ssd"), "ssd_tile_fractions": (0.6,)},  # T + C + S, GPU-friendly
    "max": {},  # T + C + S + H
}


@dataclass(frozen=True)
class FinderSettings:
    """Everything the finder does is configurable; the defaults are the ``max`` preset."""

    tile_fractions: tuple[float, ...] = (1 / 2, 1 / 3)
    tile_overlap: float = 0.25
    tile_margin: float = 0.0
    # tiles are squares of each fraction of the SHORTER side: a 16:9 frame's tiles squeezed
    # into the model's square input left people too thin for it (fast preset, 1920x1080
    # frames of dev photos: pixel recall .38 with side-fraction tiles, .91 with squares)
    tile_square: bool = True
    tile_threshold: float = 0.3
    crop_threshold: float = 0.5
    crop_scale: float = 1.25
    proposers: tuple[str, ...] = ("components", "ssd", "hog")
    min_component_pixels: int = 12
    max_crops_per_image: int = 64
    # HOG: upscale small images (long side below hog_upscale_below) by hog_upscale; shrink
    # large ones so the long side is at most hog_max_side (never upscale a big photo).
    hog_upscale: float = 2.0
    hog_upscale_below: int = 1200
    hog_max_side: int = 1280
    hog_hit_threshold: float = 0.0
    hog_scale_step: float = 1.05
    # SSD person detector: whole image + overlapping tiles of these fractions of the side
    ssd_score: float = 0.5
    # detector boxes the segmenter left mostly empty get an elliptical mask (0 = off)
    box_fill_below: float = 0.2
    ssd_tile_fractions: tuple[float, ...] = (0.6, 0.35)
    # views per onnxruntime call: on CPU batching gains nothing and a big batch grows the
    # session's memory arena by gigabytes; GPUs want larger batches (see PersonFinder)
    max_views_per_call: int = 16

    @classmethod
    def preset(cls, name: str, **overrides) -> "FinderSettings":
        if name not in PRESET_SETTINGS:
            raise ValueError(f"recall preset must be one of {', '.join(PRESET_SETTINGS)}, got {name!r}")
        s = cls(**PRESET_SETTINGS[name])
        return replace(s, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Person:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), full-image pixels
    pixels: int
    height: int


@dataclass
class Found:
    prob: np.ndarray  # float32 HxW
    mask: np.ndarray  # bool HxW (not dilated)
    labels: np.ndarray  # int32 HxW, 0 = background, k = people[k-1]
    people: list[Person]
    panorama: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def heights(self) -> list[int]:
        return [p.height for p in self.people]


# ------------------------------------------------------------------------------ geometry

def is_panorama(width: int, height: int, xmp_projection: str | None = None) -> bool:
    """Equirectangular 360-degree panorama: GPano:ProjectionType, else a 2:1 aspect."""
    if xmp_projection:
        return xmp_projection.strip().lower() == "equirectangular"
    return height > 0 and abs(width / height - 2.0) < 0.01 and width >= 1000


def tile_boxes(w: int, h: int, fractions: Sequence[float], overlap: float,
               margin: float = 0.0, base_width: int | None = None,
               square: bool = False) -> list[tuple[int, int, int, int]]:
    """The whole image, then overlapping tiles for each fraction of the side.

    ``margin`` (a fraction of the tile) lets the tile grid reach past the image border (the
    outside is black), so a person cut by the border sits inside a view, not on its edge.
    ``base_width``: for a panorama extended across its seam (``w`` > the panorama's width),
    views keep the panorama's proportions: two whole views (at 0 and across the seam) and tiles
    sized from the panorama's own width, so nobody is squashed.
    """
    bw = base_width or w
    boxes = [(0, 0, bw, h)]
    if bw < w:
        boxes.append((w - bw, 0, w, h))
    for f in fractions:
        tw, th = max(1, round(bw * f)), max(1, round(h * f))
        if square:  # f of the shorter side both ways: nobody is squeezed in a wide image
            tw = th = max(1, round(min(bw, h) * f))
            if f >= 1 and abs(bw - h) <= 0.2 * min(bw, h):
                continue  # about square already: the whole view is this tile
        mx, my = round(tw * margin), round(th * margin)
        for y0 in _starts(h + 2 * my, th, overlap):
            for x0 in _starts(w + 2 * mx, tw, overlap):
                boxes.append((x0 - mx, y0 - my, x0 - mx + tw, y0 - my + th))
    return boxes


def _starts(total: int, size: int, overlap: float) -> list[int]:
    if size >= total:
        return [0]
    step = max(1, size * (1 - overlap))
    n = math.ceil((total - size) / step) + 1
    return [round(i * (total - size) / (n - 1)) for i in range(n)]


def square_box(box: Sequence[float], scale: float) -> tuple[int, int, int, int]:
    """Box squared around its centre and enlarged by ``scale`` (may leave the image)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0, 1) * scale
    half = side / 2
    return (int(math.floor(cx - half)), int(math.floor(cy - half)),
            int(math.ceil(cx + half)), int(math.ceil(cy + half)))


def crop_padded(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The box's pixels; parts outside the image are black."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    out = np.zeros((y1 - y0, x1 - x0, image.shape[2]), dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


# ------------------------------------------------------------------------------ proposers

class HogProposer:
    """OpenCV's built-in HOG people detector (CPU only). Small images are upscaled so small
    people reach the 64x128 window; large images are shrunk, never upscaled."""

    name = "hog"

    def __init__(self, settings: FinderSettings):
        import cv2

        self.s = settings
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def scale_for(self, w: int, h: int) -> float:
        long_side = max(w, h)
        if long_side < self.s.hog_upscale_below:
            return self.s.hog_upscale
        return min(1.0, self.s.hog_max_side / long_side)

    def propose(self, image: np.ndarray) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        if h < 32 or w < 16:
            return np.zeros((0, 4), np.float32)
        s = self.scale_for(w, h)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if s != 1.0:
            interp = cv2.INTER_LINEAR if s > 1 else cv2.INTER_AREA
            gray = cv2.resize(gray, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)
        if gray.shape[0] < 128 or gray.shape[1] < 64:
            return np.zeros((0, 4), np.float32)
        rects, _weights = self.hog.detectMultiScale(
            gray, hitThreshold=self.s.hog_hit_threshold, winStride=(8, 8), padding=(8, 8),
            scale=self.s.hog_scale_step,
        )
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32)
        r = np.asarray(rects, np.float32) / s
        boxes = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], axis=1)
        # OpenCV's threads return the boxes in varying order: sort, so results are reproducible
        return boxes[np.lexsort(boxes.T[::-1])]


# ------------------------------------------------------------------------------ model

class SegmentationModel:
    """onnxruntime session over an ONNX segmentation model (contract in models/registry.py)."""

    def __init__(self, model_bytes: bytes, providers: Sequence[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=opts, providers=list(providers or select_providers(False)))
        except Exception as exc:
            raise ModelError(f"--model: not a loadable ONNX model: {type(exc).__name__}: {str(exc)[:300]}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError(f"--model: expected 1 input and 1 output, got {len(inputs)} inputs, {len(outputs)} outputs")
        if inputs[0].type != "tensor(float)":
            raise ModelError(f"--model: input must be float32 NHWC [N, S, S, 3] RGB in [0, 1], got element type {inputs[0].type}")
        shape = inputs[0].shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise ModelError(
                f"--model: input must be float32 NHWC [N, S, S, 3] with a static square S, got {shape}"
            )
        out_shape = outputs[0].shape
        if len(out_shape) not in (3, 4) or (len(out_shape) == 4 and out_shape[3] not in (1, None, "1")):
            raise ModelError(f"--model: output must be [N, S, S, 1] or [N, S, S], got {out_shape}")
        self.size = int(shape[1])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.providers = self.session.get_providers()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> float32 [N, S, S] probabilities."""
        x = batch.astype(np.float32) * (1.0 / 255.0)
        if self.fixed_batch == 1 and len(x) != 1:
            return np.concatenate([self(b[None]) for b in batch], axis=0)
        y = self.session.run([self.output_name], {self.input_name: x})[0]
        return y.reshape(len(x), self.size, self.size)


def select_providers(use_gpu: bool) -> list[str]:
    """CUDA first when asked for and available, always with the CPU provider as fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if use_gpu:
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                "--num-gpus > 0 but onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install fuzzy-people[gpu] (onnxruntime-gpu)"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# ------------------------------------------------------------------------------ finder

class PersonFinder:
    def __init__(self, model_bytes: bytes, settings: FinderSettings | None = None, *,
                 use_gpu: bool = False, threads: int | None = 1, ssd_bytes: bytes | None = None):
        self.settings = settings or FinderSettings()
        if use_gpu and self.settings.max_views_per_call == FinderSettings.max_views_per_call:
            self.settings = replace(self.settings, max_views_per_call=64)
        providers = select_providers(use_gpu)
        self.model = SegmentationModel(model_bytes, providers, threads)
        self.hog = HogProposer(self.settings) if "hog" in self.settings.proposers else None
        self.ssd = None
        if "ssd" in self.settings.proposers and ssd_bytes is not None:
            from .models.ssd import SSDDetector

            self.ssd = SSDDetector(ssd_bytes, providers=providers, intra_op_threads=threads or 1)

    @classmethod
    def create(cls, preset: str = "max", model: str = "selfie", *, use_gpu: bool = False,
               threads: int | None = 1, **overrides) -> "PersonFinder":
        """Convenience for scripts and tests: resolve the models locally and build a finder."""
        from .models.registry import resolve_model

        settings = FinderSettings.preset(preset, **overrides)
        blob = resolve_model(model)
        ssd = load_ssd_bytes() if "ssd" in settings.proposers else None
        return cls(blob.data, settings, use_gpu=use_gpu, threads=threads, ssd_bytes=ssd)

    # -------------------------------------------------------------- CPU proposals
    def cpu_proposals(self, image: np.ndarray, panorama: bool = False) -> np.ndarray:
        """Boxes from the CPU-only proposers (HOG), in full-image pixels, float32 (K, 4)."""
        return hog_proposals(image, self.settings, panorama)

    # -------------------------------------------------------------- main entry
    def find(self, images: Sequence[np.ndarray], panoramas: Sequence[bool] | None = None,
             proposals: Sequence[np.ndarray | None] | None = None) -> list[Found]:
        """Find people in a batch of RGB uint8 images.

        ``proposals``: precomputed CPU proposals per image (from :meth:`cpu_proposals`, run
        in another stage); when None they are computed here.
        """
        n = len(images)
        panoramas = list(panoramas) if panoramas is not None else [False] * n
        if len(panoramas) != n or (proposals is not None and len(proposals) != n):
            raise ValueError(f"panoramas/proposals: expected one entry per image ({n})")
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"images[{i}]: expected HxWx3 uint8 RGB, got {im.shape} {im.dtype}")
        s = self.settings
        t0 = time.perf_counter()
        works = [_extend(im, pano) for im, pano in zip(images, panoramas)]
        # ---- T: whole image + tiles, one batched call
        views, owners, boxes = [], [], []
        for i, (work, _) in enumerate(works):
            h, w = work.shape[:2]
            base = images[i].shape[1] if panoramas[i] else None
            for box in tile_boxes(w, h, s.tile_fractions, s.tile_overlap, s.tile_margin, base, s.tile_square):
                views.append(self._view(work, box))
                owners.append(i)
                boxes.append(box)
        t_prep = time.perf_counter() - t0
        t1 = time.perf_counter()
        probs_t = self._run(views)
        t_model = time.perf_counter() - t1
        t2 = time.perf_counter()
        # fuse T at the resolution of its finest view (no detail is lost: every fused pixel
        # gets at least one model pixel), then one bilinear resize to the full image
        scales = [_fuse_scale([b for b, o in zip(boxes, owners) if o == i], self.model.size) for i in range(n)]
        small = [np.zeros(_scaled_shape(work.shape[:2], sc), np.float32) for (work, _), sc in zip(works, scales)]
        for p, i, box in zip(probs_t, owners, boxes):
            _paste_max(small[i], p, _scaled_box(box, scales[i]))
        fused = [_upsample(sm, work.shape[:2]) for sm, (work, _) in zip(small, works)]
        masks = [f >= s.tile_threshold for f in fused]
        t_fuse = time.perf_counter() - t2
        # ---- proposals: components, SSD, HOG
        t3 = time.perf_counter()
        crop_boxes: list[list[tuple[int, int, int, int]]] = [[] for _ in range(n)]
        detector_boxes: list[list] = [[] for _ in range(n)]
        if "components" in s.proposers:
            for i, m in enumerate(masks):
                crop_boxes[i].extend(_component_boxes(m, s.min_component_pixels))
        t_hog = 0.0
        if self.hog is not None:
            th = time.perf_counter()
            for i, (work, _) in enumerate(works):
                given = None if proposals is None else proposals[i]
                boxes_i = given if given is not None else self.hog.propose(work)
                hog_boxes = [tuple(b) for b in np.asarray(boxes_i, np.float32).reshape(-1, 4).tolist()]
                crop_boxes[i].extend(hog_boxes)
                detector_boxes[i].extend(hog_boxes)
            t_hog = time.perf_counter() - th
        t_ssd = 0.0
        if self.ssd is not None:
            ts = time.perf_counter()
            bases = [im.shape[1] if pano else None for im, pano in zip(images, panoramas)]
            for i, b in enumerate(self._ssd_boxes([w for w, _ in works], bases)):
                crop_boxes[i].extend(b)
                detector_boxes[i].extend(b)
            t_ssd = time.perf_counter() - ts
        # ---- crops: one batched call for all of them
        views, owners, boxes = [], [], []
        for i, (work, _) in enumerate(works):
            sq = [square_box(b, s.crop_scale) for b in crop_boxes[i]]
            sq = _dedupe_boxes(sq)[: s.max_crops_per_image]
            for box in sq:
                views.append(self._view(work, box))
                owners.append(i)
                boxes.append(box)
        t_prop = time.perf_counter() - t3 - t_hog - t_ssd
        t4 = time.perf_counter()
        probs_c = self._run(views)
        t_model += time.perf_counter() - t4
        t5 = time.perf_counter()
        for p, i, box in zip(probs_c, owners, boxes):
            region = _box_prob(p, box, fused[i].shape)
            if region is not None:
                sl, up = region
                masks[i][sl] |= up >= s.crop_threshold
                np.maximum(fused[i][sl], up, out=fused[i][sl])
        if s.box_fill_below > 0:
            for i in range(n):
                _fill_unsegmented_boxes(masks[i], detector_boxes[i], s.box_fill_below)
        results = []
        for i, (im, (work, pad)) in enumerate(zip(images, works)):
            prob, mask = _fold(fused[i], masks[i], im.shape[1], pad)
            labels, people = instances(mask, wrap=panoramas[i], min_pixels=s.min_component_pixels)
            mask = labels > 0  # without the specks
            results.append(Found(prob=prob, mask=mask, labels=labels, people=people, panorama=panoramas[i]))
        t_post = time.perf_counter() - t5
        timing = {
            "model": t_model, "hog": t_hog, "ssd": t_ssd,
            "resize_fuse": t_prep + t_fuse + t_prop + t_post,
        }
        for r in results:  # per-image share of the batch's time
            r.timings = {k: v / n for k, v in timing.items()}
        return results

    # -------------------------------------------------------------- helpers
    def _view(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        import cv2

        crop = crop_padded(image, box)
        size = self.model.size
        ch, cw = crop.shape[:2]
        interp = cv2.INTER_AREA if (cw > size and ch > size) else cv2.INTER_LINEAR
        return cv2.resize(crop, (size, size), interpolation=interp)

    def _run(self, views: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        step = self.settings.max_views_per_call
        for k in range(0, len(views), step):
            out.extend(self.model(np.stack(views[k:k + step])))
        return out

    def _ssd_boxes(self, works: list[np.ndarray], base_widths: list[int | None]) -> list[list[tuple[float, float, float, float]]]:
        s = self.settings
        views, owners, offsets = [], [], []
        for i, work in enumerate(works):
            h, w = work.shape[:2]
            # the whole image, then overlapping (square) tiles of each of ssd_tile_fractions
            regions = tile_boxes(w, h, s.ssd_tile_fractions, 0.25, 0.0, base_widths[i], s.tile_square)
            for (x0, y0, x1, y1) in regions:
                views.append(work[y0:y1, x0:x1])
                owners.append(i)
                offsets.append((x0, y0))
        out: list[list[tuple[float, float, float, float]]] = [[] for _ in works]
        step = s.max_views_per_call
        detections = []
        for k in range(0, len(views), step):  # bounded batches: memory stays flat
            detections.extend(self.ssd.detect(views[k:k + step], score_threshold=s.ssd_score))
        for (boxes, scores), i, (ox, oy) in zip(detections, owners, offsets):
            for b in np.asarray(boxes).reshape(-1, 4):
                out[i].append((b[0] + ox, b[1] + oy, b[2] + ox, b[3] + oy))
        return out


_HOG_CACHE: dict[FinderSettings, HogProposer] = {}


def hog_proposals(image: np.ndarray, settings: FinderSettings, panorama: bool = False) -> np.ndarray:
    """The CPU proposers' boxes for one image (empty when the preset has none), so a pipeline
    can run them in a CPU stage and hand the boxes to :meth:`PersonFinder.find`."""
    if "hog" not in settings.proposers:
        return np.zeros((0, 4), np.float32)
    hog = _HOG_CACHE.get(settings)
    if hog is None:
        hog = _HOG_CACHE[settings] = HogProposer(settings)
    work, _ = _extend(image, panorama)
    return hog.propose(work)


def load_ssd_bytes() -> bytes | None:
    """The prepared person SSD, or None when its module is not available."""
    try:
        from .models.ssd import prepare_ssd
    except ImportError:
        return None
    return prepare_ssd().read_bytes()


# ------------------------------------------------------------------------------ internals

def _extend(image: np.ndarray, panorama: bool) -> tuple[np.ndarray, int]:
    """For a panorama, append the first half of the image on the right (wrap the seam)."""
    if not panorama:
        return image, 0
    pad = image.shape[1] // 2
    return np.concatenate([image, image[:, :pad]], axis=1), pad


def _fold(prob: np.ndarray, mask: np.ndarray, width: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    if pad == 0:
        return prob, mask
    p, m = prob[:, :width].copy(), mask[:, :width].copy()
    np.maximum(p[:, :pad], prob[:, width:width + pad], out=p[:, :pad])
    m[:, :pad] |= mask[:, width:width + pad]
    return p, m


def _fuse_scale(boxes: Sequence[tuple[int, int, int, int]], model_size: int) -> float:
    """The scale at which the finest of these views still maps one model pixel or more onto
    each pixel (1 when the views are already that small)."""
    finest = min(min(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes)
    return min(1.0, model_size / max(finest, 1))


def _scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _scaled_box(box: tuple[int, int, int, int], scale: float) -> tuple[int, int, int, int]:
    if scale == 1.0:
        return box
    x0, y0, x1, y1 = box
    sx0, sy0 = round(x0 * scale), round(y0 * scale)
    return sx0, sy0, max(sx0 + 1, round(x1 * scale)), max(sy0 + 1, round(y1 * scale))


def _upsample(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    if prob.shape == tuple(shape):
        return prob
    return cv2.resize(prob, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _paste_max(target: np.ndarray, prob: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Resize a view's probabilities back to its box and max them into ``target``."""
    region = _box_prob(prob, box, target.shape)
    if region is not None:
        sl, up = region
        np.maximum(target[sl], up, out=target[sl])


def _box_prob(prob: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int]):
    """A view's probabilities resized back to its box, clipped to the image: (slices, array)."""
    import cv2

    h, w = shape
    x0, y0, x1, y1 = box
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if sx1 <= sx0 or sy1 <= sy0:
        return None
    up = cv2.resize(prob, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return (slice(sy0, sy1), slice(sx0, sx1)), up[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]


def _fill_unsegmented_boxes(mask: np.ndarray, boxes, below: float) -> None:
    """Privacy fallback: where a detector is sure of a person but the segmenter masked under
    ``below`` of its box (a dark coat on dark trees, a person behind a pram), mask the
    ellipse inscribed in the box."""
    import cv2

    h, w = mask.shape
    for b in boxes:
        x0, y0, x1, y1 = (int(round(v)) for v in b[:4])
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        if mask[y0:y1, x0:x1].mean() >= below:
            continue
        ell = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.ellipse(ell, ((x1 - x0) // 2, (y1 - y0) // 2), ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360, 1, -1)
        mask[y0:y1, x0:x1] |= ell.astype(bool)


def _component_boxes(mask: np.ndarray, min_pixels: int) -> list[tuple[int, int, int, int]]:
    import cv2

    n, _labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes = []
    for k in range(1, n):
        x, y, w, h, area = stats[k]
        if area >= min_pixels:
            boxes.append((int(x), int(y), int(x + w), int(y + h)))
    boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))  # small first: they gain most
    return boxes


def _dedupe_boxes(boxes: Iterable[tuple[int, int, int, int]], iou: float = 0.7) -> list[tuple[int, int, int, int]]:
    kept: list[tuple[int, int, int, int]] = []
    for b in boxes:
        if all(_iou(b, k) < iou for k in kept):
            kept.append(b)
    return kept


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def instances(mask: np.ndarray, wrap: bool = False, min_pixels: int = 1) -> tuple[np.ndarray, list[Person]]:
    """Connected people (8-connectivity) as a label map and per-person stats.

    With ``wrap`` (panoramas), components touching across the left/right seam are one person;
    its box then spans the full width. People under ``min_pixels`` pixels are specks (threshold
    noise at tile edges: a few pixels cannot show a recognisable person, and they would count
    as people): label 0. Boxes and pixel counts come from OpenCV's component
    statistics (one pass), merged per person when the seam joins components.
    """
    import cv2

    m = mask.view(np.uint8) if mask.dtype == np.bool_ else (mask != 0).view(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(m), connectivity=8, ltype=cv2.CV_32S)
    x0 = stats[:, cv2.CC_STAT_LEFT].astype(np.int64)
    y0 = stats[:, cv2.CC_STAT_TOP].astype(np.int64)
    x1 = x0 + stats[:, cv2.CC_STAT_WIDTH]
    y1 = y0 + stats[:, cv2.CC_STAT_HEIGHT]
    area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    if wrap and n > 2 and mask.shape[1] > 1:
        parent = list(range(n))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        left, right = labels[:, 0], labels[:, -1]
        for dy in (-1, 0, 1):  # 8-connectivity across the seam
            r = np.roll(right, dy)
            valid = np.ones_like(left, bool)
            if dy == -1:
                valid[-1] = False
            elif dy == 1:
                valid[0] = False
            both = valid & (left > 0) & (r > 0)
            for a, b in set(zip(left[both].tolist(), r[both].tolist())):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        roots = np.array([find(k) for k in range(n)], np.int64)
        uniq, lut = np.unique(roots, return_inverse=True)
        if len(uniq) < n:  # merge the statistics of joined components, relabel 1..K
            k = len(uniq)
            mx0, my0 = np.full(k, mask.shape[1], np.int64), np.full(k, mask.shape[0], np.int64)
            mx1, my1, marea = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64)
            np.minimum.at(mx0, lut, x0); np.minimum.at(my0, lut, y0)
            np.maximum.at(mx1, lut, x1); np.maximum.at(my1, lut, y1)
            np.add.at(marea, lut, area)
            x0, y0, x1, y1, area, n = mx0, my0, mx1, my1, marea, k
            labels = lut.astype(np.int32)[labels]
    if min_pixels > 1 and n > 1 and (area[1:] < min_pixels).any():
        keep = area >= min_pixels
        keep[0] = True
        lut = np.where(keep, np.cumsum(keep) - 1, 0).astype(np.int32)
        labels = lut[labels]
        x0, y0, x1, y1, area = x0[keep], y0[keep], x1[keep], y1[keep], area[keep]
        n = int(keep.sum())
    people = [Person(box=(int(x0[k]), int(y0[k]), int(x1[k]), int(y1[k])), pixels=int(area[k]),
                     height=int(y1[k] - y0[k])) for k in range(1, n)]
    return labels, people
