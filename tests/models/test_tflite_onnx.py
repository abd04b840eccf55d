"""Our TFLite -> ONNX converter and the selfie model it produces.

Parity: the fixture ``tests/fixtures/selfie_parity.npz`` holds the names and input hashes of 10
dev images (resized once to 256x256 uint8 RGB; the photos are rebuilt from ../shared, never copied
into the repo) and MediaPipe's own confidence maps for them (float16), recorded by ``scripts/parity_selfie.py``
in a throwaway venv; mediapipe is not installed here. The selfie model itself is fetched from the
mediapipe wheel on PyPI by ``prepare_selfie`` (network to PyPI needed once; then cached).

A broken conversion (wrong SAME padding, wrong weight layout, sizes instead of scales) shows as a
max error near 1 while the mean stays ~0.01: the gate is on the max abs difference.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pipeline.models import fetch, selfie
from pipeline.models.fetch import ModelError
from pipeline.models.selfie import SELFIE, prepare_selfie
from pipeline.models.tflite_onnx import UnsupportedOpError, convert_bytes, same_pads

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "selfie_parity.npz"
MAX_ABS = 1e-3


def _session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def selfie_tflite() -> Path:
    """The verified TFLite file in the real cache (fetched from PyPI on first use)."""
    return fetch.wheel_member(SELFIE["package"], SELFIE["version"], SELFIE["member"],
                              SELFIE["sha256"])


@pytest.fixture(scope="module")
def selfie_onnx(selfie_tflite) -> Path:
    return prepare_selfie()


@pytest.fixture(scope="module")
def selfie_session(selfie_onnx) -> ort.InferenceSession:
    return _session(str(selfie_onnx))


DEV_IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "pennfudan-dev" / "images"


def _load_256(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((256, 256), Image.BILINEAR), dtype=np.uint8).copy()


@pytest.fixture(scope="module")
def parity() -> dict:
    with np.load(FIXTURE) as f:
        d = {k: f[k] for k in f.files}
    if not DEV_IMAGES.is_dir():
        pytest.skip(f"dev photos not found at {DEV_IMAGES} (../shared/data/pennfudan-dev): parity inputs are rebuilt from them")
    images = np.stack([_load_256(DEV_IMAGES / str(n)) for n in d["names"]])
    got = [hashlib.sha256(i.tobytes()).hexdigest() for i in images]
    assert got == [str(h) for h in d["input_sha256"]], "rebuilt parity inputs differ from the recorded ones (PIL resize changed?)"
    d["images"] = images
    return d


# ---- the selfie model -------------------------------------------------------------------------

def test_contract_is_nhwc_with_dynamic_batch(selfie_onnx):
    model = onnx.load(str(selfie_onnx))
    (inp,), (out,) = model.graph.input, model.graph.output

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert (inp.name, dims(inp)) == ("image", ["N", 256, 256, 3])
    assert (out.name, dims(out)) == ("person", ["N", 256, 256, 1])
    for v in (inp, out):
        assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 14
    ops = {n.op_type for n in model.graph.node}
    assert {"ConvTranspose", "HardSwish", "GlobalAveragePool", "Resize"} <= ops
    assert all(n.op_type != "Resize" or n.input[-1].endswith("/scales") for n in model.graph.node)


def test_parity_with_mediapipe(selfie_session, parity):
    images = parity["images"]
    assert images.shape[0] >= 10 and images.shape[1:] == (256, 256, 3)
    want = parity["masks"].astype(np.float32)
    got = np.concatenate(
        [selfie_session.run(["person"], {"image": img[None].astype(np.float32) / 255})[0]
         for img in images]
    )
    assert got.shape == (len(images), 256, 256, 1) and got.dtype == np.float32
    diff = np.abs(got[..., 0] - want)
    per_image = diff.reshape(len(images), -1).max(axis=1)
    worst = int(per_image.argmax())
    assert diff.max() <= MAX_ABS, (
        f"max abs diff {diff.max():.2e} > {MAX_ABS} (worst {parity['names'][worst]}), "
        f"mean {diff.mean():.2e}"
    )


def test_dynamic_batch_equals_singles(selfie_session, parity):
    x = parity["images"][:3].astype(np.float32) / 255
    batch = selfie_session.run(["person"], {"image": x})[0]
    singles = np.concatenate([selfie_session.run(["person"], {"image": x[i:i + 1]})[0]
                              for i in range(3)])
    assert batch.shape == (3, 256, 256, 1)
    np.testing.assert_allclose(batch, singles, atol=1e-5, rtol=0)


def test_conversion_is_deterministic(selfie_onnx, selfie_tflite):
    data = selfie_tflite.read_bytes()
    first = convert_bytes(data)
    assert convert_bytes(data) == first
    assert fetch.sha256_bytes(first) == selfie.onnx_sha256(selfie_onnx)


# ---- prepare_selfie: cache, sidecar, sha256 ---------------------------------------------------

@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FUZZY_PEOPLE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_prepare_is_idempotent_and_records_sha256(selfie_tflite, tmp_cache, monkeypatch):
    # Seed the temporary cache with the verified TFLite file: no network here.
    seeded = tmp_cache / "wheels" / f"mediapipe-{SELFIE['version']}" / SELFIE["member"]
    seeded.parent.mkdir(parents=True)
    shutil.copyfile(selfie_tflite, seeded)

    def no_download(*args, **kwargs):
        raise AssertionError("prepare_selfie downloaded although the cache was good")

    monkeypatch.setattr(fetch, "download_wheel", no_download)
    messages: list[str] = []
    path = prepare_selfie(messages.append)
    assert path == tmp_cache / "models" / "selfie_segmentation.onnx"
    digest = fetch.sha256_file(path)
    sidecar = path.with_name(path.name + ".sha256")
    assert sidecar.read_text().splitlines()[0] == f"{digest}  {path.name}"
    assert selfie.onnx_sha256(path) == digest
    assert any("converting" in m for m in messages)

    messages.clear()
    mtime = path.stat().st_mtime_ns
    assert prepare_selfie(messages.append) == path
    assert messages == [] and path.stat().st_mtime_ns == mtime

    path.write_bytes(b"not a model")  # a damaged cache is redone
    assert prepare_selfie(messages.append) == path
    assert fetch.sha256_file(path) == digest
    assert not list(path.parent.glob("*.part"))


def test_wrong_sha256_raises_model_error(tmp_cache, monkeypatch):
    member = SELFIE["member"]

    def fake_download(package, version, dest, progress):
        wheel = Path(dest) / f"{package}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, b"tampered model bytes")
        return wheel

    monkeypatch.setattr(fetch, "download_wheel", fake_download)
    with pytest.raises(ModelError, match="sha256 mismatch") as err:
        prepare_selfie(lambda msg: None)
    assert SELFIE["sha256"] in str(err.value) and member in str(err.value)
    assert not (tmp_cache / "models" / "selfie_segmentation.onnx").exists()
    assert not (tmp_cache / "wheels" / f"mediapipe-{SELFIE['version']}" / member).exists()


# ---- tiny TFLite models built here ------------------------------------------------------------

def _tfl_module(name: str):
    """The generated module ``tflite.NAME`` (``tflite.NAME`` itself is the class)."""
    return importlib.import_module(f"tflite.{name}")


def _vec(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def tiny_tflite(tensors, ops, inputs, outputs) -> bytes:
    """A one-subgraph TFLite flatbuffer.

    ``tensors``: ``(name, shape, value or None)``, float32; ``ops``: ``(op, inputs, outputs,
    options)`` where ``op`` is a BuiltinOperator name or a custom code and ``options`` is
    ``None`` or ``(BuiltinOptions member name, fn(builder) -> offset)``.
    """
    Buffer, Model, Operator, OperatorCode, SubGraph, Tensor = map(
        _tfl_module, ["Buffer", "Model", "Operator", "OperatorCode", "SubGraph", "Tensor"])
    from tflite.BuiltinOperator import BuiltinOperator
    from tflite.BuiltinOptions import BuiltinOptions

    b = flatbuffers.Builder(1024)
    buffers = []
    for value in [None] + [t[2] for t in tensors]:
        data = None
        if value is not None:
            data = b.CreateNumpyVector(np.frombuffer(
                np.ascontiguousarray(value, np.float32).tobytes(), np.uint8))
        Buffer.BufferStart(b)
        if data is not None:
            Buffer.BufferAddData(b, data)
        buffers.append(Buffer.BufferEnd(b))
    tensor_offs = []
    for i, (name, shape, value) in enumerate(tensors):
        name_off = b.CreateString(name)
        shape_off = b.CreateNumpyVector(np.array(shape, np.int32))
        Tensor.TensorStart(b)
        Tensor.TensorAddShape(b, shape_off)
        Tensor.TensorAddType(b, 0)  # FLOAT32
        Tensor.TensorAddBuffer(b, i + 1)
        Tensor.TensorAddName(b, name_off)
        tensor_offs.append(Tensor.TensorEnd(b))
    names = sorted({op[0] for op in ops})
    code_offs = []
    for name in names:
        builtin = getattr(BuiltinOperator, name, None)
        custom = None if builtin is not None else b.CreateString(name)
        OperatorCode.OperatorCodeStart(b)
        code = BuiltinOperator.CUSTOM if builtin is None else builtin
        OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        OperatorCode.OperatorCodeAddBuiltinCode(b, code)
        if custom is not None:
            OperatorCode.OperatorCodeAddCustomCode(b, custom)
        OperatorCode.OperatorCodeAddVersion(b, 1)
        code_offs.append(OperatorCode.OperatorCodeEnd(b))
    op_offs = []
    for name, ins, outs, options in ops:
        ins_off = b.CreateNumpyVector(np.array(ins, np.int32))
        outs_off = b.CreateNumpyVector(np.array(outs, np.int32))
        opt = (getattr(BuiltinOptions, options[0]), options[1](b)) if options else None
        Operator.OperatorStart(b)
        Operator.OperatorAddOpcodeIndex(b, names.index(name))
        Operator.OperatorAddInputs(b, ins_off)
        Operator.OperatorAddOutputs(b, outs_off)
        if opt:
            Operator.OperatorAddBuiltinOptionsType(b, opt[0])
            Operator.OperatorAddBuiltinOptions(b, opt[1])
        op_offs.append(Operator.OperatorEnd(b))
    t_vec, o_vec = _vec(b, tensor_offs), _vec(b, op_offs)
    in_vec = b.CreateNumpyVector(np.array(inputs, np.int32))
    out_vec = b.CreateNumpyVector(np.array(outputs, np.int32))
    SubGraph.SubGraphStart(b)
    SubGraph.SubGraphAddTensors(b, t_vec)
    SubGraph.SubGraphAddInputs(b, in_vec)
    SubGraph.SubGraphAddOutputs(b, out_vec)
    SubGraph.SubGraphAddOperators(b, o_vec)
    subgraph = SubGraph.SubGraphEnd(b)
    codes_vec, sub_vec, buf_vec = _vec(b, code_offs), _vec(b, [subgraph]), _vec(b, buffers)
    Model.ModelStart(b)
    Model.ModelAddVersion(b, 3)
    Model.ModelAddOperatorCodes(b, codes_vec)
    Model.ModelAddSubgraphs(b, sub_vec)
    Model.ModelAddBuffers(b, buf_vec)
    b.Finish(Model.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.parametrize("op", ["SOFTMAX", "MyFancyCustomOp"])
def test_unknown_op_is_named(op):
    data = tiny_tflite(
        [("x", [1, 4, 4, 3], None), ("y", [1, 4, 4, 3], None)],
        [(op, [0], [1], None)], [0], [1],
    )
    with pytest.raises(UnsupportedOpError, match=op) as err:
        convert_bytes(data)
    assert isinstance(err.value, ModelError) and err.value.op == op


def test_unknown_op_in_the_real_model_is_named(selfie_tflite):
    """Patch the real model's HARD_SWISH op code to SOFTMAX: the error names SOFTMAX."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    data = bytearray(selfie_tflite.read_bytes())
    model = tflite.Model.GetRootAsModel(data, 0)
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == BuiltinOperator.HARD_SWISH:
            tab = code._tab
            for slot in (4, 10):  # deprecated_builtin_code (int8), builtin_code (int32)
                off = tab.Offset(slot)
                if off:
                    data[tab.Pos + off] = BuiltinOperator.SOFTMAX
    with pytest.raises(UnsupportedOpError, match="SOFTMAX"):
        convert_bytes(bytes(data))


def test_same_pads_put_the_extra_pixel_at_the_end():
    assert same_pads(256, 3, 2) == (0, 1)
    assert same_pads(32, 5, 2) == (1, 2)
    assert same_pads(16, 5, 1) == (2, 2)
    assert same_pads(7, 3, 2) == (1, 1)
    assert same_pads(64, 1, 1) == (0, 0)


def _conv_options(padding: int, stride: int, act: int):
    C = _tfl_module("Conv2DOptions")

    def build(b):
        C.Conv2DOptionsStart(b)
        C.Conv2DOptionsAddPadding(b, padding)
        C.Conv2DOptionsAddStrideW(b, stride)
        C.Conv2DOptionsAddStrideH(b, stride)
        C.Conv2DOptionsAddFusedActivationFunction(b, act)
        C.Conv2DOptionsAddDilationWFactor(b, 1)
        C.Conv2DOptionsAddDilationHFactor(b, 1)
        return C.Conv2DOptionsEnd(b)

    return ("Conv2DOptions", build)


def _binary_options(kind: str, act: int):
    mod = _tfl_module(f"{kind}Options")

    def build(b):
        getattr(mod, f"{kind}OptionsStart")(b)
        getattr(mod, f"{kind}OptionsAddFusedActivationFunction")(b, act)
        return getattr(mod, f"{kind}OptionsEnd")(b)

    return (f"{kind}Options", build)


def _ref_conv_same(x, w, bias, stride):
    """NHWC x [H,W,C], OHWI w; TF SAME padding written out independently of the converter."""
    h, wd, _ = x.shape
    kh, kw = w.shape[1:3]
    oh, ow = -(-h // stride), -(-wd // stride)
    ph, pw = max((oh - 1) * stride + kh - h, 0), max((ow - 1) * stride + kw - wd, 0)
    xp = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.empty((oh, ow, w.shape[0]), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[i, j] = np.tensordot(w, patch, axes=([1, 2, 3], [0, 1, 2])) + bias
    return out


def test_fused_activations_and_constant_operands():
    """CONV_2D SAME stride 2 (odd and even sides) + RELU, then MUL/ADD by constants + RELU6."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    scale = rng.uniform(0.5, 3, size=4).astype(np.float32)
    shift = np.array([-1.0, 0.5, -0.5, 1.0], np.float32).reshape(1, 1, 4)
    tensors = [
        ("x", [1, 7, 8, 3], None), ("w", [4, 3, 3, 3], w), ("b", [4], bias),
        ("conv", [1, 4, 4, 4], None), ("scale", [4], scale), ("mul", [1, 4, 4, 4], None),
        ("shift", [1, 1, 4], shift), ("y", [1, 4, 4, 4], None),
    ]
    ops = [
        ("CONV_2D", [0, 1, 2], [3], _conv_options(padding=0, stride=2, act=1)),  # SAME, RELU
        ("MUL", [4, 3], [5], _binary_options("Mul", act=0)),  # constant first
        ("ADD", [5, 6], [7], _binary_options("Add", act=3)),  # RELU6
    ]
    onnx_bytes = convert_bytes(tiny_tflite(tensors, ops, [0], [7]))
    sess = _session(onnx_bytes)
    x = rng.normal(size=(2, 7, 8, 3)).astype(np.float32)
    got = sess.run(["person"], {"image": x})[0]
    want = np.stack([
        np.clip(np.maximum(_ref_conv_same(xi, w, bias, 2), 0) * scale + shift, 0, 6) for xi in x
    ])
    assert got.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert 0 < (want == 6).sum() and 0 < (want == 0).sum()  # both clip ends are exercised
