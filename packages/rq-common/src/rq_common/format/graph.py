"""A read-only index of an ONNX graph: who produces and who consumes each tensor, and constants."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from rq_common.errors import FormatError
from rq_common.optable import facts_for
from rq_common.qmath.qparams import QParams
from rq_common.spec.dtypes import QuantDType
from rq_common.spec.quant_spec import Granularity, QuantSpec

QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"


@dataclass
class GraphIndex:
    model: onnx.ModelProto
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        graph = self.model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.positions: dict[str, int] = {}
        for position, node in enumerate(graph.node):
            for out in node.output:
                if out:
                    self.producers[out] = node
                    self.positions[out] = position
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
        self.graph_inputs = {v.name for v in graph.input}
        self.graph_outputs = {v.name for v in graph.output}

    @property
    def opset(self) -> int:
        for entry in self.model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                return entry.version
        return 0

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant-node output; None for run-time tensors."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        if node is not None and node.op_type == "Identity":  # exporters share constants through Identity
            return self.constant(node.input[0])
        return None

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return True
        node = self.producers.get(name)
        return node is not None and (
            node.op_type == "Constant" or (node.op_type == "Identity" and self.is_constant(node.input[0]))
        )

    def producer_op(self, name: str) -> str | None:
        node = self.producers.get(name)
        return node.op_type if node is not None else None

    def position(self, node: onnx.NodeProto) -> int:
        """Where ``node`` stands in the graph's node list (found through its first output)."""
        return self.positions[node.output[0]]

    def consumers_of(self, name: str) -> list[tuple[onnx.NodeProto, int]]:
        return self.consumers.get(name, [])


# -- in-place edits (an index made before an edit is stale after it: make a new one) --------------
def set_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    """Add the initializer ``name``, or replace its value."""
    tensor = numpy_helper.from_array(np.asarray(value), name)
    for existing in graph.initializer:
        if existing.name == name:
            existing.CopyFrom(tensor)
            return
    graph.initializer.append(tensor)


def rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node that reads ``old`` reads ``new`` instead."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    """Initializers nothing reads go (the graph's inputs stay as they are)."""
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def unique_name(graph: onnx.GraphProto, base: str) -> str:
    """``base``, or ``base_<n>`` when a tensor of the graph already has that name."""
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | {v.name for v in graph.input}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


FLOAT_NODES_KEY = "rq.float_nodes"  # metadata: the nodes the quantizer kept in float on purpose
WIDE_ACTIVATIONS_KEY = "rq.wide_activations"  # metadata: the activations mixed precision stored in 16 bits


def record_float_nodes(model: onnx.ModelProto, names) -> None:
    """Write into the model which nodes its quantizer kept in float (a JSON list, in the order
    given), so that a later ``rq-onnx check`` knows them; nothing is written for none."""
    _record_names(model, FLOAT_NODES_KEY, names)


def recorded_float_nodes(model: onnx.ModelProto) -> list[str]:
    return _recorded_names(model, FLOAT_NODES_KEY)


def record_wide_activations(model: onnx.ModelProto, tensors) -> None:
    """Write into the model which activation tensors mixed precision widened (to the preset's
    ``widened_activation`` spec), so that ``rq-onnx check`` accepts their 16-bit Q/DQ and no other."""
    _record_names(model, WIDE_ACTIVATIONS_KEY, tensors)


def recorded_wide_activations(model: onnx.ModelProto) -> list[str]:
    return _recorded_names(model, WIDE_ACTIVATIONS_KEY)


def _record_names(model: onnx.ModelProto, key: str, names) -> None:
    others = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(others)
    names = list(dict.fromkeys(names))
    if names:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(names)


def _recorded_names(model: onnx.ModelProto, key: str) -> list[str]:
    found = next((p.value for p in model.metadata_props if p.key == key), None)
    return list(json.loads(found)) if found else []


def node_label(node: onnx.NodeProto) -> str:
    return node.name or f"<{node.op_type} -> {node.output[0] if node.output else '?'}>"


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


@dataclass(frozen=True)
class QdqParams:
    """The constant scale / zero point of a QuantizeLinear or DequantizeLinear node."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: QuantDType
    axis: int | None

    def same_as(self, other: QdqParams) -> bool:
        return (
            self.dtype == other.dtype
            and self.axis == other.axis
            and self.scale.shape == other.scale.shape
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def to_qparams(self) -> QParams:
        """QParams whose spec has the dtype's full range, as ONNX saturates."""
        if self.axis is None:
            spec = QuantSpec(dtype=self.dtype, symmetric=False)
        else:
            spec = QuantSpec(dtype=self.dtype, symmetric=False, granularity=Granularity.PER_CHANNEL, axis=self.axis)
        return QParams(scale=self.scale, zero_point=self.zero_point, spec=spec, axis=self.axis)


def qdq_params(index: GraphIndex, node: onnx.NodeProto) -> QdqParams | None:
    """Scale/zero point/dtype/axis of a Q or DQ node; None when they are not constants."""
    scale = index.constant(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        return None
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if zp_name:
        zero_point = index.constant(zp_name)
        if zero_point is None:
            return None
    elif node.op_type == DEQUANTIZE and node.input[0] in index.initializers:
        zero_point = np.zeros(
            scale.shape, dtype=onnx.helper.tensor_dtype_to_np_dtype(index.initializers[node.input[0]].data_type)
        )
    else:
        zero_point = np.zeros(scale.shape, dtype=np.uint8)  # ONNX default: uint8, zero point 0
    try:
        dtype = QuantDType.from_numpy(zero_point.dtype)
    except ValueError:
        return None
    axis = None
    if scale.ndim == 1 and scale.size > 1:
        axis = int(attribute(node, "axis", 1))
    return QdqParams(
        scale=scale.astype(np.float32).reshape(-1) if axis is not None else scale.astype(np.float32).reshape(()),
        zero_point=zero_point.reshape(-1) if axis is not None else zero_point.reshape(()),
        dtype=dtype,
        axis=axis,
    )


def output_qdq_params(model: onnx.ModelProto, output: int = 0) -> QdqParams:
    """The parameters of the DequantizeLinear that produces graph output ``output`` (through the
    layout ops an exporter leaves: an Identity, tf2onnx's NCHW-to-NHWC Reshape of one channel):
    one step of that output is its scale."""
    index = GraphIndex(model)
    node = index.producers.get(model.graph.output[output].name)
    while node is not None and getattr(facts_for(node.op_type), "layout", False):
        node = index.producers.get(node.input[0])
    if node is None or node.op_type != DEQUANTIZE:
        raise FormatError(f"graph output {model.graph.output[output].name!r} does not come from a DequantizeLinear")
    return qdq_params(index, node)


def order_nodes_from_outputs(model: onnx.ModelProto) -> None:
    """The nodes in an order read from the graph's structure alone: depth first from each graph
    output in turn, each node's inputs in slot order, a node after what it reads. An exporter that
    writes independent branches in whichever order its sets give them (tf2onnx) then gives one
    order, and so the same names and bytes, every run. Nodes no output depends on keep their
    relative order at the end."""
    graph = model.graph
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    placed: list[int] = []
    seen: set[int] = set()
    for output in graph.output:
        if output.name not in producer:
            continue
        stack = [(producer[output.name], False)]
        while stack:
            index, inputs_done = stack.pop()
            if inputs_done:
                placed.append(index)
                continue
            if index in seen:
                continue
            seen.add(index)
            stack.append((index, True))
            reads = [producer[name] for name in graph.node[index].input if name in producer]
            stack.extend((i, False) for i in reversed(reads) if i not in seen)
    placed += [i for i in range(len(graph.node)) if i not in seen]
    nodes = [graph.node[i] for i in placed]
    del graph.node[:]
    graph.node.extend(nodes)


def biased_matmul(index: GraphIndex, add: onnx.NodeProto, slot: int) -> onnx.NodeProto | None:
    """The MatMul whose float output ``add`` adds its input ``slot`` to: that input is the MatMul's
    int32 bias (QdqPlacement.INTEGER_KERNELS). None for any other node."""
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    other = index.producers.get(add.input[1 - slot])
    return other if other is not None and other.op_type == "MatMul" else None


def constant_role(index: GraphIndex, dq: onnx.NodeProto) -> str:
    """'bias' when a constant DequantizeLinear feeds some op's bias slot, or is added to a MatMul's
    float output (biased_matmul), else 'weight'."""
    for consumer, slot in index.consumers_of(dq.output[0]):
        facts = facts_for(consumer.op_type)
        if (facts is not None and facts.bias == slot) or biased_matmul(index, consumer, slot) is not None:
            return "bias"
    return "weight"
