"""Where quantizers go in a graph of ops: one algorithm for every framework package.

A framework package describes its graph as OpNodes (the ONNX op type each node exports to, and
the run-time float tensors it reads and writes) and gets back which tensors to quantize, which of
them share a scale, and which ops stay in float, with the reason. The rules are rq's op coverage
and the NPU's rules, from rq_common.optable:
- an own-scale op (Conv, Gemm, MatMul, Add, Concat, pooling, activations, ...) has its inputs and
  its output quantized, the output with its own scale;
- a pass-through op (Reshape, Transpose, MaxPool, ...) is quantized when its input is, and its
  output shares the input's scale;
- on fixed-point targets Concat and pooling share one scale across inputs and output;
- a Relu / Clip(0, x) right after a Conv / ConvTranspose / Gemm / MatMul / Add that is the only
  reader of that op's output fuses into it: no quantizer between them.
With ``integer_kernels_only`` (QdqPlacement.INTEGER_KERNELS: the CPU), that placement is then cut
down to where ONNX Runtime's int8 kernels are (the optable's ``cpu`` facts), the largest set of
integer ops that is closed under these rules:
- an op without an int8 kernel runs in float;
- an elementwise op (QLinearAdd, QLinearSigmoid, ...) runs in int8 only where int8 meets int8: each
  of its run-time inputs written in int8 (by an int8 op, or a graph input) and its output read by an
  int8 op; otherwise it runs in float on the dequantized values;
- a pass-through op moves int8 values only where an int8 op reads them;
- a MatMul runs in int8 everywhere, its output in float where no int8 op reads it
  (MatMulIntegerToFloat; with a bias Add after it the package writes that bias as the MatMul's
  int32 bias, and ONNX Runtime runs the two as one QGemm with a float output); a Conv and a Gemm
  everywhere, with their int8 output;
and a tensor keeps its quantizer only where an int8 op writes or reads it; a float op reads the
float value of a tensor that a float op (or the graph input) wrote, its dequantized copy only where
an int8 op wrote it. In a post-LN transformer this keeps the residual stream, LayerNorm and GELU in
float and every MatMul in int8.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from rq_common.calibration.groups import ScaleGroups
from rq_common.optable import CpuKernel, NpuRole, Role, facts_for, has_npu_role


@dataclass(frozen=True)
class OpNode:
    """One op of the framework's graph.

    ``op``: the ONNX op type it exports to (None: rq has no rule for it). ``inputs``/``outputs``:
    keys of the run-time float tensors it reads and writes (constants and weights left out).
    ``float_reason``: set when the package already knows the op must stay in float (excluded by
    the user, an activation the exporter cannot write, ...). ``fusable``: False for an activation
    that cannot fuse although its op type could (a Clip whose lower bound is not 0).
    """

    name: str
    op: str | None
    inputs: tuple[Hashable, ...]
    outputs: tuple[Hashable, ...]
    float_reason: str | None = None
    fusable: bool = True


@dataclass(frozen=True)
class FloatOp:
    """An op kept in float: its node, what it is (the ONNX op type, or the framework's call when it
    exports to none rq covers) and why."""

    node: str
    op: str | None
    reason: str


@dataclass
class Placement:
    quantized: list[Hashable] = field(default_factory=list)  # tensors to quantize, in graph order
    groups: ScaleGroups = field(default_factory=ScaleGroups)  # tensors that share a scale
    quantized_ops: list[str] = field(default_factory=list)
    fused: list[Hashable] = field(default_factory=list)  # tensors left alone because an activation fuses
    float_ops: list[FloatOp] = field(default_factory=list)
    # (float op, quantized tensor) pairs where the op reads the float value, not the dequantized
    # one: the tensor's producer runs in float anyway (INTEGER_KERNELS), so its value is there
    float_reads: list[tuple[str, Hashable]] = field(default_factory=list)

    def group_of(self, tensor: Hashable) -> Hashable:
        """The key that names ``tensor``'s scale group (its earliest member)."""
        return self.groups.find(tensor)


def place_quantizers(
    nodes: Sequence[OpNode],
    graph_inputs: Sequence[Hashable],
    graph_outputs: Sequence[Hashable],
    fixed_point_rules: bool,
    integer_kernels_only: bool = False,
) -> Placement:
    """``nodes`` in topological order; see the module docstring for the rules."""
    placement = Placement()
    quantized: set[Hashable] = set()
    by_name: dict[str, OpNode] = {}
    shared: list[tuple[Hashable, Hashable]] = []
    for node in nodes:
        reason = _float_reason(node, quantized)
        if reason:
            placement.float_ops.append(FloatOp(node.name, node.op, reason))
            continue
        by_name[node.name] = node
        placement.quantized_ops.append(node.name)
        role = facts_for(node.op).role
        quantized.update(node.inputs if role is Role.OWN_SCALE else node.inputs[:1])
        quantized.update(node.outputs)
        if role is Role.PASS_THROUGH:
            shared += [(node.inputs[0], out) for out in node.outputs]
        elif fixed_point_rules and has_npu_role(node.op, NpuRole.SHARED_SCALE):
            shared += [(node.outputs[0], source) for source in node.inputs]
    _fuse_activations(nodes, by_name, quantized, set(graph_outputs), placement)
    if integer_kernels_only:
        _keep_integer_kernels(nodes, by_name, quantized, set(graph_inputs), placement)
        shared = [(a, b) for a, b in shared if a in quantized and b in quantized]
    order = [*graph_inputs, *(t for node in nodes for t in (*node.inputs, *node.outputs))]
    placement.quantized = [t for t in dict.fromkeys(order) if t in quantized]
    for tensor in placement.quantized:  # added in graph order: the earliest member names a group
        placement.groups.add(tensor)
    for a, b in shared:
        placement.groups.union(a, b)
    return placement


EXCLUDED = "excluded by name (kept in float on request)"
NO_RUNTIME_TENSOR = "it reads or writes no run-time float tensor"
PASSES_THROUGH = "its input is not quantized, so the values pass through in float"


def follows_from_others(reason: str) -> bool:
    """Whether a float op is only a consequence (a pass-through op after a float one, an op on
    constants): warnings name the ops that cause float, not these."""
    return reason in (NO_RUNTIME_TENSOR, PASSES_THROUGH, NO_CPU_KERNEL, BETWEEN_FLOATS)


def _float_reason(node: OpNode, quantized: set[Hashable]) -> str | None:
    if node.float_reason:
        return node.float_reason
    if node.op is None:
        return f"no quantization rule for {node.name}: runs in float"
    if not node.inputs or not node.outputs:
        return NO_RUNTIME_TENSOR
    facts = facts_for(node.op)
    if facts is None:
        return f"{node.op} is not quantized by rq"
    if facts.role is Role.PASS_THROUGH:
        return None if node.inputs[0] in quantized else PASSES_THROUGH
    return None


def _fuse_activations(nodes, by_name, quantized, graph_outputs, placement) -> None:
    producer = {t: node for node in nodes if node.name in by_name for t in node.outputs}
    readers: dict[Hashable, int] = {}
    for node in nodes:
        for t in node.inputs:
            readers[t] = readers.get(t, 0) + 1
    for node in nodes:
        if node.name not in by_name or not has_npu_role(node.op, NpuRole.FUSED_ACTIVATION) or not node.fusable:
            continue
        source = node.inputs[0]
        before = producer.get(source)
        if (
            before is not None
            and has_npu_role(before.op, NpuRole.FUSES_ACTIVATION)
            and readers.get(source) == 1
            and source not in graph_outputs
        ):
            quantized.discard(source)
            placement.fused.append(source)


NO_CPU_KERNEL = "ONNX Runtime has no int8 CPU kernel for it: runs in float"
BETWEEN_FLOATS = "an int8 kernel pays only between int8 tensors; its inputs or readers are in float"


def _cpu_kind(node: OpNode, fused: set[Hashable]) -> CpuKernel | None:
    """The node's CPU kernel kind (None: a pass-through op). A fused activation is part of the
    kernel of the op before it, so it is an int8 op wherever that op is."""
    facts = facts_for(node.op)
    if facts.role is Role.PASS_THROUGH:
        return None
    return CpuKernel.COMPUTE if node.inputs and node.inputs[0] in fused else facts.cpu


def _keep_integer_kernels(nodes, by_name, quantized, graph_inputs, placement) -> None:
    """Cut the placement down to ONNX Runtime's int8 CPU kernels (module docstring): demote ops
    until no rule moves, then keep the quantizers that an int8 op writes or reads."""
    fused = set(placement.fused)
    integer = {name: _cpu_kind(node, fused) for name, node in by_name.items()}
    integer = {name: kind for name, kind in integer.items() if kind is not CpuKernel.NONE}
    producer = {t: node.name for node in nodes for t in node.outputs}
    readers: dict[Hashable, list[OpNode]] = {}
    for node in nodes:
        for t in node.inputs:
            readers.setdefault(t, []).append(node)

    def read_in_int8(tensor: Hashable) -> bool:
        return any(r.name in integer and (integer[r.name] is not None or r.inputs[0] == tensor) for r in readers.get(tensor, ()))

    def written_in_int8(tensor: Hashable) -> bool:
        source = producer.get(tensor)
        if source is None:
            return tensor in graph_inputs
        if source not in integer:
            return False
        return integer[source] is not CpuKernel.FLOAT_OUTPUT or read_in_int8(tensor)

    def demoted(node: OpNode) -> bool:
        kind = integer[node.name]
        if kind is None:
            return not any(read_in_int8(t) for t in node.outputs)
        if kind is CpuKernel.ELEMENTWISE:
            return not all(written_in_int8(t) for t in node.inputs) or not any(read_in_int8(t) for t in node.outputs)
        return False

    changed = True
    while changed:
        changed = False
        for node in nodes:
            if node.name in integer and demoted(node):
                del integer[node.name]
                changed = True
    for node in nodes:
        if node.name in by_name and node.name not in integer:
            placement.quantized_ops.remove(node.name)
            facts = facts_for(node.op)
            reason = NO_CPU_KERNEL if facts.role is Role.OWN_SCALE and facts.cpu is CpuKernel.NONE else BETWEEN_FLOATS
            placement.float_ops.append(FloatOp(node.name, node.op, reason))
    for tensor in list(quantized):  # a graph input is written in int8 only for an int8 reader
        if not (read_in_int8(tensor) or (producer.get(tensor) in integer and written_in_int8(tensor))):
            quantized.discard(tensor)
    placement.float_reads = [
        (node.name, t)
        for node in nodes
        if node.name not in integer
        for t in node.inputs
        if t in quantized and producer.get(t) not in integer
    ]
