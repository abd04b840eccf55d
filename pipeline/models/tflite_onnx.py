"""A small TFLite -> ONNX converter of our own, for the float image models we ship.

It reads the TFLite flatbuffer with the pure-Python ``tflite`` package and writes ONNX with
``onnx.helper``. Scope: single-subgraph float32 models with one NHWC image input and one NHWC
output, built from the ops in ``SUPPORTED_OPS`` (MediaPipe's selfie segmentation among them).
Any other op raises :class:`UnsupportedOpError`, naming the op.

Layout: the ONNX model keeps the TFLite contract on the outside (NHWC input ``[N,H,W,C]`` and
output ``[N,H',W',C']``, batch dimension dynamic) and computes NCHW inside: one Transpose after
the input, one before the output. Every activation inside the graph must be 4-D.

Things a naive conversion gets wrong (each measured on the selfie model, each worth ~1 max abs
error on the probability map while the mean error stays small):

* TF's SAME padding is asymmetric when the total is odd: the extra pad goes at the end
  (stride-2 3x3 on an even map pads [0, 1]). Pads are computed explicitly per op, never
  ``auto_pad=SAME_*``.
* Two padding enums: the TFLite schema says SAME=0, VALID=1; MediaPipe's custom op
  ``Convolution2DTransposeBias`` says 1=SAME, 2=VALID.
* RESIZE_BILINEAR with half_pixel_centers maps to ``Resize(mode=linear,
  coordinate_transformation_mode=half_pixel)`` with ``scales``: ``sizes`` would freeze the batch.
* Weight layouts: conv OHWI -> OIHW is ``transpose(0, 3, 1, 2)``; depthwise ``[1,H,W,C*M]`` ->
  ``[C*M,1,H,W]`` with ``group=C``; the transposed conv's OHWI -> ``[I,O,H,W]`` is
  ``transpose(3, 0, 1, 2)`` (not flipped).

Conversion is deterministic: the same TFLite bytes give the same ONNX bytes.
"""

from __future__ import annotations

import struct
from typing import Callable

import numpy as np

from .fetch import ModelError, sha256_bytes

# Bump when the ONNX emitted for a given model changes: cached conversions are then redone.
CONVERTER_VERSION = "1"
DEFAULT_OPSET = 17
# ONNX IR version 8 goes with opset 17 and loads in every onnxruntime >= 1.17 we support.
IR_VERSION = 8

# TFLite schema enums (tensorflow/lite/schema/schema.fbs).
_PAD_SAME, _PAD_VALID = 0, 1
_ACT_NONE, _ACT_RELU, _ACT_RELU_N1_TO_1, _ACT_RELU6 = 0, 1, 2, 3
_CUSTOM = 32

_TENSOR_DTYPES = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    6: np.bool_,
    7: np.int16,
    9: np.int8,
    10: np.float64,
}


class UnsupportedOpError(ModelError):
    """The TFLite model uses an op (or an op variant) the converter does not handle."""

    def __init__(self, op: str, detail: str = ""):
        self.op = op
        msg = f"TFLite op {op} is not supported by the fuzzy-people TFLite->ONNX converter"
        super().__init__(msg + (f": {detail}" if detail else ""))


def _builtin_names() -> dict[int, str]:
    from tflite.BuiltinOperator import BuiltinOperator

    return {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}


def _options(op: str, o, cls, required: bool = True):
    """The operator's builtin options as ``cls``; None (or an error) when it has none."""
    table = o.BuiltinOptions()
    if table is None:
        if required:
            raise UnsupportedOpError(op, "no builtin options")
        return None
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF SAME padding (begin, end) for one spatial axis: the extra pixel goes at the end."""
    out = -(-size // stride)
    effective = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class _Converter:
    def __init__(self, data: bytes, input_name: str, output_name: str, opset: int):
        import tflite

        if opset < 14:
            raise ModelError(f"opset {opset} is too old: HardSwish needs opset >= 14")
        self.data = bytes(data)
        try:
            self.model = tflite.Model.GetRootAsModel(self.data, 0)
            n_subgraphs = self.model.SubgraphsLength()
        except Exception as exc:  # a truncated or foreign file
            raise ModelError(f"not a TFLite flatbuffer: {exc}") from None
        if n_subgraphs != 1:
            raise ModelError(f"expected a TFLite model with 1 subgraph, found {n_subgraphs}")
        self.g = self.model.Subgraphs(0)
        self.input_name, self.output_name, self.opset = input_name, output_name, opset
        self.op_names = _builtin_names()
        self.consts: dict[int, np.ndarray] = {}  # tensor index -> value, TFLite layout
        self.names: dict[int, str] = {}  # tensor index -> ONNX name of the NCHW activation
        self.nodes: list = []
        self.initializers: list = []
        self._used: set[str] = set()

    # ---- tensors -------------------------------------------------------------------------
    def tensor(self, idx: int):
        return self.g.Tensors(idx)

    def shape(self, idx: int) -> list[int]:
        t = self.tensor(idx)
        return [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []

    def tname(self, idx: int) -> str:
        return (self.tensor(idx).Name() or b"").decode("utf-8", "replace")

    def buffer_value(self, idx: int) -> np.ndarray | None:
        t = self.tensor(idx)
        buf = self.model.Buffers(t.Buffer())
        if buf is None:
            return None
        if buf.DataLength() > 0:
            raw = buf.DataAsNumpy().tobytes()
        elif buf.Offset() > 1:  # large models keep buffers after the flatbuffer
            raw = self.data[buf.Offset() : buf.Offset() + buf.Size()]
        else:
            return None
        dtype = _TENSOR_DTYPES.get(t.Type())
        if dtype is None:
            raise ModelError(f"tensor '{self.tname(idx)}' has unsupported TFLite type {t.Type()}")
        return np.frombuffer(raw, dtype=dtype).reshape(self.shape(idx)).copy()

    def const(self, idx: int) -> np.ndarray | None:
        if idx in self.consts:
            return self.consts[idx]
        value = self.buffer_value(idx)
        if value is not None:
            self.consts[idx] = value
        return value

    def unique(self, hint: str) -> str:
        base = "".join(c if c.isalnum() or c in "_./:-" else "_" for c in hint) or "t"
        name, k = base, 1
        while name in self._used:
            k += 1
            name = f"{base}__{k}"
        self._used.add(name)
        return name

    def initializer(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.unique(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def act(self, idx: int, op: str) -> str:
        """ONNX name of activation tensor ``idx`` (NCHW); constants are not activations."""
        if idx in self.names:
            return self.names[idx]
        if self.const(idx) is not None:
            raise UnsupportedOpError(op, f"constant input tensor '{self.tname(idx)}'")
        raise ModelError(f"{op}: input tensor '{self.tname(idx)}' is produced by no earlier op")

    def weight(self, idx: int, op: str) -> np.ndarray:
        value = self.const(idx)
        if value is None:
            raise UnsupportedOpError(op, f"non-constant weights '{self.tname(idx)}'")
        return value.astype(np.float32)

    def node(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def out_name(self, idx: int) -> str:
        if len(self.shape(idx)) != 4:
            raise ModelError(
                f"tensor '{self.tname(idx)}' has shape {self.shape(idx)}: the converter "
                "handles 4-D (NHWC) activations only"
            )
        name = self.unique(self.tname(idx) or f"t{idx}")
        self.names[idx] = name
        return name

    def fused(self, op: str, act: int, result_idx: int, emit: Callable[[str], None]) -> None:
        """Emit the op into a temporary (when an activation is fused) then the activation."""
        final = self.out_name(result_idx)
        if act == _ACT_NONE:
            emit(final)
            return
        tmp = self.unique(final + "/pre_act")
        emit(tmp)
        if act == _ACT_RELU:
            self.node("Relu", [tmp], final)
        elif act in (_ACT_RELU6, _ACT_RELU_N1_TO_1):
            lo, hi = (0.0, 6.0) if act == _ACT_RELU6 else (-1.0, 1.0)
            lo_n = self.initializer(final + "/clip_min", np.array(lo, np.float32))
            hi_n = self.initializer(final + "/clip_max", np.array(hi, np.float32))
            self.node("Clip", [tmp, lo_n, hi_n], final)
        else:
            raise UnsupportedOpError(op, f"fused activation {act}")

    # ---- ops -----------------------------------------------------------------------------
    def conv_pads(self, op, padding, in_hw, k_hw, strides, dil) -> list[int]:
        if padding == _PAD_VALID:
            return [0, 0, 0, 0]
        if padding != _PAD_SAME:
            raise UnsupportedOpError(op, f"padding {padding}")
        (t, b), (l, r) = (same_pads(in_hw[i], k_hw[i], strides[i], dil[i]) for i in (0, 1))
        return [t, l, b, r]

    def op_conv(self, op: str, o, ins, outs) -> None:
        from tflite.Conv2DOptions import Conv2DOptions
        from tflite.DepthwiseConv2DOptions import DepthwiseConv2DOptions

        depthwise = op == "DEPTHWISE_CONV_2D"
        opts = _options(op, o, DepthwiseConv2DOptions if depthwise else Conv2DOptions)
        x = self.act(ins[0], op)
        _, h, w, c_in = self.shape(ins[0])
        wt = self.weight(ins[1], op)
        if depthwise:  # [1, kh, kw, C*M] -> [C*M, 1, kh, kw], one group per input channel
            weights, group = wt[0].transpose(2, 0, 1)[:, None], c_in
        else:  # OHWI -> OIHW (grouped when the kernel has fewer input channels)
            weights, group = wt.transpose(0, 3, 1, 2), c_in // wt.shape[3]
        k_hw = list(weights.shape[2:])
        strides = [opts.StrideH(), opts.StrideW()]
        dil = [opts.DilationHFactor() or 1, opts.DilationWFactor() or 1]
        inputs = [x, self.initializer(f"{self.tname(ins[1])}/oihw", weights)]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.initializer(f"{self.tname(ins[2])}/bias", self.weight(ins[2], op)))
        attrs = dict(
            kernel_shape=k_hw,
            strides=strides,
            dilations=dil,
            group=group,
            pads=self.conv_pads(op, opts.Padding(), (h, w), k_hw, strides, dil),
        )
        self.fused(op, opts.FusedActivationFunction(), outs[0],
                   lambda y: self.node("Conv", inputs, y, **attrs))

    def op_pool(self, op: str, o, ins, outs) -> None:
        from tflite.Pool2DOptions import Pool2DOptions

        opts = _options(op, o, Pool2DOptions)
        x = self.act(ins[0], op)
        _, h, w, _ = self.shape(ins[0])
        k_hw = [opts.FilterHeight(), opts.FilterWidth()]
        strides = [opts.StrideH(), opts.StrideW()]
        padding = opts.Padding()
        onnx_op = "AveragePool" if op == "AVERAGE_POOL_2D" else "MaxPool"
        if k_hw == [h, w] and (padding == _PAD_VALID or (h, w) == (1, 1)):
            emit = lambda y: self.node("Global" + onnx_op, [x], y)  # noqa: E731
        else:
            pads = self.conv_pads(op, padding, (h, w), k_hw, strides, [1, 1])
            # TFLite averages over the in-bounds pixels only: count_include_pad=0 (the default).
            emit = lambda y: self.node(onnx_op, [x], y, kernel_shape=k_hw,  # noqa: E731
                                       strides=strides, pads=pads)
        self.fused(op, opts.FusedActivationFunction(), outs[0], emit)

    def op_binary(self, op: str, o, ins, outs) -> None:
        from tflite.AddOptions import AddOptions
        from tflite.MulOptions import MulOptions

        opts = _options(op, o, AddOptions if op == "ADD" else MulOptions, required=False)
        act = opts.FusedActivationFunction() if opts else _ACT_NONE
        operands = []
        for idx in ins[:2]:
            if idx in self.names:
                operands.append(self.names[idx])
                continue
            value = self.const(idx)
            if value is None:
                self.act(idx, op)  # raises: neither an activation nor a constant
            # A constant operand broadcasts against NHWC: pad it to 4-D, then make it NCHW.
            value = value.astype(np.float32)
            if value.ndim > 4:
                raise UnsupportedOpError(op, f"{value.ndim}-D constant operand")
            value = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(0, 3, 1, 2)
            operands.append(self.initializer(f"{self.tname(idx)}/nchw", value))
        onnx_op = "Add" if op == "ADD" else "Mul"
        self.fused(op, act, outs[0], lambda y: self.node(onnx_op, operands, y))

    def op_resize(self, op: str, o, ins, outs) -> None:
        from tflite.ResizeBilinearOptions import ResizeBilinearOptions

        opts = _options(op, o, ResizeBilinearOptions, required=False)
        align = bool(opts.AlignCorners()) if opts else False
        half = bool(opts.HalfPixelCenters()) if opts else False
        x = self.act(ins[0], op)
        _, h, w, _ = self.shape(ins[0])
        size = self.const(ins[1])
        oh, ow = ([int(v) for v in size.reshape(-1)] if size is not None
                  else self.shape(outs[0])[1:3])
        mode = "align_corners" if align else "half_pixel" if half else "asymmetric"
        scales = np.array([1.0, 1.0, oh / h, ow / w], np.float32)
        # ONNX sizes the output as floor(in * scale); with scales the batch stays dynamic.
        if [int(np.floor(np.float32(h) * scales[2])), int(np.floor(np.float32(w) * scales[3]))] \
                != [oh, ow]:
            raise UnsupportedOpError(op, f"{h}x{w} -> {oh}x{ow} is not exact as float32 scales")
        scales_n = self.initializer(f"{self.tname(outs[0])}/scales", scales)
        # Inputs: X, roi (empty: unused outside tf_crop_and_resize), scales.
        self.fused(op, _ACT_NONE, outs[0], lambda y: self.node(
            "Resize", [x, "", scales_n], y, mode="linear",
            coordinate_transformation_mode=mode))

    def op_transpose_conv_bias(self, op: str, o, ins, outs) -> None:
        """MediaPipe's ``Convolution2DTransposeBias``: NHWC input, OHWI weights, bias [O]."""
        raw = o.CustomOptionsAsNumpy()
        raw = raw.tobytes() if isinstance(raw, np.ndarray) else b""
        if len(raw) < 12:
            raise UnsupportedOpError(op, f"{len(raw)} bytes of custom options, expected 12")
        padding, stride_w, stride_h = struct.unpack("<iii", raw[:12])
        if padding not in (1, 2):  # this op's own enum: 1 SAME, 2 VALID
            raise UnsupportedOpError(op, f"padding {padding}")
        x = self.act(ins[0], op)
        _, h, w, _ = self.shape(ins[0])
        _, oh, ow, _ = self.shape(outs[0])
        wt = self.weight(ins[1], op)  # OHWI
        kh, kw = wt.shape[1:3]
        pads, out_pad = [0, 0, 0, 0], [0, 0]
        for axis, (n, s, k, out) in enumerate(((h, stride_h, kh, oh), (w, stride_w, kw, ow))):
            total = (n - 1) * s + k - out
            if total < 0:
                out_pad[axis] = -total
            else:
                pads[axis], pads[axis + 2] = total // 2, total - total // 2
        inputs = [x, self.initializer(f"{self.tname(ins[1])}/iohw", wt.transpose(3, 0, 1, 2))]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.initializer(f"{self.tname(ins[2])}/bias", self.weight(ins[2], op)))
        attrs = dict(kernel_shape=[kh, kw], strides=[stride_h, stride_w], pads=pads)
        if any(out_pad):
            attrs["output_padding"] = out_pad
        self.fused(op, _ACT_NONE, outs[0], lambda y: self.node("ConvTranspose", inputs, y, **attrs))

    def op_dequantize(self, op: str, o, ins, outs) -> None:
        value = self.const(ins[0])
        if value is None:
            raise UnsupportedOpError(op, "of a non-constant tensor")
        if value.dtype == np.float16:
            self.consts[outs[0]] = value.astype(np.float32)
            return
        q = self.tensor(ins[0]).Quantization()
        if q is None or q.ScaleLength() == 0:
            raise UnsupportedOpError(op, f"of {value.dtype} without quantization parameters")
        scale = q.ScaleAsNumpy().astype(np.float32)
        zero = q.ZeroPointAsNumpy().astype(np.float32) if q.ZeroPointLength() else 0.0
        if scale.size > 1:  # per-channel along the quantized dimension
            bshape = [1] * value.ndim
            bshape[q.QuantizedDimension()] = -1
            scale = scale.reshape(bshape)
            zero = np.reshape(zero, bshape) if np.size(zero) > 1 else zero
        self.consts[outs[0]] = ((value.astype(np.float32) - zero) * scale).astype(np.float32)

    def op_unary(self, op: str, o, ins, outs) -> None:
        x = self.act(ins[0], op)
        y = self.out_name(outs[0])
        if op == "RELU6":
            lo = self.initializer(y + "/clip_min", np.array(0.0, np.float32))
            hi = self.initializer(y + "/clip_max", np.array(6.0, np.float32))
            self.node("Clip", [x, lo, hi], y)
        else:
            self.node(_UNARY[op], [x], y)

    # ---- driver --------------------------------------------------------------------------
    def op_name(self, o) -> str:
        code = self.model.OperatorCodes(o.OpcodeIndex())
        value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if value == _CUSTOM:
            return (code.CustomCode() or b"").decode("utf-8", "replace")
        return self.op_names.get(value, f"builtin#{value}")

    def run(self):
        from onnx import TensorProto, helper

        g = self.g
        if g.InputsLength() != 1 or g.OutputsLength() != 1:
            raise ModelError(
                f"expected 1 input and 1 output, found {g.InputsLength()} and {g.OutputsLength()}"
            )
        in_idx, out_idx = g.Inputs(0), g.Outputs(0)
        for idx in (in_idx, out_idx):
            if self.tensor(idx).Type() != 0 or len(self.shape(idx)) != 4:
                raise ModelError(
                    f"tensor '{self.tname(idx)}' must be float32 NHWC, got type "
                    f"{self.tensor(idx).Type()} shape {self.shape(idx)}"
                )
        self._used.update({self.input_name, self.output_name})
        self.names[in_idx] = self.node(
            "Transpose", [self.input_name], self.unique(self.input_name + "/nchw"),
            perm=[0, 3, 1, 2])

        for i in range(g.OperatorsLength()):
            o = g.Operators(i)
            op = self.op_name(o)
            handler = _HANDLERS.get(op)
            if handler is None:
                outs = [int(v) for v in o.OutputsAsNumpy()] if o.OutputsLength() else []
                where = f"operator #{i}" + (f", output '{self.tname(outs[0])}'" if outs else "")
                raise UnsupportedOpError(op, where)
            ins = [int(v) for v in o.InputsAsNumpy()] if o.InputsLength() else []
            outs = [int(v) for v in o.OutputsAsNumpy()]
            handler(self, op, o, ins, outs)

        if out_idx not in self.names:
            raise ModelError(f"output tensor '{self.tname(out_idx)}' is produced by no op")
        self.node("Transpose", [self.names[out_idx]], self.output_name, perm=[0, 2, 3, 1])

        _, h, w, c = self.shape(in_idx)
        _, oh, ow, oc = self.shape(out_idx)
        graph = helper.make_graph(
            self.nodes,
            "tflite_converted",
            [helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT, ["N", h, w, c])],
            [helper.make_tensor_value_info(self.output_name, TensorProto.FLOAT, ["N", oh, ow, oc])],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="fuzzy-people.tflite_onnx",
            producer_version=CONVERTER_VERSION,
        )
        model.ir_version = IR_VERSION
        helper.set_model_props(model, {"source_tflite_sha256": sha256_bytes(self.data)})
        return model


_UNARY = {"RELU": "Relu", "LOGISTIC": "Sigmoid", "HARD_SWISH": "HardSwish", "TANH": "Tanh"}

_HANDLERS = {
    "CONV_2D": _Converter.op_conv,
    "DEPTHWISE_CONV_2D": _Converter.op_conv,
    "AVERAGE_POOL_2D": _Converter.op_pool,
    "MAX_POOL_2D": _Converter.op_pool,
    "ADD": _Converter.op_binary,
    "MUL": _Converter.op_binary,
    "RESIZE_BILINEAR": _Converter.op_resize,
    "DEQUANTIZE": _Converter.op_dequantize,
    "Convolution2DTransposeBias": _Converter.op_transpose_conv_bias,
    "RELU6": _Converter.op_unary,
    **{name: _Converter.op_unary for name in _UNARY},
}

SUPPORTED_OPS = tuple(sorted(_HANDLERS))


def convert(
    data: bytes,
    *,
    input_name: str = "image",
    output_name: str = "person",
    opset: int = DEFAULT_OPSET,
):
    """Convert TFLite flatbuffer bytes to a checked ``onnx.ModelProto`` (NHWC outside)."""
    import onnx

    model = _Converter(data, input_name, output_name, opset).run()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelError(f"converted ONNX model does not check: {exc}") from exc
    return model


def convert_bytes(data: bytes, **kwargs) -> bytes:
    """Like :func:`convert`, serialized: the same input bytes always give the same output bytes."""
    return convert(data, **kwargs).SerializeToString(deterministic=True)
