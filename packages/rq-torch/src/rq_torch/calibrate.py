"""calibrate(): observe activations over batches, then fix every scale (rq_common decides)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable

import numpy as np
import torch
from torch import fx
from tqdm import tqdm

from rq_common.errors import CalibrationDataError
from rq_common.pipeline import ConstantOperand, Layer, ModelView, Weight
from rq_common.pipeline import finalize as finalize_view
from rq_common.pipeline.placement import FloatOp
from rq_common.qmath.adaround import AdaptiveRounding, InputMoments, Rounding
from rq_torch.adaround import InputMomentsHooks
from rq_torch.bias_correction import InputMeans
from rq_torch.errors import NotCalibratedError
from rq_torch.modules import QuantLayerMixin
from rq_torch.quantizer import Mode, TensorQuantizer
from rq_torch.transform import lifted_constant, quant_layers


def _plan(model: fx.GraphModule):
    plan = getattr(model, "rq_plan", None)
    if plan is None:
        raise NotCalibratedError("this model was not made by rq_torch.quantize_model; quantize it first")
    return plan


def activation_quantizers(model: fx.GraphModule) -> dict[str, TensorQuantizer]:
    return {name: model.get_submodule(name) for name in _plan(model).activation_quantizers}


def _inputs(batch, count: int) -> tuple:
    """The model's inputs from one batch: a tensor, a tuple/list (labels after the inputs are
    dropped), or a dict of input name to tensor."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, np.ndarray):
        return (torch.from_numpy(batch),)
    if isinstance(batch, (tuple, list)):
        return tuple(batch[:count])
    raise CalibrationDataError(f"a calibration batch is a {type(batch).__name__}; give tensors, tuples of tensors, or dicts")


def _traced_shapes(model: fx.GraphModule) -> list[tuple[str, tuple[int, ...] | None]]:
    """(argument name, shape) of each input, in order, as quantize_model traced them: the
    placeholders' tensor_meta from its last shape propagation (None: not a tensor)."""
    shapes = []
    for node in model.graph.nodes:
        if node.op == "placeholder":
            meta = node.meta.get("tensor_meta")
            shapes.append((str(node.target), tuple(meta.shape) if hasattr(meta, "shape") else None))
    return shapes


def _check_shapes(inputs: dict[str, object], traced: dict[str, tuple[int, ...] | None], batch_number: int) -> None:
    """Only the batch size may differ from the traced example: a batch of another rank or other
    non-batch dims would fail inside torch with an error that names neither shape."""
    for name, value in inputs.items():
        expected, got = traced.get(name), getattr(value, "shape", None)
        if not expected or got is None:
            continue
        got = tuple(got)
        if len(got) != len(expected) or got[1:] != expected[1:]:
            want = ", ".join(["N", *map(str, expected[1:])])
            raise CalibrationDataError(
                f"calibration batch {batch_number}: input '{name}' has shape {list(got)}, the model was traced with "
                f"{list(expected)}; give batches of shape [{want}] (only the batch size may differ)"
            )


def calibrate(
    model: fx.GraphModule,
    data: Iterable,
    max_calibration_batches: int | None = None,
    quiet: bool = False,
    bias_correction: bool = False,
    rounding: Rounding | str = Rounding.NEAREST,
) -> fx.GraphModule:
    """Run ``data`` (a DataLoader or any iterable of batches) through the model with observers on,
    then give every quantizer its scale. Returns the model, in eval mode, quantizing.
    ``bias_correction``: correct each Conv / Linear bias for its quantized weight's rounding error
    from its float input's channel means over ``data`` (rq_common.qmath.bias_correction; for
    per-tensor weights, as rq-onnx's ``bias_correction=True``). The float biases change in place.
    ``rounding="adaround"``: each Conv2d / Linear weight rounded up or down per element to
    reconstruct its float output on ``data`` (rq_common.qmath.adaround, from its input patches'
    moments; a progress bar per layer unless ``quiet``); the float weights become the rounded ones."""
    rounding = Rounding(rounding)
    plan = _plan(model)
    quantizers = activation_quantizers(model)
    for q in quantizers.values():
        q.reset()
        q.mode = Mode.OBSERVE
    for layer in quant_layers(model):
        layer.weight_quantizer.mode = Mode.OFF
    for name, _ in plan.constants:
        model.get_submodule(name).mode = Mode.OFF
    model.eval()
    order = _traced_shapes(model)
    traced = dict(order)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLayerMixin)}
    means = InputMeans(layers) if bias_correction else None
    moments = InputMomentsHooks(layers) if rounding is Rounding.ADAROUND else None
    count = 0
    total = max_calibration_batches if max_calibration_batches is not None else (len(data) if hasattr(data, "__len__") else None)
    with torch.no_grad():
        for batch in tqdm(
            itertools.islice(data, max_calibration_batches), total=total, desc="calibrating", disable=quiet, file=sys.stderr
        ):
            count += 1
            if isinstance(batch, dict):
                _check_shapes(batch, traced, count)
                model(**batch)
            else:
                inputs = _inputs(batch, len(plan.input_names))
                _check_shapes(dict(zip([name for name, _ in order], inputs)), traced, count)
                model(*inputs)
    for hooks in (means, moments):
        if hooks is not None:
            hooks.close()
    if count == 0:
        for q in quantizers.values():
            q.mode = Mode.OFF
        raise CalibrationDataError("calibration got no batches; pass a DataLoader or an iterable with at least one batch")
    sync_observers(quantizers)
    if means is not None:
        means.synced()
    rounder = AdaptiveRounding(progress=_layer_bar(quiet)) if moments is not None else None
    finalize(model, means.laid_out() if means is not None else None, moments.result() if moments else None, rounder)
    return model


def _layer_bar(quiet: bool):
    """A progress bar over the layers adaptive rounding rounds (stderr; off when quiet)."""
    return lambda layers: tqdm(layers, desc="adaptive rounding", unit="layer", disable=quiet, file=sys.stderr)


def sync_observers(quantizers: dict[str, TensorQuantizer]) -> None:
    """Under torch.distributed, merge every rank's observer state (rq_common observers merge
    exactly), so all ranks choose the same scales from all ranks' data."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    local = {name: q.calibrator.observer.state_dict() for name, q in quantizers.items()}
    gathered: list[dict] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    for name, q in quantizers.items():
        q.reset()
        for rank_state in gathered:
            other = type(q.calibrator.observer)(name=q.tensor_name)
            other.load_state_dict(rank_state[name])
            q.calibrator.observer.merge(other)


def finalize(
    model: fx.GraphModule,
    input_means: dict[str, np.ndarray] | None = None,
    input_moments: dict[str, InputMoments] | None = None,
    rounding: AdaptiveRounding | None = None,
) -> list[str]:
    """Fix activation, weight and bias scales (rq_common.pipeline.finalize decides, the NPU's position
    rules included) and write them into the quantizers' buffers. ``input_means`` (layer -> its
    input's channel means laid out against its weight): those layers' biases are corrected and
    written back; ``input_moments`` with ``rounding``: those layers' weights rounded adaptively and
    written back. Returns the notes."""
    plan = _plan(model)
    quantizers = activation_quantizers(model)
    for q in quantizers.values():
        q.finalize()
    for name, tensor in plan.constants:
        quantizer = model.get_submodule(name)
        quantizer.reset()
        quantizer.observe(_tensor_at(model, tensor))
        quantizer.finalize()
    key = {id(q): name for name, q in quantizers.items()}
    node_of = {node.target: node.name for node in model.graph.nodes if node.op == "call_module"}
    kept_float = {op.node for op in plan.float_ops}
    layers = {
        name: m for name, m in model.named_modules() if isinstance(m, QuantLayerMixin) and node_of.get(name) not in kept_float
    }
    add_constants = {k.weight for add in plan.adds for k in add if isinstance(k, ConstantOperand)}
    weights = {
        name: Weight(layer.float_weight().detach().to(torch.float32).cpu().numpy(), layer.weight_axis)
        for name, layer in layers.items()
    }
    weights.update({name: Weight(_tensor_at(model, name).detach().cpu().numpy(), None) for name in add_constants})
    view = ModelView(
        activations={name: q.qparams() for name, q in quantizers.items()},
        weights=weights,
        layers=[
            Layer(
                name,
                name,
                key.get(id(layer.input_quantizer)),
                key.get(id(layer.output_quantizer)),
                _float_bias(layer),
                input_mean=(input_means or {}).get(name),
                input_moments=(input_moments or {}).get(name),
            )
            for name, layer in layers.items()
        ],
        adds=plan.adds,
    )
    result = finalize_view(view, plan.preset, rounding)
    notes = list(plan.notes) + list(result.notes)
    with torch.no_grad():
        for name, bias in result.corrected_biases.items():
            layers[name].bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
        for name, values in result.rounded_weights.items():  # on the grid: the weight quantizer keeps them
            layers[name].weight.copy_(torch.from_numpy(np.asarray(values, np.float32)).reshape(layers[name].weight.shape))
    if result.corrected_biases:
        notes.append(f"bias correction: {len(result.corrected_biases)} layer bias(es) corrected for their weights' rounding")
    for name, why in result.unrepairable.items():
        _keep_in_float(plan, layers.pop(name), node_of[name], name, f"{why}: runs in float")
        notes.append(f"{name}: kept in float: {why}: runs in float")
    for name, layer in layers.items():
        layer.weight_quantizer.set_qparams(result.weights[name])
        layer.weight_quantizer.mode = Mode.QUANTIZE
    for name, q in quantizers.items():
        if result.activations[name] is not view.activations[name]:
            q.scale = torch.tensor(float(result.activations[name].scale), dtype=torch.float32)
    for name, qp in result.biases.items():
        if name in layers:
            layers[name].set_bias_qparams(qp)
    _write_moved_constants(model, {name: result.weights[name] for name in add_constants})
    model.rq_notes = notes
    return notes


def _keep_in_float(plan, layer: QuantLayerMixin, node: str, target: str, reason: str) -> None:
    """A layer no NPU position can serve (rq_common's finalize names it) runs in float, as rq-onnx
    keeps such an op: its weight (and a MatMul form's bias) unquantized, the activations around it
    quantized for their other users; the export scopes and records it as a float op."""
    layer.weight_quantizer.mode = Mode.OFF
    if getattr(layer, "bias_quantizer", None) is not None:
        layer.bias_quantizer.mode = Mode.OFF
    plan.quantized_ops = [op for op in plan.quantized_ops if op != node]
    plan.float_ops.append(FloatOp(node, target, reason))


def _write_moved_constants(model: fx.GraphModule, moved: dict) -> None:
    """A lifted Add constant whose position the repair lowered: its quantizer and the one the
    placement put after it (both quantize the constant; the export holds the last) take the new QParams."""
    for node in model.graph.nodes:
        buffer = lifted_constant(model, node, model.rq_plan) if node.op == "call_module" else None
        if buffer not in moved:
            continue
        quantizer = model.get_submodule(node.target)
        if not np.array_equal(np.asarray(quantizer.qparams().scale), np.asarray(moved[buffer].scale)):
            quantizer.set_qparams(moved[buffer])


def _float_bias(layer: QuantLayerMixin) -> np.ndarray | None:
    bias = layer.float_bias()
    return None if bias is None else bias.detach().cpu().numpy()


def _tensor_at(model: torch.nn.Module, path: str) -> torch.Tensor:
    """A parameter or buffer by its dotted path."""
    owner, _, name = path.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, name)


def require_calibrated(model: fx.GraphModule) -> None:
    missing = [name for name, q in activation_quantizers(model).items() if not bool(q.calibrated)]
    if missing:
        raise NotCalibratedError(
            f"{len(missing)} quantizer(s) have no scale yet ({', '.join(missing[:3])}...): run rq_torch.calibrate(qmodel, data) before exporting"
        )
