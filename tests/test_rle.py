"""pipeline/rle.py: COCO compressed RLE, checked against pycocotools (the reader of our output)."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as coco
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline import rle

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def coco_encode(mask: np.ndarray) -> dict:
    return coco.encode(np.asfortranarray(mask.astype(np.uint8)))


def check(mask: np.ndarray) -> None:
    mask = np.asarray(mask, dtype=bool)
    ours = rle.encode(mask)
    theirs = coco_encode(mask)
    assert ours["size"] == [mask.shape[0], mask.shape[1]] == list(theirs["size"])
    assert isinstance(ours["counts"], str)
    assert ours["counts"] == theirs["counts"].decode("ascii")  # byte-identical to pycocotools
    np.testing.assert_array_equal(rle.decode(ours), mask)  # our round trip
    np.testing.assert_array_equal(coco.decode({"size": ours["size"], "counts": ours["counts"].encode()}), mask)
    np.testing.assert_array_equal(rle.decode(theirs), mask)  # we read theirs (bytes counts)
    assert rle.area(ours) == rle.area(theirs) == int(coco.area(theirs)) == int(mask.sum())


@SETTINGS
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)))
def test_random_masks_match_pycocotools(mask):
    check(mask)


@st.composite
def run_masks(draw):
    """Masks made of long runs (column-major), so counts are large and their deltas change
    sign: the paths of the 5-bit delta code that short random runs never reach."""
    h = draw(st.integers(1, 300))
    w = draw(st.integers(1, 300))
    total = h * w
    value, flat = draw(st.booleans()), np.zeros(total, bool)
    pos = 0
    while pos < total:
        n = min(total - pos, draw(st.integers(1, max(1, total // 3))))
        flat[pos:pos + n] = value
        value = not value
        pos += n
    return flat.reshape((h, w), order="F")


@SETTINGS
@given(run_masks())
def test_masks_of_long_runs_match_pycocotools(mask):
    check(mask)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (13, 9), (480, 640)])
def test_empty_and_full_masks(shape):
    check(np.zeros(shape, bool))
    check(np.ones(shape, bool))


def test_single_pixel_corners():
    for y, x in ((0, 0), (0, 8), (5, 0), (5, 8)):
        m = np.zeros((6, 9), bool)
        m[y, x] = True
        check(m)


def test_a_large_photo_sized_mask():
    m = np.zeros((3000, 4000), bool)
    m[100:2900, 1000:1200] = True      # a tall person: long runs
    m[2000:2010, 3990:4000] = True     # at the right edge
    m[::997, ::991] = True             # isolated pixels
    check(m)


def test_truthy_non_bool_masks_encode_like_bool():
    m = np.array([[0, 3, 0], [255, 0, 1]], np.uint8)
    assert rle.encode(m) == rle.encode(m.astype(bool))
    check(m.astype(bool))


def test_decode_refuses_counts_that_do_not_fill_the_size():
    good = rle.encode(np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="sum to 20, expected 24"):
        rle.decode({"size": [4, 6], "counts": good["counts"]})
