"""The anonymization kernel: pure functions, property-based where the property is general."""

from __future__ import annotations

import base64
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.anonymize import (
    MODES, RANDOM_SOURCE, SECRET_ENV, AnonymizeParams, Secret, anonymize, anonymize_mask,
    apply_mode, dilate_mask, keyed_rng, labels_from_mask, person_radii, resolve_secret,
    shuffle_pixels,
)

DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pennfudan-dev"
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64DXSM(seed))


def coded(h: int, w: int) -> np.ndarray:
    """An image whose every pixel names its position: R, G = y, x (h, w <= 256); B = 7."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y, x, np.full_like(y, 7)], axis=-1).astype(np.uint8)


def sources(out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return out[..., 0].astype(int), out[..., 1].astype(int)


def wrap_dist(a: np.ndarray, b: np.ndarray, w: int) -> np.ndarray:
    d = np.abs(a - b) % w
    return np.minimum(d, w - d)


sizes = st.tuples(st.integers(1, 24), st.integers(1, 24))


@st.composite
def case(draw, max_r: int = 30):
    h, w = draw(sizes)
    mask = draw(hnp.arrays(np.bool_, (h, w)))
    if draw(st.booleans()):
        radius = draw(st.integers(0, max_r))
    else:
        radius = draw(hnp.arrays(np.int32, (h, w), elements=st.integers(0, max_r)))
    return h, w, mask, radius, draw(st.booleans())


def radius_at(radius, h: int, w: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(radius, dtype=np.int64), (h, w))


# ---------------------------------------------------------------------------- every mode

@FAST
@given(case(), st.sampled_from(sorted(MODES)), st.integers(0, 2**32))
def test_modes_keep_shape_dtype_and_unmasked_pixels(c, mode, seed):
    h, w, mask, radius, wrap = c
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    before = image.copy()
    out = apply_mode(mode, image, mask, radius, rng(seed), wrap=wrap, fill_color=(1, 2, 3))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], image[~mask])
    assert np.array_equal(image, before), "the input must not be modified"


# ---------------------------------------------------------------------------- shuffle

@FAST
@given(case(max_r=40), st.integers(0, 2**32))
def test_shuffle_takes_original_pixels_from_inside_each_window(c, seed):
    h, w, mask, radius, wrap = c
    out = shuffle_pixels(coded(h, w), mask, radius, rng(seed), wrap=wrap)
    sy, sx = sources(out)
    ys, xs = np.mgrid[0:h, 0:w]
    r = radius_at(radius, h, w)
    dx = wrap_dist(sx, xs, w) if wrap else np.abs(sx - xs)
    assert (np.abs(sy - ys)[mask] <= r[mask]).all()
    assert (dx[mask] <= r[mask]).all()
    assert (out[..., 2] == 7).all()


M64 = (1 << 64) - 1


def splitmix_finalizer(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def reference_bits(k0: int, k1: int, p: int) -> int:
    """The documented draw of pixel index p = y * W + x under the key (k0, k1)."""
    return splitmix_finalizer((splitmix_finalizer(((p * 0x9E3779B97F4A7C15) & M64) ^ k0) + k1) & M64)


def reference_shuffle(image, mask, radius, key, wrap):
    """The documented draw, in plain Python integers: the key is two uint64 from the generator;
    pixel (y, x) takes 64 bits from the keyed hash of y * W + x; high 32 bits pick the row of
    the clipped window, low 32 bits the column (clipped, or wrapped modulo W)."""
    h, w = mask.shape
    k0, k1 = (int(v) for v in key)
    out = image.copy()
    r_map = radius_at(radius, h, w)
    for y, x in zip(*np.nonzero(mask)):
        r, b = int(r_map[y, x]), reference_bits(k0, k1, int(y) * w + int(x))
        y0, y1 = max(y - r, 0), min(y + r, h - 1)
        sy = y0 + (((b >> 32) * (y1 - y0 + 1)) >> 32)
        lo = b & 0xFFFFFFFF
        if wrap:
            span = 2 * r + 1
            sx = (lo * w) >> 32 if span >= w else (x - r + ((lo * span) >> 32)) % w
        else:
            x0, x1 = max(x - r, 0), min(x + r, w - 1)
            sx = x0 + ((lo * (x1 - x0 + 1)) >> 32)
        out[y, x] = image[sy, sx]
    return out


@FAST
@given(case(), st.integers(0, 2**32))
def test_shuffle_matches_the_documented_draw_from_the_original_image(c, seed):
    h, w, mask, radius, wrap = c
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    key = rng(seed).bit_generator.random_raw(2) if mask.any() else (0, 0)
    expected = reference_shuffle(image, mask, radius, key, wrap)
    assert np.array_equal(shuffle_pixels(image, mask, radius, rng(seed), wrap=wrap), expected)


def chi2_uniform(values: np.ndarray, k: int) -> float:
    counts = np.bincount(values, minlength=k)
    assert len(counts) == k, "a value outside the window"
    e = len(values) / k
    return float(((counts - e) ** 2 / e).sum())


def test_shuffle_is_uniform_over_the_clipped_window_not_clamped():
    # column 0 with r = 3: the window's columns are 0..3, each 1/4 (clamping would give 0 a 4/7 share)
    h, w, r = 4000, 12, 3
    mask = np.zeros((h, w), bool)
    mask[:, 0] = True
    mask[:, 6] = True
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 1] = np.arange(w, dtype=np.uint8)
    out = shuffle_pixels(image, mask, r, rng(3))
    # 99.9th percentile of chi-square: 16.3 (3 dof), 22.5 (6 dof)
    assert chi2_uniform(out[:, 0, 1].astype(int), 4) < 16.3
    assert chi2_uniform(out[:, 6, 1].astype(int) - 3, 7) < 22.5
    # rows too: row 0 of a column draws rows 0..3 uniformly
    tall = coded(200, 1)[:, :, :]
    rows = np.concatenate([shuffle_pixels(tall, np.ones((200, 1), bool), 3, rng(s))[0, 0, :1] for s in range(800)])
    assert chi2_uniform(rows.astype(int), 4) < 16.3


@pytest.mark.parametrize("radius", [0, np.zeros((5, 7), np.int32)], ids=["int", "array"])
def test_radius_zero_or_empty_mask_is_an_identical_copy(radius):
    image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = shuffle_pixels(image, np.ones((5, 7), bool), radius, rng())
    assert np.array_equal(out, image) and out is not image
    out = shuffle_pixels(image, np.zeros((5, 7), bool), 9, rng())
    assert np.array_equal(out, image) and out is not image


def test_tiny_full_and_oversized_cases():
    one = np.array([[[9, 8, 7]]], np.uint8)
    assert np.array_equal(shuffle_pixels(one, np.ones((1, 1), bool), 50, rng()), one)
    image = coded(6, 9)
    for wrap in (False, True):
        out = shuffle_pixels(image, np.ones((6, 9), bool), 10**9, rng(5), wrap=wrap)
        sy, sx = sources(out)
        assert sy.max() < 6 and sx.max() < 9
        # a window larger than the image covers it all: sources spread over the whole image
        assert len(set(zip(sy.ravel(), sx.ravel()))) > 20


def test_panorama_windows_wrap_across_the_seam():
    h, w, r = 300, 40, 5
    mask = np.zeros((h, w), bool)
    mask[:, 0] = True
    mask[:, w - 1] = True
    out_wrap = shuffle_pixels(coded(h, w), mask, r, rng(1), wrap=True)
    out_flat = shuffle_pixels(coded(h, w), mask, r, rng(1), wrap=False)
    left_wrap, left_flat = out_wrap[:, 0, 1].astype(int), out_flat[:, 0, 1].astype(int)
    right_wrap = out_wrap[:, w - 1, 1].astype(int)
    assert set(left_wrap) == set(range(0, r + 1)) | set(range(w - r, w))
    assert set(left_flat) == set(range(0, r + 1))
    assert set(right_wrap) == set(range(w - r - 1, w)) | set(range(0, r))


# ---------------------------------------------------------------------------- keyed randomness

def test_same_secret_and_key_give_identical_output_another_secret_does_not():
    image = np.random.default_rng(2).integers(0, 256, (60, 50, 3), dtype=np.uint8)
    labels = np.zeros((60, 50), np.int32)
    labels[10:50, 10:20] = 1
    labels[5:30, 30:40] = 2
    p = AnonymizeParams()

    def run(secret: bytes, key: str) -> np.ndarray:
        return anonymize(image, labels, [40, 25], p, keyed_rng(secret, key)).image

    a = run(b"secret-one-0123456789", "bucket/a.jpg")
    assert np.array_equal(a, run(b"secret-one-0123456789", "bucket/a.jpg"))
    assert not np.array_equal(a, run(b"secret-two-0123456789", "bucket/a.jpg"))
    assert not np.array_equal(a, run(b"secret-one-0123456789", "bucket/b.jpg"))
    s = Secret(b"secret-one-0123456789", "file")
    assert np.array_equal(a, anonymize(image, labels, [40, 25], p, keyed_rng(s, "bucket/a.jpg")).image)


SECRET_VALUE = b"hunter2-is-not-a-good-secret-but-a-long-one"


def test_secret_never_shows_its_value_and_survives_pickle():
    s = Secret(SECRET_VALUE, "env FUZZY_PEOPLE_SECRET")
    texts = [repr(s), str(s), f"{s}", f"{s!r}", "%s" % s, repr([s]), repr({"secret": s})]
    forms = [SECRET_VALUE.decode(), SECRET_VALUE.hex(), base64.b64encode(SECRET_VALUE).decode(), "hunter2"]
    for text in texts:
        assert "env FUZZY_PEOPLE_SECRET" in text or "Secret" in text
        for form in forms:
            assert form not in text
    back = pickle.loads(pickle.dumps(s))
    assert back.value == SECRET_VALUE and back.source == s.source
    assert not hasattr(s, "__dict__")


def test_resolve_secret_file_then_env_then_random(tmp_path, caplog):
    f = tmp_path / "secret"
    f.write_bytes(b"from-the-file-0123456789\n")
    env = {SECRET_ENV: "from-the-env-0123456789"}
    s = resolve_secret(str(f), environ=env)
    assert (s.value, s.source) == (b"from-the-file-0123456789", "file")
    s = resolve_secret(None, environ=env)
    assert (s.value, s.source) == (b"from-the-env-0123456789", f"env {SECRET_ENV}")
    with caplog.at_level("WARNING"):
        a, b = resolve_secret(None, environ={}), resolve_secret(None, environ={})
    assert a.source == RANDOM_SOURCE and a.value != b.value and len(a.value) >= 32
    assert "random" in caplog.text
    for v in (a.value, b.value):
        assert v.hex() not in caplog.text
    f.write_bytes(b" \n")
    with pytest.raises(ValueError, match="secret_file"):
        resolve_secret(str(f), environ=env)
    with pytest.raises(ValueError, match=SECRET_ENV):
        resolve_secret(None, environ={SECRET_ENV: ""})


# ---------------------------------------------------------------------------- per-person radius

def person_scene():
    h, w = 200, 120
    labels = np.zeros((h, w), np.int32)
    labels[20:180, 10:40] = 1  # 160 px tall
    labels[150:190, 80:95] = 2  # 40 px tall
    return h, w, labels, [160, 40]


def test_each_person_gets_its_own_radius():
    h, w, labels, heights = person_scene()
    p = AnonymizeParams(radius=0.1, min_radius=6, dilate=0, dissolve=0)
    res = anonymize(coded(h, w), labels, heights, p, rng(4))
    assert res.radii == [16, 6]  # ceil(0.1 x 160), max(6, ceil(0.1 x 40))
    assert np.array_equal(res.mask, labels > 0)
    sy, sx = sources(res.image)
    ys, xs = np.mgrid[0:h, 0:w]
    reach = np.maximum(np.abs(sy - ys), np.abs(sx - xs))
    for k, r in zip((1, 2), res.radii):
        assert reach[labels == k].max() == r, "the radius is a bound, and it is used"


def test_radius_modes():
    assert person_radii([100, 7], (300, 400), "person", 0.2, 4) == [20, 4]
    assert person_radii([100, 7], (300, 400), "pixels", 9, 4) == [9, 9]
    assert person_radii([100, 7], (300, 400), "image", 0.05, 4) == [15, 15]
    assert person_radii([0.1 * 3], (1, 1), "person", 1.0, 0) == [1]


def test_dilated_and_dissolved_pixels_take_their_persons_radius():
    h, w, labels, heights = person_scene()
    p = AnonymizeParams(radius=0.1, min_radius=6, dilate=3, dissolve=1.0)
    res = anonymize(coded(h, w), labels, heights, p, rng(6))
    grown = res.mask & (labels == 0)
    sy, sx = sources(res.image)
    ys, xs = np.mgrid[0:h, 0:w]
    reach = np.maximum(np.abs(sy - ys), np.abs(sx - xs))
    near_small = grown & (xs >= 70)  # person 2's side: only person 2 grows there
    assert near_small.any() and reach[near_small].max() <= 6
    assert reach[grown & (xs < 60)].max() > 6, "person 1's band uses person 1's radius (16)"


def test_dissolve_frays_the_outline():
    h, w = 200, 200
    labels = np.zeros((h, w), np.int32)
    labels[60:140, 90:110] = 1
    p = AnonymizeParams(radius=0.25, min_radius=0, dilate=2, dissolve=1.0)  # r = 20, band 20 px
    res = anonymize(np.zeros((h, w, 3), np.uint8), labels, [80], p, rng(7))
    sharp = anonymize(np.zeros((h, w, 3), np.uint8), labels, [80], AnonymizeParams(radius=0.25, min_radius=0, dilate=2, dissolve=0), rng(7))
    assert np.array_equal(sharp.mask, dilate_mask(labels > 0, 2))
    assert (res.mask >= sharp.mask).all(), "person and dilation ring are always changed"
    import cv2

    d = cv2.distanceTransform((labels == 0).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    inner = res.mask[(d > 2) & (d <= 12)].mean()
    outer = res.mask[(d > 12) & (d <= 22)].mean()
    assert inner > 0.45 and outer < inner - 0.25 and outer > 0.03, (inner, outer)
    assert not res.mask[d > 22 + 20 / 8 * 1.5].any(), "nothing beyond the band (plus one grid cell)"


# ---------------------------------------------------------------------------- dilation

def brute_dilate(mask: np.ndarray, n: int, wrap: bool) -> np.ndarray:
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    out = np.zeros_like(mask)
    gy, gx = np.mgrid[0:h, 0:w]
    for y, x in zip(ys, xs):
        dx = wrap_dist(gx, x, w) if wrap else np.abs(gx - x)
        out |= (gy - y) ** 2 + dx**2 <= n * n
    return out


@FAST
@given(sizes, st.integers(0, 12), st.booleans(), st.data())
def test_dilation_grows_by_exactly_n_euclidean(size, n, wrap, data):
    mask = data.draw(hnp.arrays(np.bool_, size, elements=st.sampled_from([False] * 6 + [True])))
    assert np.array_equal(dilate_mask(mask, n, wrap=wrap), brute_dilate(mask, n, wrap))


def test_dilation_is_a_disk():
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    grown = dilate_mask(mask, 5)
    assert grown[10, 15] and grown[13, 14] and not grown[14, 14] and not grown[10, 16]


# ---------------------------------------------------------------------------- other modes

def test_pixelate_fills_blocks_with_their_mean_and_fill_paints():
    image = np.random.default_rng(8).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    mask = np.zeros((12, 12), bool)
    mask[2:10, 1:11] = True
    out = apply_mode("pixelate", image, mask, 4, rng())
    for by in range(0, 12, 4):
        for bx in range(0, 12, 4):
            block = (slice(by, by + 4), slice(bx, bx + 4))
            m = mask[block]
            mean = np.floor(image[block].reshape(-1, 3).astype(float).mean(0) + 0.5)
            assert (out[block][m] == mean.astype(np.uint8)).all()
    out = apply_mode("fill", image, mask, 4, rng(), fill_color=(10, 20, 30))
    assert (out[mask] == (10, 20, 30)).all()


def test_blur_smooths_only_the_mask():
    image = np.zeros((40, 40, 3), np.uint8)
    image[::2, :] = 255  # stripes
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = apply_mode("blur", image, mask, 8, rng())
    assert out[mask].std() < 0.1 * image[mask].std()
    flat = np.full((40, 40, 3), 77, np.uint8)
    assert (apply_mode("blur", flat, mask, 8, rng()) == 77).all()


# ---------------------------------------------------------------------------- entry points

def test_bare_mask_works_through_components():
    mask = np.zeros((50, 40), bool)
    mask[5:45, 5:12] = True
    mask[10:20, 30:35] = True
    labels, heights = labels_from_mask(mask)
    assert labels.dtype == np.int32 and sorted(heights) == [10, 40]
    res = anonymize_mask(coded(50, 40), mask, AnonymizeParams(dilate=0, dissolve=0), rng())
    assert sorted(res.radii) == [4, 8] and np.array_equal(res.mask, mask)


def test_modes_and_params_line_up_with_the_run_config():
    from pipeline.config import MODES as CLI_MODES, RunConfig

    assert sorted(MODES) == sorted(CLI_MODES), "every --mode choice has exactly one implementation"
    cfg = RunConfig(input="in/", output="out/", mode="pixelate", radius=0.3, dilate=5, dissolve=0.25)
    p = AnonymizeParams.from_config(cfg)
    assert (p.mode, p.radius, p.dilate, p.dissolve, p.fill_color) == ("pixelate", 0.3, 5, 0.25, cfg.fill_color)


def test_no_people_changes_nothing():
    image = np.random.default_rng(9).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    res = anonymize(image, np.zeros((30, 30), np.int32), [], AnonymizeParams(), rng())
    assert np.array_equal(res.image, image) and not res.mask.any() and res.radii == []


def test_panorama_dilation_and_dissolve_cross_the_seam():
    labels = np.zeros((60, 80), np.int32)
    labels[20:40, 0:3] = 1
    p = AnonymizeParams(radius=0.5, min_radius=0, dilate=2, dissolve=1.0)
    res = anonymize(np.zeros((60, 80, 3), np.uint8), labels, [20], p, rng(), wrap=True)
    assert res.mask[30, 78] and res.mask[30, 79], "the dilation ring wraps"
    assert res.mask[:, 60:78].any(), "the dissolve band wraps"
    flat = anonymize(np.zeros((60, 80, 3), np.uint8), labels, [20], p, rng(), wrap=False)
    assert not flat.mask[:, 40:].any()


@pytest.mark.parametrize("call, name", [
    (lambda: shuffle_pixels(np.zeros((4, 4, 3), np.float32), np.ones((4, 4), bool), 1, rng()), "image"),
    (lambda: shuffle_pixels(np.zeros((4, 4), np.uint8), np.ones((4, 4), bool), 1, rng()), "image"),
    (lambda: shuffle_pixels(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.uint8), 1, rng()), "mask"),
    (lambda: shuffle_pixels(np.zeros((4, 4, 3), np.uint8), np.ones((4, 5), bool), 1, rng()), "mask"),
    (lambda: shuffle_pixels(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), -1, rng()), "radius"),
    (lambda: shuffle_pixels(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), np.full((4, 4), -2), rng()), "radius"),
    (lambda: shuffle_pixels(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), np.ones((4, 4)), rng()), "radius"),
    (lambda: shuffle_pixels(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), np.ones((3, 4), int), rng()), "radius"),
    (lambda: shuffle_pixels(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), 1, 42), "rng"),
    (lambda: anonymize(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), float), [], AnonymizeParams(), rng()), "labels"),
    (lambda: anonymize(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4), np.int32), [], AnonymizeParams(), rng()), "labels"),
    (lambda: anonymize(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 2, np.int32), [3], AnonymizeParams(), rng()), "labels"),
    (lambda: anonymize(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 2**40, np.int64), [3], AnonymizeParams(), rng()), "labels"),
    (lambda: anonymize(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.int32), [-5], AnonymizeParams(), rng()), "heights"),
    (lambda: anonymize(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.int32), ["tall"], AnonymizeParams(), rng()), "heights"),
    (lambda: AnonymizeParams(radius=-0.1), "radius"),
    (lambda: AnonymizeParams(mode="smear"), "mode"),
    (lambda: AnonymizeParams(dilate=-1), "dilate"),
    (lambda: AnonymizeParams(fill_color=(1, 2, 300)), "fill_color"),
    (lambda: dilate_mask(np.ones((4, 4), bool), -1), "n"),
    (lambda: dilate_mask(np.ones((4, 4), np.uint8), 1), "mask"),
    (lambda: keyed_rng(b"", "k"), "secret"),
])
def test_bad_arguments_raise_value_error_naming_them(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


# ---------------------------------------------------------------------------- real photos

def dev_photos(n: int):
    if not DEV.is_dir():
        pytest.skip(f"shared dev data not found at {DEV} (see ../shared/README.md)")
    from PIL import Image

    for path in sorted((DEV / "images").glob("*.png"))[:n]:
        image = np.asarray(Image.open(path).convert("RGB"))
        labels = np.asarray(Image.open(DEV / "masks" / f"{path.stem}_mask.png")).astype(np.int32)
        rows = [np.nonzero((labels == k).any(axis=1))[0] for k in range(1, labels.max() + 1)]
        yield path.stem, image, labels, [int(r[-1] - r[0] + 1) if len(r) else 0 for r in rows]


def test_dev_photos_every_person_pixel_changes_and_nothing_far_away():
    import cv2

    p = AnonymizeParams()
    for name, image, labels, heights in dev_photos(6):
        res = anonymize(image, labels, heights, p, keyed_rng(b"test-secret-0123456789", name))
        person = labels > 0
        assert res.mask[person].all(), name
        assert np.array_equal(res.image[~res.mask], image[~res.mask]), name
        # person pixels mostly really change (a pixel keeps its value ~ 1/window of the time)
        assert (res.image[person] != image[person]).any(axis=1).mean() > 0.8, name
        d = cv2.distanceTransform((~person).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        r_max = max(res.radii)
        limit = p.dilate + p.dissolve * r_max * (1 + 1.5 / 8) + 1
        assert d[res.mask].max() <= limit, name
        assert res.radii == [max(p.min_radius, math.ceil(p.radius * h - 1e-9)) for h in heights]
