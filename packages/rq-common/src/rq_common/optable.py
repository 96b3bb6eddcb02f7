"""Everything rq knows about an op type, in one table that every package reads.

Ops are named by their ONNX op type: a framework package maps its own layers and calls to the ONNX
op its exporter writes for them, and asks this table the rest. An op that is not in the table runs
in float, and the package's report says so.

- ``role``: an own-scale op has its quantized inputs and its output quantized, the output with a
  calibrated scale of its own; a pass-through op's output is its input's values rearranged (or a
  max of them), so it keeps the input's scale and is quantized only when its input is.
- ``inputs``: the slots that carry quantized tensors (run-time tensors get Q/DQ, constants are
  stored as int8 weights); None: every input (Concat). Once one of them comes from a
  DequantizeLinear, all of them must.
- ``weight`` / ``weight_axis`` / ``bias``: the weight slot, its output-channel axis (per-channel
  weights) and the bias slot, whose quantized form follows the preset's bias rule.
- ``constants``: slots that must hold constants for the op to be quantized (a Conv's weight, a
  Clip's bounds, a Pad's value). Shape parameters (a Reshape's shape, a Resize's sizes, a Slice's
  starts) may be computed at run time: the data passes through all the same.
- ``operands``: its quantized inputs are operands of equal standing (Add, Mul, MatMul, Concat):
  two run-time tensors, or a run-time tensor and a constant.
- ``constant_operand``: a constant operand is stored as an int8 weight (per tensor).
- ``layout``: moves values without changing or dropping any (a Q/DQ commutes with it).
- ``npu``: the Ryzen AI NPU's rule for it on fixed-point targets (see rq_common.qmath.npu_rules).
- ``scale_commutes``: f(x / s) = f(x) / s per channel for any s > 0 (positively homogeneous), so
  cross-layer equalization scales two layers through it (rq_common.qmath.equalization). Clip is
  such an op only without an upper bound: its bounds are constants the packages read.
- ``cpu``: what ONNX Runtime's CPU execution provider fuses a DQ -> op -> Q group of it into
  (its QDQ selectors, onnxruntime/core/optimizer/qdq_transformer): the placement for
  ``QdqPlacement.INTEGER_KERNELS`` follows it (rq_common.pipeline.placement).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import onnx


class Role(enum.Enum):
    OWN_SCALE = "own-scale"
    PASS_THROUGH = "pass-through"


class NpuRole(enum.Enum):
    NONE = "none"
    FUSES_ACTIVATION = "fuses-activation"  # a Relu / Clip(0, x) right after it fuses in: no Q/DQ between
    FUSED_ACTIVATION = "fused-activation"  # fuses into the op before it
    SHARED_SCALE = "shared-scale"  # its quantized inputs and its output share one scale


class CpuKernel(enum.Enum):
    """The int8 kernel ONNX Runtime's CPU provider runs an op as, by what it needs around it."""

    NONE = "none"  # no int8 kernel (LayerNormalization, Erf, Tanh): runs in float between DQ and Q
    # (pass-through ops need no kernel: the int8 values move as they are; their role says so)
    COMPUTE = "compute"  # QLinearConv, QGemm: reads and writes int8; worth it wherever it stands
    FLOAT_OUTPUT = "float-output"  # QLinearMatMul, or with a float output MatMulIntegerToFloat
    ELEMENTWISE = "elementwise"  # QLinearAdd, QLinearSigmoid, ...: pays only between int8 tensors


def _int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else int(onnx.helper.get_attribute_value(found))


@dataclass(frozen=True)
class OpFacts:
    op_type: str
    role: Role = Role.OWN_SCALE
    inputs: tuple[int, ...] | None = (0,)
    weight: int | None = None
    weight_axis: Callable[[onnx.NodeProto], int] | None = None
    bias: int | None = None
    constants: tuple[int, ...] = ()
    operands: bool = False
    constant_operand: bool = False
    layout: bool = False
    npu: NpuRole = NpuRole.NONE
    scale_commutes: bool = False
    cpu: CpuKernel = CpuKernel.NONE

    def quantized_slots(self, node: onnx.NodeProto) -> list[int]:
        """The quantized input slots this node fills."""
        indices = range(len(node.input)) if self.inputs is None else self.inputs
        return [i for i in indices if i < len(node.input) and node.input[i]]


_PASS = Role.PASS_THROUGH
_FUSES, _FUSED, _SHARED = NpuRole.FUSES_ACTIVATION, NpuRole.FUSED_ACTIVATION, NpuRole.SHARED_SCALE
# measured in ONNX Runtime 1.32's optimized graphs (rq-onnx tests/test_cpu_kernels.py): Relu / Clip drop out
# before a Q whose range starts at their bound; Resize and the pass-through ops run on the int8 values
_COMPUTE, _FLOAT_OUTPUT, _ELEMENTWISE = CpuKernel.COMPUTE, CpuKernel.FLOAT_OUTPUT, CpuKernel.ELEMENTWISE

OP_TABLE: dict[str, OpFacts] = {
    facts.op_type: facts
    for facts in (
        # compute ops: an int8 weight, an optional bias, an own output scale
        OpFacts("Conv", inputs=(0, 1), weight=1, weight_axis=lambda node: 0, bias=2, constants=(1, 2), npu=_FUSES, cpu=_COMPUTE),
        OpFacts("ConvTranspose", inputs=(0, 1), weight=1, weight_axis=lambda node: 1, bias=2, constants=(1, 2), npu=_FUSES),
        OpFacts(
            "Gemm",
            inputs=(0, 1),
            weight=1,
            weight_axis=lambda node: 0 if _int_attribute(node, "transB", 0) else 1,
            bias=2,
            constants=(2,),
            npu=_FUSES,
            cpu=_COMPUTE,
        ),
        OpFacts("MatMul", inputs=(0, 1), weight=1, weight_axis=lambda node: -1, operands=True, npu=_FUSES, cpu=_FLOAT_OUTPUT),
        # elementwise, combining and reducing ops with their own output scale
        OpFacts("Add", inputs=(0, 1), operands=True, constant_operand=True, npu=_FUSES, cpu=_ELEMENTWISE),
        OpFacts("Mul", inputs=(0, 1), operands=True, constant_operand=True, cpu=_ELEMENTWISE),
        OpFacts("Concat", inputs=None, operands=True, npu=_SHARED, cpu=_ELEMENTWISE),
        OpFacts("AveragePool", npu=_SHARED, scale_commutes=True, cpu=_ELEMENTWISE),
        OpFacts("GlobalAveragePool", scale_commutes=True, cpu=_ELEMENTWISE),
        OpFacts("ReduceMean", constants=(1,)),
        OpFacts("Resize", cpu=_ELEMENTWISE),  # roi / scales / sizes: parameters, constant or computed from a Shape
        OpFacts("LayerNormalization"),
        # activations
        OpFacts("Relu", npu=_FUSED, scale_commutes=True, cpu=_ELEMENTWISE),
        OpFacts("Clip", constants=(1, 2), npu=_FUSED, cpu=_ELEMENTWISE),
        OpFacts("LeakyRelu", scale_commutes=True, cpu=_ELEMENTWISE),
        OpFacts("PRelu", inputs=(0, 1), constant_operand=True, scale_commutes=True),  # the slope: an int8 constant
        OpFacts("Sigmoid", cpu=_ELEMENTWISE),
        OpFacts("HardSigmoid"),
        OpFacts("HardSwish"),
        OpFacts("Tanh"),
        OpFacts("Softmax", cpu=_ELEMENTWISE),
        OpFacts("Erf"),
        OpFacts("Gelu"),  # opset 20; a written-out GELU is fused to it there (format.smooth_activations)
        OpFacts("Swish"),  # opset 24: SiLU
        # pass-through ops: the output is the input's values rearranged (or their max): same scale
        OpFacts("Reshape", _PASS, layout=True),  # the shape may be computed (Shape -> Gather -> Concat)
        OpFacts("Transpose", _PASS, layout=True),
        OpFacts("Flatten", _PASS, layout=True),
        OpFacts("Squeeze", _PASS, layout=True),
        OpFacts("Unsqueeze", _PASS, layout=True),
        OpFacts("Identity", _PASS, layout=True, scale_commutes=True),
        OpFacts("Slice", _PASS),
        OpFacts("Split", _PASS),
        OpFacts("Gather", _PASS),
        OpFacts("MaxPool", _PASS, npu=_SHARED, scale_commutes=True),
        OpFacts("Pad", _PASS, constants=(2,)),  # the pad value must be on the int8 grid: a constant
    )
}


def facts_for(op_type: str | None) -> OpFacts | None:
    """The op's facts, or None when rq does not quantize it."""
    return OP_TABLE.get(op_type) if op_type is not None else None


def ops_where(test: Callable[[OpFacts], bool]) -> frozenset[str]:
    """The op types whose facts pass ``test``: the way to name a set of ops (no lists elsewhere)."""
    return frozenset(op for op, facts in OP_TABLE.items() if test(facts))


def has_npu_role(op_type: str | None, role: NpuRole) -> bool:
    facts = facts_for(op_type)
    return facts is not None and facts.npu is role
