"""quantize_model: expand the Keras graph into ops by layer rules, place quantizers with rq_common's
placement (the same rules as rq-onnx and rq-torch), and rebuild the model with quantized twins
and ActivationQuantizer layers where the placement says."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
from keras import tree

from rq_common.errors import SpecError
from rq_common.optable import facts_for
from rq_common.pipeline.placement import EXCLUDED, FloatOp, OpNode, follows_from_others, place_quantizers
from rq_common.qmath.equalization import Equalization, equalization_for
from rq_common.spec import Preset, get_preset, require_eight_bit_activations
from rq_tf2.attention import decompose_attention, parts_of
from rq_tf2.calibrate import calibrate, sample_shape
from rq_tf2.equalize import equalized_weights
from rq_tf2.graph import FunctionalGraph, GraphNode, functional_graph, is_subclassed, rebuild, trace_shape
from rq_tf2.layers import QUANT_TWINS, QuantWeightedMixin
from rq_tf2.quantizer import ActivationQuantizer, Mode
from rq_tf2.rules import RuleContext, Step, steps_for


@dataclass(frozen=True)
class LayerConfig:
    """Per-layer settings: keep the layer in float, or quantize its weights and its output by another
    preset of the same target (``get_preset("cpu", weight_method="minmax", per_channel=False)``)."""

    exclude: bool = False
    preset: Preset | str | None = None


@dataclass
class _Expanded:
    steps: list[Step]
    keys: list[tuple[tuple, tuple]]  # per step: its input and output tensor keys
    preset: Preset


def quantize_model(
    model: keras.Model,
    preset: str | Preset = "npu_cnn",
    *,
    exclude_nodes: Sequence[str] = (),
    layer_configs: Mapping[str, LayerConfig] | None = None,
    freeze_bn_after: int | None = None,
    calib_dataset: Any = None,
    max_calibration_batches: int | None = None,
    calib_batch_size: int = 32,
    quiet: bool = False,
    keep_regularizers: bool = False,
    input_shape: tuple[int | None, ...] | None = None,
    equalization: Equalization | bool | None = None,
) -> keras.Model:
    """A quantized copy of a Sequential or Functional ``model`` (layer names and weights kept; the
    original is not changed).

    ``preset``: a name, or a Preset changed as needed (``get_preset("cpu", per_channel=False)``).
    ``exclude_nodes``: layer names to keep in float; ``layer_configs``: name -> LayerConfig.
    ``freeze_bn_after``: for QAT, keep each BatchNormalization after a Conv apart and learning from
    batch statistics for this many training steps, then frozen (None: fold it now, as PTQ does).
    ``calib_dataset`` / ``max_calibration_batches`` / ``calib_batch_size``: calibrate at once (the
    one-call form of Vitis AI's quantizer).
    ``keep_regularizers``: keep the layers' kernel / bias / activity (every ``*_regularizer``)
    penalties. Left out by default: sized for training from scratch, they dominate a QAT loss.
    ``input_shape``: one sample's shape (no batch axis), to trace a subclassed model. Left out, it is
    the one the model was built with where the calibration data fits it (built for any height and
    width: traced so), else the calibration data's where ``calib_dataset`` is given (a model built
    on a 64x64 image and calibrated on 192x192 ones is traced for 192x192), else the one Keras
    recorded or rq finds from the model's layers.
    ``equalization``: cross-layer equalization of Conv / Dense pairs joined through ReLU-like layers
    (rq_tf2.equalize): None (the default) on where the preset's weights are per tensor and BatchNorm
    is folded (rq_common's equalization_for), True / an Equalization on, False off.
    """
    preset = get_preset(preset)
    require_eight_bit_activations(preset, "rq-tf2")
    equalization = equalization_for(equalization, preset, batchnorm_kept=freeze_bn_after is not None)
    configs = dict(layer_configs or {})
    for name in exclude_nodes:
        configs[name] = LayerConfig(exclude=True)
    if input_shape is None and calib_dataset is not None and is_subclassed(model):
        data_shape, calib_dataset = sample_shape(calib_dataset, calib_batch_size)
        input_shape = trace_shape(model, data_shape)
    graph = functional_graph(model, input_shape)
    _check_names(graph, configs)
    plain, written_out = decompose_attention(graph, keep={name for name, c in configs.items() if c.exclude})
    if plain is not None:
        graph = functional_graph(plain)
        for name in written_out:  # a config given for the attention layer holds for each of its parts
            if name in configs:
                config = configs.pop(name)
                configs.update({node.name: config for node in graph.nodes if node.name in parts_of(name)})
    expanded, op_nodes, aliases, notes = _expand(graph, preset, configs, freeze_bn_after, equalization)
    outputs = [aliases.get(key, key) for key in graph.outputs]
    float_inputs = [key for key in graph.inputs if key in graph.floats]
    placement = place_quantizers(op_nodes, float_inputs, outputs, preset.target.fixed_point_rules, preset.integer_kernels_only)
    _warn_float(placement.float_ops)

    quantizers: dict[Any, ActivationQuantizer] = {}
    producers = {
        key: (step, exp.preset) for exp in expanded.values() for step, (_, outs) in zip(exp.steps, exp.keys) for key in outs
    }
    input_names = {key: t.name for key, t in zip(graph.inputs, graph.model.inputs)}
    quantized = set(placement.quantized)

    def quantize(key, tensor):
        if key not in quantized:
            return tensor
        root = placement.group_of(key)
        if root not in quantizers:
            step, layer_preset = producers.get(root, (None, preset))
            name = f"{step.name if step else _input_layer_name(input_names[root])}_quant"
            quantizers[root] = ActivationQuantizer(layer_preset, name=name)
        return quantizers[root](tensor)

    built: dict[tuple[int, int], keras.layers.Layer] = {}

    def on_node(node: GraphNode, args, kwargs):
        exp = expanded[id(node.keras_node)]
        if not exp.steps:  # a BatchNormalization folded into the Conv before it
            return args[0]
        x = None
        for i, (step, (_, outs)) in enumerate(zip(exp.steps, exp.keys)):
            key = (id(node.operation), i)
            fresh = key not in built
            if fresh:
                built[key] = step.build()
                _set_regularizers(built[key], node.operation, keep_regularizers, last=i == len(exp.steps) - 1)
            layer = built[key]
            out = layer(*args, **kwargs) if i == 0 else layer(x)
            if fresh and step.load is not None:
                step.load(layer)
            flat = tree.flatten(out)
            flat = [quantize(k, t) for k, t in zip(outs, flat)]
            x = tree.pack_sequence_as(out, flat)
        return x

    qmodel = rebuild(graph, lambda fresh: [quantize(k, t) for k, t in zip(graph.inputs, fresh)], on_node)
    qmodel.rq_float_ops = list(placement.float_ops)
    qmodel.rq_quantize_notes = notes  # what quantize_model changed (equalization): first of the notes finalize keeps
    if calib_dataset is not None:
        calibrate(qmodel, calib_dataset, max_calibration_batches, batch_size=calib_batch_size, quiet=quiet)
    return qmodel


def _check_names(graph: FunctionalGraph, configs: Mapping[str, LayerConfig]) -> None:
    names = {node.name for node in graph.nodes}
    unknown = sorted(set(configs) - names)
    if unknown:
        raise SpecError(
            "layer_configs",
            f"layer_configs / exclude_nodes name {unknown}, which the model does not have; its layers: {sorted(names)}",
        )


# layers whose rule folds a following BatchNormalization (a SeparableConv2D: into its pointwise conv)
FOLDS_BATCHNORM = (*QUANT_TWINS, keras.layers.SeparableConv2D)


def _foldable_batchnorms(graph: FunctionalGraph, configs) -> dict[int, GraphNode]:
    """Conv / Dense node id -> the BatchNormalization node that folds into it (its only reader)."""
    folds: dict[int, GraphNode] = {}
    for node in graph.nodes:
        bn = node.operation
        if not isinstance(bn, keras.layers.BatchNormalization) or configs.get(bn.name, LayerConfig()).exclude:
            continue
        source = graph.producer(node.inputs[0])
        if source is None or len(graph.readers(node.inputs[0])) != 1 or len(source.outputs) != 1:
            continue
        layer = source.operation
        folds_into = next((c for c in type(layer).__mro__ if c in FOLDS_BATCHNORM), None)
        if folds_into is None or isinstance(layer, QuantWeightedMixin) or configs.get(layer.name, LayerConfig()).exclude:
            continue
        if keras.activations.serialize(layer.activation) != "linear" or bn.axis not in (-1, graph.ranks[node.inputs[0]] - 1):
            continue
        folds[id(source.keras_node)] = node
    return folds


def _expand(graph: FunctionalGraph, preset: Preset, configs, freeze_bn_after, equalization: Equalization | None = None):
    folds = _foldable_batchnorms(graph, configs)
    weights, notes = {}, []
    if equalization is not None:
        excluded = {name for name, config in configs.items() if config.exclude or config.preset is not None}
        weights, notes = equalized_weights(graph, folds, preset, excluded, equalization)
    folded_bn = {id(bn.keras_node) for bn in folds.values()}
    aliases: dict[Any, Any] = {}
    expanded: dict[int, _Expanded] = {}
    op_nodes: list[OpNode] = []
    for node in graph.nodes:
        inputs = tuple(aliases.get(k, k) for k in node.inputs)
        config = configs.get(node.name, LayerConfig())
        layer_preset = _layer_preset(preset, config.preset)
        if id(node.keras_node) in folded_bn:
            aliases[node.outputs[0]] = inputs[0]
            expanded[id(node.keras_node)] = _Expanded([], [], layer_preset)
            continue
        if not any(key in graph.floats for key in node.outputs):
            # shape arithmetic (tf.shape -> [1] -> a Resize's size): not a float op, nothing to quantize
            expanded[id(node.keras_node)] = _Expanded(
                [_float_copy(node.operation, reason=None)], [(inputs, node.outputs)], layer_preset
            )
            continue
        if config.exclude:
            steps = [_float_copy(node.operation)]
        else:
            bn = folds.get(id(node.keras_node))
            ctx = RuleContext(
                layer_preset,
                graph.ranks.get(node.inputs[0], 0) if node.inputs else 0,
                bn.operation if bn else None,
                freeze_bn_after,
                weights.get(node.name),
            )
            steps = steps_for(node.operation, ctx)
        keys = []
        for i, step in enumerate(steps):
            step_in = inputs if i == 0 else ((id(node.keras_node), i - 1),)
            step_out = node.outputs if i == len(steps) - 1 else ((id(node.keras_node), i),)
            keys.append((step_in, step_out))
            reason = step.float_reason
            facts = facts_for(step.op)
            if facts is not None and facts.operands and len(step_in) < 2 and not step.constant_operand:
                reason = reason or f"{step.op} with a constant operand is not quantized by rq-tf2 (use a layer for the constant)"
            float_in = tuple(key for key in step_in if key in graph.floats or i > 0)  # a Resize's size is no activation
            op_nodes.append(OpNode(step.name, step.op, float_in, step_out, reason, step.fusable))
        expanded[id(node.keras_node)] = _Expanded(steps, keys, layer_preset)
    return expanded, op_nodes, aliases, notes


def _layer_preset(preset: Preset, layer: Preset | str | None) -> Preset:
    if layer is None:
        return preset
    layer = get_preset(layer)
    if layer.target != preset.target:
        raise SpecError(
            "layer_configs",
            f"a layer's preset '{layer.name}' is for target '{layer.target.name}', the model's for "
            f"'{preset.target.name}': give it a preset of the model's target",
        )
    return layer


def _float_copy(operation, reason: str | None = EXCLUDED) -> Step:
    if not isinstance(operation, keras.layers.Layer):
        return Step(operation.name, None, lambda: operation, float_reason=reason)
    values = [w.numpy() for w in operation.weights]
    return Step(
        operation.name,
        None,
        lambda: type(operation).from_config(operation.get_config()),
        (lambda new: new.set_weights(values)) if values else None,
        float_reason=reason,
    )


def _set_regularizers(layer, original, keep: bool, last: bool) -> None:
    """Drop every ``*_regularizer`` of a step's (unbuilt) layer, or, when kept, give the activity
    regularizer to the step that makes the original layer's output (after its split-off activation)."""
    if not isinstance(layer, keras.layers.Layer) or layer is original:  # never change the user's model
        return
    if keep:
        layer.activity_regularizer = getattr(original, "activity_regularizer", None) if last else None
        return
    for name, value in list(vars(layer).items()):
        if name.endswith("_regularizer") and value is not None:
            setattr(layer, name, None)


def _warn_float(float_ops: list[FloatOp]) -> None:
    for op in float_ops:
        if op.reason == EXCLUDED or follows_from_others(op.reason):
            continue
        warnings.warn(f"rq_tf2: '{op.node}' stays in float: {op.reason}", stacklevel=3)


def _input_layer_name(name: str) -> str:
    return name.split(":")[0]


def set_mode(model: keras.Model, mode: Mode) -> None:
    for layer in model.layers:
        if isinstance(layer, (ActivationQuantizer, QuantWeightedMixin)):
            layer.mode = mode if mode is not Mode.QUANTIZE or layer.is_calibrated else Mode.OFF  # a twin kept in float stays so
