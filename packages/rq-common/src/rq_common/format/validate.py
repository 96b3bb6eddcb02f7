"""The judge of the int8 format: every violation, with the node and tensor it concerns.

Each check is a small function registered in CHECKS; validate() runs them all and returns the
violations in graph order. An empty list means the model is in the format of the preset.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import onnx

from rq_common.errors import FormatError
from rq_common.format.canonicalize import MIN_OPSET, SIXTEEN_BIT_OPSET, stores_sixteen_bits
from rq_common.format.graph import (
    DEQUANTIZE,
    QUANTIZE,
    GraphIndex,
    QdqParams,
    biased_matmul,
    constant_role,
    node_label,
    qdq_params,
    recorded_float_nodes,
    recorded_wide_activations,
)
from rq_common.io import is_over_protobuf_limit, save_with_external_data
from rq_common.optable import OpFacts, facts_for, ops_where
from rq_common.qmath.qparams import is_power_of_two
from rq_common.spec.methods import BiasScaleRule
from rq_common.spec.presets import Preset, get_preset, widened_activation

BIAS_SCALE_RTOL = 1e-6  # float32 products computed in float32 or float64-then-rounded agree to this


class ViolationKind(Enum):
    CHECKER_FAILED = "checker-failed"
    OPSET_TOO_LOW = "opset-too-low"
    NON_FLOAT_IO = "non-float-io"
    MISSING_QDQ = "missing-qdq"
    UNQUANTIZED_OP = "unquantized-op"
    FLOAT_WEIGHT = "float-weight"
    FLOAT_BIAS = "float-bias"
    WRONG_DTYPE = "wrong-dtype"
    WRONG_ZERO_POINT = "wrong-zero-point"
    NOT_POWER_OF_TWO = "not-power-of-two"
    BIAS_SCALE_MISMATCH = "bias-scale-mismatch"
    PER_CHANNEL_NOT_ALLOWED = "per-channel-not-allowed"
    UNPAIRED_QDQ = "unpaired-qdq"
    NPU_SHIFT_CUT = "npu-shift-cut"
    NPU_SHIFT_BIAS = "npu-shift-bias"
    NPU_ADD_POSITIONS = "npu-add-positions"
    NPU_UNFUSED_ACTIVATION = "npu-unfused-activation"
    NPU_SHARED_SCALE = "npu-shared-scale"
    NPU_LEAKY_ALPHA = "npu-leaky-alpha"


@dataclass(frozen=True)
class Violation:
    kind: ViolationKind
    node: str
    tensor: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind.value}: node '{self.node}', tensor '{self.tensor}': {self.message}"


@dataclass(frozen=True)
class ValidationContext:
    model: onnx.ModelProto
    index: GraphIndex
    preset: Preset
    float_nodes: frozenset[str]
    required_ops: frozenset[str]
    wide_activations: frozenset[str]  # float tensors mixed precision stored in 16 bits (recorded in the model)
    source: onnx.ModelProto | str | Path  # a path lets onnx.checker read models over 2 GB


Check = Callable[[ValidationContext], Iterator[Violation]]
CHECKS: list[Check] = []


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


def validate(
    model: onnx.ModelProto | str | Path,
    preset: Preset | str,
    float_nodes: Iterable[str] = (),
    required_ops: Iterable[str] | None = None,
) -> list[Violation]:
    """Every way ``model`` departs from the int8 format of ``preset``.

    ``float_nodes``: names of nodes the user chose to keep in float (not reported as unquantized),
    besides those the quantizer recorded in the model (``rq.float_nodes``, rq_common.format.graph).
    ``required_ops``: op types that must be quantized; default: what the preset's target needs.
    """
    source = model
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    preset = get_preset(preset)
    if required_ops is None:  # the weighted ops of rq_common.optable, where the target cannot run them in float
        required_ops = ops_where(lambda facts: facts.weight is not None) if preset.target.requires_quantized_compute else ()
    float_nodes = frozenset(float_nodes) | frozenset(recorded_float_nodes(model))
    wide = frozenset(recorded_wide_activations(model))
    ctx = ValidationContext(model, GraphIndex(model), preset, float_nodes, frozenset(required_ops), wide, source)
    return [v for c in CHECKS for v in c(ctx)]


@check
def _checker(ctx: ValidationContext) -> Iterator[Violation]:
    try:
        if not isinstance(ctx.source, onnx.ModelProto):
            onnx.checker.check_model(str(ctx.source), full_check=True)
        elif is_over_protobuf_limit(ctx.source):  # the checker reads models over 2 GB from a path only
            with tempfile.TemporaryDirectory() as folder:
                onnx.checker.check_model(str(save_with_external_data(ctx.source, folder)), full_check=True)
        else:
            onnx.checker.check_model(ctx.source, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        yield Violation(ViolationKind.CHECKER_FAILED, "<model>", "", f"onnx.checker: {first_line}")


@check
def _opset(ctx: ValidationContext) -> Iterator[Violation]:
    if ctx.index.opset < MIN_OPSET:
        yield Violation(ViolationKind.OPSET_TOO_LOW, "<model>", "", f"opset {ctx.index.opset} < {MIN_OPSET}; upgrade to 17")
    elif ctx.index.opset < SIXTEEN_BIT_OPSET and stores_sixteen_bits(ctx.preset):
        yield Violation(
            ViolationKind.OPSET_TOO_LOW,
            "<model>",
            "",
            f"opset {ctx.index.opset} < {SIXTEEN_BIT_OPSET}: QuantizeLinear / DequantizeLinear take 16-bit types from opset 21",
        )


@check
def _float_io(ctx: ValidationContext) -> Iterator[Violation]:
    """Quantized integers do not cross the graph's boundary: no graph input is read by a
    DequantizeLinear and no graph output is written by a QuantizeLinear. Inputs and outputs of
    other types (token ids, byte images, masks) are the float model's own and stay as they are."""
    index = ctx.index
    for value in ctx.model.graph.input:
        if value.name not in index.initializers and any(r.op_type == DEQUANTIZE for r, _ in index.consumers_of(value.name)):
            yield Violation(
                ViolationKind.NON_FLOAT_IO,
                "<graph input>",
                value.name,
                "graph input is read by a DequantizeLinear; the int8 model takes the float model's inputs",
            )
    for value in ctx.model.graph.output:
        if index.producer_op(value.name) == QUANTIZE:
            yield Violation(
                ViolationKind.NON_FLOAT_IO,
                "<graph output>",
                value.name,
                "graph output is written by a QuantizeLinear; the int8 model gives the float model's outputs",
            )


def _tensor_roles(ctx: ValidationContext) -> Iterator[tuple[onnx.NodeProto, str, QdqParams]]:
    """(node, role, params) for every Q/DQ node with constant parameters."""
    index = ctx.index
    for node in ctx.model.graph.node:
        if node.op_type not in (QUANTIZE, DEQUANTIZE):
            continue
        params = qdq_params(index, node)
        if params is None:
            continue
        if node.op_type == DEQUANTIZE and index.is_constant(node.input[0]):
            role = constant_role(index, node)
        elif node.op_type == QUANTIZE and index.is_constant(node.input[0]):
            continue  # reported as a float weight quantized at run time
        else:
            role = "activation"
        yield node, role, params


@check
def _dtypes_and_zero_points(ctx: ValidationContext) -> Iterator[Violation]:
    specs = {"activation": ctx.preset.activation, "weight": ctx.preset.weight, "bias": ctx.preset.bias}
    wide = widened_activation(ctx.preset)
    for node, role, params in _tensor_roles(ctx):
        spec = specs[role]
        label, tensor = node_label(node), node.input[0]
        if role == "activation" and wide is not None and _float_tensor(ctx.index, node) in ctx.wide_activations:
            spec = wide
        if params.dtype != spec.dtype:
            yield Violation(
                ViolationKind.WRONG_DTYPE,
                label,
                tensor,
                f"{role} is {params.dtype.value}; preset '{ctx.preset.name}' stores {role}s as {spec.dtype.value}",
            )
            continue
        expected = spec.fixed_zero_point
        if expected is not None and np.any(params.zero_point.astype(np.int64) != expected):
            yield Violation(
                ViolationKind.WRONG_ZERO_POINT,
                label,
                tensor,
                f"{role} zero point {params.zero_point.tolist()}; preset '{ctx.preset.name}' needs {expected} (symmetric {spec.dtype.value})",
            )
        if params.axis is not None and role == "activation":
            yield Violation(ViolationKind.PER_CHANNEL_NOT_ALLOWED, label, tensor, "activations are quantized per tensor")
        if params.axis is not None and role == "weight" and not ctx.preset.target.per_channel_weights:
            yield Violation(
                ViolationKind.PER_CHANNEL_NOT_ALLOWED,
                label,
                tensor,
                f"per-channel weight scales; target '{ctx.preset.target.name}' runs per-tensor weights only",
            )


def _float_tensor(index: GraphIndex, node: onnx.NodeProto) -> str:
    """The float tensor a Q/DQ pair quantizes: a QuantizeLinear's input, the input of the
    QuantizeLinear that feeds a DequantizeLinear."""
    if node.op_type == DEQUANTIZE and index.producer_op(node.input[0]) == QUANTIZE:
        return index.producers[node.input[0]].input[0]
    return node.input[0]


@check
def _power_of_two(ctx: ValidationContext) -> Iterator[Violation]:
    if not ctx.preset.target.power_of_two_scales:
        return
    for node in ctx.model.graph.node:
        if node.op_type not in (QUANTIZE, DEQUANTIZE):
            continue
        params = qdq_params(ctx.index, node)
        if params is not None and not np.all(is_power_of_two(params.scale)):
            bad = params.scale[~is_power_of_two(params.scale)] if params.scale.ndim else params.scale
            yield Violation(
                ViolationKind.NOT_POWER_OF_TWO,
                node_label(node),
                node.input[1],
                f"scale {np.ravel(bad)[:4].tolist()} is not 2^k; target '{ctx.preset.target.name}' needs power-of-two scales",
            )


@check
def _qdq_pairs(ctx: ValidationContext) -> Iterator[Violation]:
    index = ctx.index
    for node in ctx.model.graph.node:
        if node.op_type != QUANTIZE:
            continue
        if index.is_constant(node.input[0]):
            yield Violation(
                ViolationKind.FLOAT_WEIGHT,
                node_label(node),
                node.input[0],
                "float constant quantized at run time; store it as an integer initializer feeding DequantizeLinear",
            )
            continue
        params = qdq_params(index, node)
        for reader, _ in index.consumers_of(node.output[0]):
            reader_params = qdq_params(index, reader) if reader.op_type == DEQUANTIZE else None
            if reader.op_type != DEQUANTIZE:
                message = f"QuantizeLinear output is read by {reader.op_type} '{node_label(reader)}', not by a DequantizeLinear"
            elif params is None or reader_params is None or not params.same_as(reader_params):
                message = f"DequantizeLinear '{node_label(reader)}' uses other scale/zero point than its QuantizeLinear"
            else:
                continue
            yield Violation(ViolationKind.UNPAIRED_QDQ, node_label(node), node.output[0], message)


@check
def _quantized_ops(ctx: ValidationContext) -> Iterator[Violation]:
    index = ctx.index
    for node in ctx.model.graph.node:
        rule = facts_for(node.op_type)
        if rule is None or node.name in ctx.float_nodes:  # kept in float on purpose: float inputs are fine
            continue
        slots = rule.quantized_slots(node)
        fed_by_dq = [index.producer_op(node.input[i]) == DEQUANTIZE for i in slots]
        label = node_label(node)
        if not any(fed_by_dq):
            if node.op_type in ctx.required_ops and node.name not in ctx.float_nodes:
                yield Violation(
                    ViolationKind.UNQUANTIZED_OP,
                    label,
                    node.input[0],
                    f"{node.op_type} has no quantized input; target '{ctx.preset.target.name}' cannot run it in float "
                    "(quantize it, or list it in float_nodes to keep it on the CPU on purpose)",
                )
            continue
        for i, quantized in zip(slots, fed_by_dq):
            if quantized:
                continue
            name = node.input[i]
            constant = index.constant(name)
            if constant is not None and np.issubdtype(constant.dtype, np.floating):
                yield Violation(
                    ViolationKind.FLOAT_WEIGHT, label, name, f"input {i} is a float constant; store it as int8 + DequantizeLinear"
                )
            else:
                yield Violation(
                    ViolationKind.MISSING_QDQ,
                    label,
                    name,
                    f"input {i} of quantized {node.op_type} does not come from a DequantizeLinear",
                )
        yield from _bias(ctx, node, rule)


def _bias(ctx: ValidationContext, node: onnx.NodeProto, rule: OpFacts) -> Iterator[Violation]:
    if rule.bias is None or len(node.input) <= rule.bias or not node.input[rule.bias]:
        return
    index, label, name = ctx.index, node_label(node), node.input[rule.bias]
    bias_dq = index.producers.get(name)
    if bias_dq is None or bias_dq.op_type != DEQUANTIZE:
        yield Violation(
            ViolationKind.FLOAT_BIAS,
            label,
            name,
            "bias is float; store it as an integer initializer + DequantizeLinear (zero point 0)",
        )
        return
    yield from _bias_scale(ctx, node, rule.weight, bias_dq, name)


@check
def _matmul_biases(ctx: ValidationContext) -> Iterator[Violation]:
    """A MatMul's int32 bias, added to its float output (QdqPlacement.INTEGER_KERNELS): the scale
    rule of any other bias."""
    index = ctx.index
    for add in ctx.model.graph.node:
        for slot, name in enumerate(add.input):
            matmul, bias_dq = biased_matmul(index, add, slot), index.producers.get(name)
            if (
                matmul is not None
                and bias_dq is not None
                and bias_dq.op_type == DEQUANTIZE
                and index.is_constant(bias_dq.input[0])
            ):
                yield from _bias_scale(ctx, matmul, 1, bias_dq, name)


def _bias_scale(ctx: ValidationContext, node: onnx.NodeProto, weight_slot: int, bias_dq: onnx.NodeProto, name: str):
    """The bias's scale is the input's times the weight's (bias_rule PRODUCT)."""
    index, label = ctx.index, node_label(node)
    if ctx.preset.bias_rule is not BiasScaleRule.PRODUCT:
        return
    producers = [index.producers.get(node.input[i]) for i in (0, weight_slot)]
    if any(p is None or p.op_type != DEQUANTIZE for p in producers):
        return
    bias_params, input_params, weight_params = (qdq_params(index, n) for n in (bias_dq, *producers))
    if bias_params is None or input_params is None or weight_params is None:
        return
    expected = (input_params.scale.astype(np.float64) * weight_params.scale.astype(np.float64)).astype(np.float32).ravel()
    actual = bias_params.scale.ravel()
    if actual.size not in (1, expected.size) or not np.allclose(actual, expected, rtol=BIAS_SCALE_RTOL, atol=0):
        yield Violation(
            ViolationKind.BIAS_SCALE_MISMATCH,
            label,
            name,
            f"bias scale {actual[:4].tolist()} != input scale x weight scale {expected[:4].tolist()}",
        )


def require_valid(violations: list[Violation], preset: Preset | str, *, allow: bool, flag: str | None = None) -> None:
    """Written means valid: a FormatError naming the first broken rule, unless the user asked to
    write anyway (``allow``). Every writer calls this before it saves; ``flag`` is its CLI's flag."""
    if not violations or allow:
        return
    name = preset if isinstance(preset, str) else preset.name
    anyway = "allow_violations=True" + (f" / {flag}" if flag else "")
    raise FormatError(
        f"the int8 model breaks {len(violations)} rule(s) of the '{name}' format, first: {violations[0]}; "
        f"nothing was written (keep the ops named in float with exclude_nodes, or write anyway with {anyway})"
    )


__all__ = ["CHECKS", "Violation", "ViolationKind", "require_valid", "validate"]
