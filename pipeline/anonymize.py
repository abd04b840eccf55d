"""Hide people: every person pixel becomes a pixel drawn at random near it (pure functions).

The default mode, ``shuffle``, replaces each selected pixel with the ORIGINAL value of a pixel
drawn uniformly from the (2r+1)x(2r+1) window around it (the window intersected with the image,
or wrapped across the left/right seam of a 360-degree panorama). The radius grows with each
person: r = max(min_radius, ceil(f x box height)); at f = 0.20 a person becomes a speckled cloud
whose colours no longer keep the layout of the clothes. The outline dissolve grows each person's
selection by ``dissolve x r`` px with a claim probability that falls off linearly with distance,
so the cloud frays into the background instead of keeping the silhouette and stride.

Randomness is keyed: the per-image generator is seeded from HMAC-SHA256(secret, image key), so
nobody without the secret can regenerate the source map and partly undo the shuffle, while the
same secret, key and input always give byte-identical output. The shuffle takes two uint64
from that generator as the key of a counter-based hash (two keyed SplitMix64 rounds of the
pixel's index), so each pixel's draw is independent of the order pixels are visited in and
the kernel can work run by run, vectorised.

Defaults, chosen by looking at the Penn-Fudan dev photos (ground-truth masks, before/after):
f = 0.10 keeps the layout of clothing colours (a blue shirt above khaki trousers, a red backpack
above plaid trousers stay readable to someone who knows them); 0.15 still shows them as tinted
regions; at 0.20 they mix into one speckled cloud, only faint tints remain. With a sharp edge
the silhouette and stride stay readable at every f; dissolve 0.5 still shows two legs apart,
0.75 a hint of them, 1.0 one diffuse cloud. So f = 0.20 and dissolve = 1.0.

Entry points: :func:`anonymize` (per image, from the finder's instance labels),
:func:`anonymize_mask` (from a bare mask), :func:`shuffle_pixels` / :func:`apply_mode` (the
kernels on a mask), :func:`dilate_mask`, :func:`keyed_rng`, :func:`resolve_secret`.
Heavy modules (OpenCV, numba) are imported on first use; :func:`warm_up` pays that cost up front.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import numbers
import os
import secrets as _secrets
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np

from .config import RADIUS_MODES, RunConfig

log = logging.getLogger(__name__)

SECRET_ENV = "FUZZY_PEOPLE_SECRET"
RANDOM_SOURCE = "random (this run only)"
# The defaults live in RunConfig (one place, also what the CLI shows); chosen as "Defaults" above.
_CFG = RunConfig.__dataclass_fields__
DEFAULT_RADIUS = _CFG["radius"].default  # f: fraction of each person's box height
DEFAULT_DISSOLVE = _CFG["dissolve"].default  # outline dissolve band, a multiple of each person's radius
DEFAULT_MIN_RADIUS = _CFG["min_radius"].default
DEFAULT_DILATE = _CFG["dilate"].default
DEFAULT_FILL = _CFG["fill_color"].default
_DILATE_BY_KERNEL_MAX = 8  # up to this radius a disk-kernel dilation beats a distance transform
_CELLS_PER_BAND = 8  # resolution of the dissolve's distance map: cells across one band


# ---------------------------------------------------------------------------- secret and keyed rng

class Secret:
    """The anonymization secret: ``value`` bytes plus where they came from (``source``).

    repr/str show only the source, never the value; pickling keeps the value (a Secret travels
    to Ray workers).
    """

    __slots__ = ("_value", "source")

    def __init__(self, value: bytes, source: str) -> None:
        if not isinstance(value, (bytes, bytearray)) or not value:
            raise ValueError("secret: must be non-empty bytes")
        self._value = bytes(value)
        self.source = str(source)

    @property
    def value(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(source={self.source!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value, self.source))


def resolve_secret(secret_file: str | None = None, environ: dict[str, str] | None = None) -> Secret:
    """The run's secret: ``secret_file`` if given, else env ``FUZZY_PEOPLE_SECRET``, else random.

    A file's surrounding whitespace (a trailing newline) is stripped. Without either source a
    fresh random secret is drawn for this run only (logged as a warning, value never shown):
    outputs are then not reproducible, which costs nothing in privacy.
    """
    env = os.environ if environ is None else environ
    if secret_file is not None:
        try:
            with open(secret_file, "rb") as f:
                value = f.read().strip()
        except OSError as exc:
            raise ValueError(f"secret_file: cannot read {secret_file}: {exc.strerror}") from None
        if not value:
            raise ValueError(f"secret_file: {secret_file} is empty")
        secret = Secret(value, "file")
    elif SECRET_ENV in env:
        value = env[SECRET_ENV].encode("utf-8")
        if not value:
            raise ValueError(f"{SECRET_ENV}: is set but empty (unset it to draw a random secret)")
        secret = Secret(value, f"env {SECRET_ENV}")
    else:
        log.warning("no secret given (--secret-file or %s): drew a random one for this run only; "
                    "outputs will differ between runs", SECRET_ENV)
        return Secret(_secrets.token_bytes(32), RANDOM_SOURCE)
    if len(secret.value) < 16:
        log.warning("the secret from %s is under 16 bytes: a short secret can be guessed", secret.source)
    return secret


def keyed_rng(secret: Secret | bytes, key: str) -> np.random.Generator:
    """The per-image generator: PCG64DXSM seeded with HMAC-SHA256(secret, key as UTF-8)."""
    raw = secret.value if isinstance(secret, Secret) else secret
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        raise ValueError("secret: must be a Secret or non-empty bytes")
    if not isinstance(key, str):
        raise ValueError(f"key: must be a str, got {type(key).__name__}")
    digest = hmac.new(bytes(raw), key.encode("utf-8"), hashlib.sha256).digest()
    seed = np.random.SeedSequence(int.from_bytes(digest, "big"))
    return np.random.Generator(np.random.PCG64DXSM(seed))


# ---------------------------------------------------------------------------- validation

def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image: must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: dtype must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: shape must be HxWx3, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image: must not be empty, got {image.shape}")
    return np.ascontiguousarray(image)


def _check_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"mask: must be a numpy array, got {type(mask).__name__}")
    if mask.dtype != np.bool_:
        raise ValueError(f"mask: dtype must be bool, got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"mask: shape {mask.shape} does not match the image's {shape}")
    return np.ascontiguousarray(mask)


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: must be a numpy Generator (see keyed_rng), got {type(rng).__name__}")
    return rng


def _check_color(color: Any) -> tuple[int, int, int]:
    try:
        values = tuple(int(c) for c in color)
    except (TypeError, ValueError):
        raise ValueError(f"fill_color: must be three ints 0..255, got {color!r}") from None
    if len(values) != 3 or any(not 0 <= c <= 255 for c in values):
        raise ValueError(f"fill_color: must be three ints 0..255, got {color!r}")
    return values  # type: ignore[return-value]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


# ---------------------------------------------------------------------------- selections and modes

@dataclass(frozen=True)
class Selection:
    """What a mode changes: ``labels`` HxW ints, 0 = keep, v > 0 = change with radius radii[v].

    ``labels`` is C-contiguous (uint8 or int32), ``radii`` an int64 lookup table with
    radii[0] unused and every used value at most max(H, W) (a larger radius means the same).
    """

    labels: np.ndarray
    radii: np.ndarray

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.labels))

    @cached_property
    def boxes(self) -> np.ndarray:
        """(len(radii), 4) inclusive boxes y0, y1, x0, x1 per label value; -1 rows when absent."""
        from . import _kernels

        return _kernels.label_boxes(self.labels, *_word_view(self.labels), len(self.radii) - 1)


def selection_from_mask(mask: np.ndarray, radius: Any) -> Selection:
    """A Selection from a bool mask and an int radius or an HxW int array of radii (>= 0)."""
    h, w = mask.shape
    cap = max(h, w)
    if _is_int(radius):
        if radius < 0:
            raise ValueError(f"radius: must be >= 0, got {radius}")
        return Selection(mask.view(np.uint8), np.array([0, min(int(radius), cap)], np.int64))
    if not isinstance(radius, np.ndarray):
        raise ValueError(f"radius: must be an int or an HxW integer array, got {type(radius).__name__}")
    if radius.dtype.kind not in "iu":
        raise ValueError(f"radius: dtype must be integer, got {radius.dtype}")
    if radius.shape != (h, w):
        raise ValueError(f"radius: shape {radius.shape} does not match the image's {(h, w)}")
    if radius.size and radius.min() < 0:
        raise ValueError(f"radius: must be >= 0, got {radius.min()}")
    capped = np.minimum(radius, cap).astype(np.int32)
    labels = np.where(mask, capped + 1, 0).astype(np.int32)
    return Selection(labels, np.arange(-1, cap + 1, dtype=np.int64))


def _word_view(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """``labels`` (C-contiguous HxW) viewed as uint64 words per row, and labels per word; an
    empty (H, 0) view and 0 when a row is not a whole number of words (the kernels then scan
    label by label). Lets the kernels skip 8 background bytes at a time."""
    h, w = labels.shape
    size = labels.dtype.itemsize
    if size > 8 or (w * size) % 8 or sys.byteorder != "little":
        return np.zeros((h, 0), np.uint64), 0
    return labels.view(np.uint64), 8 // size


def _label_dtype(n: int) -> type:
    """The narrowest unsigned dtype for labels 0..n: the kernels scan 4x fewer bytes for uint8."""
    for dtype in (np.uint8, np.uint16):
        if n <= np.iinfo(dtype).max:
            return dtype
    return np.int32


def _shuffle(image: np.ndarray, sel: Selection, rng: np.random.Generator, *, wrap: bool,
             fill_color: Sequence[int]) -> np.ndarray:
    """Each selected pixel takes the original value of a uniform pixel of its window."""
    from . import _kernels

    out = image.copy()
    if sel.count:
        k0, k1 = (np.uint64(v) for v in rng.bit_generator.random_raw(2))
        words, ppw = _word_view(sel.labels)
        _kernels.shuffle(image, sel.labels, words, ppw, sel.radii, k0, k1, bool(wrap), out)
    return out


def _gaussian_region(crop: np.ndarray, sigma: float, region: tuple[int, int, int, int]) -> np.ndarray:
    """``crop`` blurred with a Gaussian of ``sigma`` px, returned for rows r0:r1, cols c0:c1 only.

    From sigma 8 on, a copy reduced by step = sigma // 4 is blurred (sigma / step, 4..8 px) and
    read back bilinearly, so the cost no longer grows with sigma; the box of the reduction and
    the tent of the read-back widen the kernel by under 2 %."""
    import cv2

    r0, r1, c0, c1 = region
    step = int(sigma // 4)
    if step <= 1:
        return cv2.GaussianBlur(crop, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)[r0:r1, c0:c1]
    h, w = crop.shape[:2]
    sw, sh = max(1, -(-w // step)), max(1, -(-h // step))
    fx, fy = sw / w, sh / h
    small = cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma * fx, sigmaY=sigma * fy, borderType=cv2.BORDER_REFLECT)
    back = np.float32([[fx, 0, (c0 + 0.5) * fx - 0.5], [0, fy, (r0 + 0.5) * fy - 0.5]])
    return cv2.warpAffine(small, back, (c1 - c0, r1 - r0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _blur(image: np.ndarray, sel: Selection, rng: np.random.Generator, *, wrap: bool,
          fill_color: Sequence[int]) -> np.ndarray:
    """Gaussian blur with sigma = radius / 2 (so +-2 sigma spans the window); only selected
    pixels change. With ``wrap`` the blur reaches across the left/right seam."""
    out = image.copy()
    h, w = sel.labels.shape
    for v, (y0, y1, x0, x1) in enumerate(sel.boxes):
        if y0 < 0 or sel.radii[v] < 1:
            continue
        sigma = sel.radii[v] / 2.0
        m = int(math.ceil(3 * sigma))
        ya, yb = max(0, y0 - m), min(h, y1 + 1 + m)
        if wrap:
            xa = x0 - m
            crop = image[ya:yb][:, np.arange(xa, x1 + 1 + m) % w]
        else:
            xa = max(0, x0 - m)
            crop = image[ya:yb, xa:min(w, x1 + 1 + m)]
        blurred = _gaussian_region(crop, sigma, (y0 - ya, y1 + 1 - ya, x0 - xa, x1 + 1 - xa))
        keep = (sel.labels[y0:y1 + 1, x0:x1 + 1] == v)[..., None]
        np.copyto(out[y0:y1 + 1, x0:x1 + 1], blurred, where=keep)
    return out


def _pixelate(image: np.ndarray, sel: Selection, rng: np.random.Generator, *, wrap: bool,
              fill_color: Sequence[int]) -> np.ndarray:
    """Each selected pixel takes the mean of its radius x radius block; blocks sit on a grid
    anchored at the image's top-left corner (so they never cross a panorama's seam)."""
    out = image.copy()
    h, w = sel.labels.shape
    for v, (y0, y1, x0, x1) in enumerate(sel.boxes):
        b = int(sel.radii[v])
        if y0 < 0 or b < 2:
            continue
        ya, xa = (y0 // b) * b, (x0 // b) * b
        yb, xb = min(h, -(-(y1 + 1) // b) * b), min(w, -(-(x1 + 1) // b) * b)
        starts_y, starts_x = np.arange(0, yb - ya, b), np.arange(0, xb - xa, b)
        sums = np.add.reduceat(np.add.reduceat(image[ya:yb, xa:xb], starts_y, axis=0, dtype=np.uint32),
                               starts_x, axis=1, dtype=np.uint32)
        counts = (np.minimum(b, yb - ya - starts_y)[:, None] * np.minimum(b, xb - xa - starts_x)[None, :])[..., None]
        means = ((sums + counts // 2) // counts).astype(np.uint8)
        blocks = means.repeat(b, axis=0).repeat(b, axis=1)[:yb - ya, :xb - xa]
        keep = (sel.labels[ya:yb, xa:xb] == v)[..., None]
        np.copyto(out[ya:yb, xa:xb], blocks, where=keep)
    return out


def _fill(image: np.ndarray, sel: Selection, rng: np.random.Generator, *, wrap: bool,
          fill_color: Sequence[int]) -> np.ndarray:
    """Selected pixels become ``fill_color``."""
    out = image.copy()
    out[sel.labels != 0] = np.asarray(fill_color, np.uint8)
    return out


# name -> mode(image, selection, rng, *, wrap, fill_color) -> new image; only selected pixels change
MODES: dict[str, Callable[..., np.ndarray]] = {
    "shuffle": _shuffle,
    "blur": _blur,
    "pixelate": _pixelate,
    "fill": _fill,
}


def apply_mode(mode: str, image: np.ndarray, mask: np.ndarray, radius: Any, rng: np.random.Generator,
               *, wrap: bool = False, fill_color: Sequence[int] = DEFAULT_FILL) -> np.ndarray:
    """Run mode ``mode`` on the ``mask`` pixels of ``image`` with ``radius`` (int or HxW ints).

    Returns a new HxWx3 uint8 image; unmasked pixels are bit-identical to the input.
    """
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    image = _check_image(image)
    mask = _check_mask(mask, image.shape[:2])
    sel = selection_from_mask(mask, radius)
    return MODES[mode](image, sel, _check_rng(rng), wrap=bool(wrap), fill_color=_check_color(fill_color))


def shuffle_pixels(image: np.ndarray, mask: np.ndarray, radius: Any, rng: np.random.Generator,
                   *, wrap: bool = False) -> np.ndarray:
    """Each ``mask`` pixel takes the ORIGINAL value of a pixel drawn uniformly from the
    (2r+1)x(2r+1) window around it, r = ``radius`` (an int, or an HxW int array read at the
    pixel). The window is intersected with the image (uniform over what remains, not clamped
    coordinates); with ``wrap`` it wraps across the left/right edges instead (x modulo W).
    Draws: two uint64 from ``rng``'s bit generator, the key (k0, k1) of a counter-based hash
    that gives pixel (y, x) its 64 bits (see ``_kernels.pixel_bits``).
    Radius 0 or an empty mask gives an identical copy; unmasked pixels are bit-identical.
    """
    return apply_mode("shuffle", image, mask, radius, rng, wrap=wrap)


# ---------------------------------------------------------------------------- masks and radii

def _disk(n: int) -> np.ndarray:
    y, x = np.mgrid[-n:n + 1, -n:n + 1]
    return (x * x + y * y <= n * n).astype(np.uint8)


def dilate_mask(mask: np.ndarray, n: int, wrap: bool = False) -> np.ndarray:
    """Grow ``mask`` by ``n`` pixels, Euclidean: a pixel is set when some set pixel lies within
    distance <= n of it (a disk, not a square). With ``wrap`` distances run across the
    left/right seam (x modulo W); rows never wrap."""
    import cv2

    if not _is_int(n) or n < 0:
        raise ValueError(f"n: must be an int >= 0, got {n!r}")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError(f"mask: must be a 2-D bool array, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if n == 0 or not mask.any():
        return mask.copy()
    h, w = mask.shape
    pad = n if wrap else 0
    src = np.ascontiguousarray(mask[:, np.arange(-pad, w + pad) % w] if pad else mask).view(np.uint8)
    if n <= _DILATE_BY_KERNEL_MAX:
        grown = cv2.dilate(src, _disk(n), borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    else:  # exact EDT (Felzenszwalb): cost independent of n
        grown = cv2.distanceTransform((src == 0).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= n
    return np.ascontiguousarray(grown[:, pad:pad + w])


def labels_from_mask(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Instances of a bare mask: 8-connected components as int32 labels 1..K and their box heights."""
    import cv2

    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError(f"mask: must be a 2-D bool array, got {getattr(mask, 'dtype', type(mask).__name__)}")
    k, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask).view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return labels, [int(v) for v in stats[1:k, cv2.CC_STAT_HEIGHT]]


def person_radii(heights: Sequence[float], image_shape: tuple[int, ...], radius_mode: str,
                 radius: float, min_radius: int) -> list[int]:
    """Shuffle radius in px per person, never below ``min_radius``.

    person: ceil(radius x the person's box height); pixels: ``radius`` px for everyone;
    image: ceil(radius x the image's shorter side) for everyone.
    """
    def up(x: float) -> int:
        return int(math.ceil(x - 1e-9))

    if radius_mode == "person":
        return [max(min_radius, up(radius * float(h))) for h in heights]
    if radius_mode == "pixels":
        return [max(min_radius, int(radius))] * len(heights)
    if radius_mode == "image":
        return [max(min_radius, up(radius * min(image_shape[0], image_shape[1])))] * len(heights)
    raise ValueError(f"radius_mode: must be one of {', '.join(RADIUS_MODES)}, got {radius_mode!r}")


# ---------------------------------------------------------------------------- per image

@dataclass(frozen=True)
class AnonymizeParams:
    """How to hide people; mirrors the anonymizing fields of ``RunConfig``."""

    mode: str = "shuffle"
    radius_mode: str = "person"
    radius: float = DEFAULT_RADIUS
    min_radius: int = DEFAULT_MIN_RADIUS
    dilate: int = DEFAULT_DILATE
    dissolve: float = DEFAULT_DISSOLVE
    fill_color: tuple[int, int, int] = DEFAULT_FILL

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.radius_mode not in RADIUS_MODES:
            raise ValueError(f"radius_mode: must be one of {', '.join(RADIUS_MODES)}, got {self.radius_mode!r}")
        if not (isinstance(self.radius, numbers.Real) and self.radius >= 0 and math.isfinite(self.radius)):
            raise ValueError(f"radius: must be a finite number >= 0, got {self.radius!r}")
        if not _is_int(self.min_radius) or self.min_radius < 0:
            raise ValueError(f"min_radius: must be an int >= 0, got {self.min_radius!r}")
        if not _is_int(self.dilate) or self.dilate < 0:
            raise ValueError(f"dilate: must be an int >= 0, got {self.dilate!r}")
        if not (isinstance(self.dissolve, numbers.Real) and 0 <= self.dissolve <= 4):
            raise ValueError(f"dissolve: must be a number in 0..4 (a multiple of the radius), got {self.dissolve!r}")
        object.__setattr__(self, "fill_color", _check_color(self.fill_color))

    @classmethod
    def from_config(cls, cfg: Any) -> "AnonymizeParams":
        """From any object with the RunConfig field names (mode, radius_mode, radius, ...)."""
        return cls(mode=cfg.mode, radius_mode=cfg.radius_mode, radius=cfg.radius,
                   min_radius=cfg.min_radius, dilate=cfg.dilate, dissolve=cfg.dissolve,
                   fill_color=tuple(cfg.fill_color))


@dataclass(frozen=True)
class Anonymized:
    image: np.ndarray  # HxWx3 uint8, the anonymized image
    mask: np.ndarray  # HxW bool, the pixels the mode changed (persons + dilation + dissolve)
    radii: list[int]  # radius in px per person 1..K


def _grow_labels(lab: np.ndarray, radii: Sequence[int], dilate: int, dissolve: float,
                 rng: np.random.Generator, wrap: bool) -> np.ndarray:
    """Each person's selection: its pixels, the exact ``dilate``-px Euclidean ring around all
    persons, and a dissolve band of ``dissolve x radius`` px beyond it whose pixels are claimed
    with a probability falling linearly from 1 to 0 across the band (distances measured on a
    grid of band/8-px cells). A grown pixel goes to the person in whose band it lies deepest.
    ``lab``: C-contiguous labels 0..len(radii) (see ``_label_dtype``). Returns labels of the
    same dtype (0 = untouched; ``lab`` itself when nothing grows). Draws one uint64 from
    ``rng`` when a band exists.
    """
    import cv2

    from . import _kernels

    h, w = lab.shape
    bands = [float(dissolve) * r for r in radii]
    if dilate == 0 and not any(bands):
        return lab
    boxes = _kernels.label_boxes(lab, *_word_view(lab), len(radii))
    ring = dilate_mask(lab > 0, dilate, wrap=wrap)
    seed = np.uint64(rng.bit_generator.random_raw()) if any(bands) else np.uint64(0)
    grown = lab.copy()
    score = np.empty((h, w), np.float32)
    for k in range(1, len(radii) + 1):
        by0, by1, bx0, bx1 = (int(v) for v in boxes[k])
        if by0 < 0:
            continue
        band = bands[k - 1]
        s = max(1, int(band // _CELLS_PER_BAND))
        reach = int(math.ceil(dilate + band)) + s
        y0, y1 = max(0, by0 - reach), min(h, by1 + 1 + reach)
        x0, x1 = bx0 - reach, bx1 + 1 + reach
        if not wrap:
            x0, x1 = max(0, x0), min(w, x1)
        gh, gw = -(-(y1 - y0) // s), -(-(x1 - x0) // s)
        occ = _kernels.occupancy(lab, k, y0, x0, gh, gw, s, wrap, by0, by1, bx0, bx1)
        dist = cv2.distanceTransform(occ, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        _kernels.grow_person(lab, ring, k, y0, x0, s, dist, float(dilate), band, seed, wrap, grown, score)
    return grown


def anonymize(image: np.ndarray, labels: np.ndarray, heights: Sequence[float], params: AnonymizeParams,
              rng: np.random.Generator, *, wrap: bool = False) -> Anonymized:
    """Hide every person of ``image`` (HxWx3 uint8).

    ``labels``: HxW integer map from the finder, 0 = background, k = person k (1..K);
    ``heights``: box height in px of persons 1..K (sets each radius); ``rng``: the image's
    keyed generator (:func:`keyed_rng`); ``wrap``: a 360-degree panorama (windows, dilation and
    dissolve wrap across the left/right seam). Grown pixels take the radius of their person.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels: must be an integer array, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (h, w):
        raise ValueError(f"labels: shape {labels.shape} does not match the image's {(h, w)}")
    if not isinstance(params, AnonymizeParams):
        raise ValueError(f"params: must be AnonymizeParams, got {type(params).__name__}")
    _check_rng(rng)
    try:
        hs = [float(v) for v in heights]
    except (TypeError, ValueError):
        raise ValueError("heights: must be a sequence of numbers (box heights in px)") from None
    if any(not (math.isfinite(v) and v >= 0) for v in hs):
        raise ValueError("heights: every box height must be a finite number >= 0")
    from . import _kernels

    # one pass: the labels in the narrowest dtype that holds 0..K (the kernels scan a quarter
    # of the bytes when K < 256), with their range checked on the way
    lab = np.empty((h, w), _label_dtype(len(hs)))
    lo, hi = _kernels.narrow(np.ascontiguousarray(labels), lab)
    if lo < 0 or hi > len(hs):
        raise ValueError(f"labels: value {lo if lo < 0 else hi} is not a person 1..{len(hs)} "
                         f"(heights has {len(hs)} entries)")
    radii = person_radii(hs, image.shape, params.radius_mode, params.radius, params.min_radius)
    grown = _grow_labels(lab, radii, params.dilate, params.dissolve, rng, bool(wrap))
    cap = max(h, w)
    sel = Selection(grown, np.array([0] + [min(r, cap) for r in radii], np.int64))
    out = MODES[params.mode](image, sel, rng, wrap=bool(wrap), fill_color=params.fill_color)
    return Anonymized(out, grown > 0, radii)


def anonymize_mask(image: np.ndarray, mask: np.ndarray, params: AnonymizeParams,
                   rng: np.random.Generator, *, wrap: bool = False) -> Anonymized:
    """:func:`anonymize` for a bare person mask: each 8-connected component is one person."""
    image = _check_image(image)
    mask = _check_mask(mask, image.shape[:2])
    labels, heights = labels_from_mask(mask)
    return anonymize(image, labels, heights, params, rng, wrap=wrap)


def warm_up() -> float:
    """Import OpenCV and load (or compile) every kernel on a tiny image; returns seconds taken.
    Call it once when a worker starts so the first real image does not pay for it."""
    t0 = time.perf_counter()
    image = np.zeros((8, 8, 3), np.uint8)
    labels = np.zeros((8, 8), np.int32)
    labels[2:6, 3:5] = 1
    rng = np.random.Generator(np.random.PCG64DXSM(0))
    for mode in MODES:
        for wrap in (False, True):
            anonymize(image, labels, [4], AnonymizeParams(mode=mode), rng, wrap=wrap)
    for radius in (2, np.full((8, 8), 2, np.int32)):  # a bare mask: uint8 and int32 selections
        for mode in MODES:
            apply_mode(mode, image, labels > 0, radius, rng)
    return time.perf_counter() - t0
