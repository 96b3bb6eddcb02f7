"""Graph preparation before calibration: one small step per module, run in order by prepare_model."""

from __future__ import annotations

import onnx

from rq_common.format import (
    divisions_to_multiplications,
    fuse_layer_norms,
    fuse_matmul_bias,
    fuse_smooth_activations,
    fuse_written_out_activations,
)
from rq_common.format.canonicalize import SIXTEEN_BIT_OPSET
from rq_common.qmath.npu_rules import is_leaky_alpha_exact, round_leaky_alpha
from rq_common.spec import Preset
from rq_onnx.errors import ModelLoadError
from rq_onnx.prepare.cleanup import initializers_out_of_inputs, remove_dead_nodes, remove_training_nodes
from rq_onnx.prepare.fold_batchnorm import fold_batchnorm, fold_scale_shift_into_conv
from rq_onnx.prepare.fold_constants import fold_constants
from rq_onnx.prepare.load import load_model
from rq_onnx.prepare.opset import TARGET_OPSET, default_opset, opset_for, upgrade_opset

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # shape inference is a help for later steps, never a requirement
        return model


def reject_quantized(model: onnx.ModelProto) -> None:
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QDQ_OPS})
    if found:
        raise ModelLoadError(
            f"the model is already quantized (it holds {', '.join(found)}); pass the float model, "
            "or check a quantized one with `rq-onnx check`"
        )


def _count(notes: list[str], log: list[str], what: str) -> None:
    if log:
        notes.append(f"{len(log)} {what}")


def round_leaky_alphas(model: onnx.ModelProto, notes: list[str]) -> None:
    """The NPU computes LeakyRelu with alpha in steps of 1/256: calibrate what it will run."""
    for node in model.graph.node:
        if node.op_type != "LeakyRelu":
            continue
        attr = next((a for a in node.attribute if a.name == "alpha"), None)
        if attr is None:
            attr = onnx.helper.make_attribute("alpha", 0.01)
            node.attribute.append(attr)
        if not is_leaky_alpha_exact(attr.f):
            rounded = round_leaky_alpha(attr.f)
            notes.append(
                f"LeakyRelu '{node.name or node.output[0]}': alpha {attr.f:.6g} -> {rounded:.6g} ({round(rounded * 256)}/256), as the NPU computes it"
            )
            attr.f = rounded


def prepare_model(model: onnx.ModelProto, preset: Preset, notes: list[str], sixteen_bits: bool = False) -> onnx.ModelProto:
    """The float model ready to calibrate: opset 17 (21 for 16-bit tensors, or where ``sixteen_bits``
    says mixed precision may store some), no training nodes, constants folded, BN folded,
    written-out LayerNormalization and MatMul + bias fused."""
    reject_quantized(model)
    model = upgrade_opset(model, notes, SIXTEEN_BIT_OPSET if sixteen_bits else opset_for(preset))
    initializers_out_of_inputs(model, notes)
    remove_training_nodes(model, notes)
    fold_constants(model, notes)
    _count(notes, divisions_to_multiplications(model), "Div node(s) by a constant became Mul by its reciprocal")
    _count(notes, fuse_written_out_activations(model), "written-out HardSigmoid / HardSwish / PReLU chain(s) fused into one op")
    _count(notes, fuse_smooth_activations(model), "written-out GELU / SiLU chain(s) fused into one Gelu / Swish")
    model = infer_shapes(model)
    fold_batchnorm(model, notes, lone_to_depthwise=preset.target.fixed_point_rules)
    fold_scale_shift_into_conv(model, notes)
    notes.extend(fuse_layer_norms(model))  # LayerNormalization written out as a dozen ops quantizes as one op
    notes.extend(fuse_matmul_bias(model))  # a Dense written as MatMul + Add quantizes as one Gemm with an int bias
    if preset.target.fixed_point_rules:
        round_leaky_alphas(model, notes)
    remove_dead_nodes(model)
    return infer_shapes(model)


__all__ = ["TARGET_OPSET", "default_opset", "infer_shapes", "load_model", "prepare_model"]
