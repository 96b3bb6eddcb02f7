"""Small helpers on TF1 GraphDefs: loading and checking a frozen graph, names, constants, readers."""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.core.protobuf import rewriter_config_pb2

from rq_tf1.errors import GraphError

GraphDef = graph_pb2.GraphDef
NodeDef = node_def_pb2.NodeDef

VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp", "ReadVariableOp", "Assign", "AssignVariableOp"})


def load_frozen_graph(path: str | Path) -> GraphDef:
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"--input_frozen_graph '{path}' does not exist")
    graph_def = GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as error:  # protobuf's DecodeError and friends
        raise GraphError(f"'{path}' is not a TensorFlow GraphDef (.pb): {error}") from None
    if not graph_def.node:
        raise GraphError(f"'{path}' holds an empty GraphDef; give the frozen inference graph")
    check_frozen(graph_def)
    return graph_def


def check_frozen(graph_def: GraphDef) -> None:
    variables = [n.name for n in graph_def.node if n.op in VARIABLE_OPS]
    if variables:
        raise GraphError(
            f"the graph is not frozen: {len(variables)} variable node(s) left ({', '.join(variables[:3])}...). Freeze it "
            "first: tf.compat.v1.graph_util.convert_variables_to_constants(sess, graph_def, output_node_names)"
        )


def node_name(ref: str) -> str:
    """'^a', 'a:1', 'a' -> 'a'."""
    return ref.lstrip("^").split(":")[0]


def tensor_name(ref: str) -> str:
    """'a' -> 'a:0'; 'a:1' stays."""
    ref = ref.lstrip("^")
    return ref if ":" in ref else f"{ref}:0"


def nodes_by_name(graph_def: GraphDef) -> dict[str, NodeDef]:
    return {n.name: n for n in graph_def.node}


def readers(graph_def: GraphDef) -> dict[str, list[NodeDef]]:
    """Tensor name -> the nodes that read it (control inputs left out)."""
    found: dict[str, list[NodeDef]] = {}
    for node in graph_def.node:
        for ref in node.input:
            if not ref.startswith("^"):
                found.setdefault(tensor_name(ref), []).append(node)
    return found


def require_nodes(graph_def: GraphDef, names: list[str], flag: str) -> None:
    """A clear error for node names the graph lacks, listing the closest ones it has (and, for
    inputs, its Placeholders)."""
    known = [n.name for n in graph_def.node]
    placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
            if flag == "--input_nodes":
                close = list(dict.fromkeys([*close, *placeholders]))
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise GraphError(f"{flag} names '{name}', which the graph does not have{hint}")


def const_value(node: NodeDef | None) -> np.ndarray | None:
    if node is None or node.op != "Const":
        return None
    return tf.make_ndarray(node.attr["value"].tensor)


def make_const(name: str, value: np.ndarray) -> NodeDef:
    node = NodeDef(name=name, op="Const")
    value = np.asarray(value)
    node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return node


def make_node(name: str, op: str, inputs: list[str], dtype=tf.float32, **attrs) -> NodeDef:
    node = NodeDef(name=name, op=op, input=inputs)
    if dtype is not None:
        node.attr["T"].type = tf.as_dtype(dtype).as_datatype_enum
    for key, value in attrs.items():
        if isinstance(value, float):
            node.attr[key].f = value
        elif isinstance(value, bool):
            node.attr[key].b = value
        elif isinstance(value, int):
            node.attr[key].i = value
    return node


def replace_reads(graph_def: GraphDef, old: str, new: str, skip: set[str] = frozenset()) -> None:
    """Every read of tensor ``old`` (by nodes not in ``skip``) reads ``new`` instead."""
    old = tensor_name(old)
    for node in graph_def.node:
        if node.name in skip:
            continue
        for i, ref in enumerate(node.input):
            if not ref.startswith("^") and tensor_name(ref) == old:
                node.input[i] = new


def copy(graph_def: GraphDef) -> GraphDef:
    out = GraphDef()
    out.CopyFrom(graph_def)
    return out


def session_config() -> tf.compat.v1.ConfigProto:
    """Grappler's remapper off: with oneDNN (x86 with AVX-512) it fuses Conv2D + BiasAdd + LeakyRelu into
    one kernel even when the BiasAdd's output is fetched, and the run then fails ('not found in the
    Graph'); calibration fetches every quantized tensor, so rq's sessions run the graph as written."""
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
    return config


def run(graph_def: GraphDef, fetches: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``graph_def`` once in a tf.compat.v1 Session."""
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph, config=session_config()) as session:
            return session.run(fetches, {tensor_name(k): v for k, v in feeds.items()})


def weight_view(op: NodeDef, kernel: np.ndarray) -> tuple[np.ndarray, int]:
    """The kernel with its output channels on one axis, and that axis (for folding and quantizing)."""
    if op.op == "DepthwiseConv2dNative":
        h, w, c, m = kernel.shape
        return kernel.reshape(h, w, c * m), 2
    if op.op == "MatMul" and op.attr["transpose_b"].b:
        return kernel, 0
    return kernel, kernel.ndim - 1
