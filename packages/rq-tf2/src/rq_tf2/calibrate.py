"""calibrate(): observe activations over batches, then fix every scale (rq_common decides).

Which quantizer feeds which twin (for the int32 bias scale and the NPU's shift rules) is read from
the quantized model's graph, so a model loaded from a .keras file calibrates and exports the same
as the one quantize_model returned.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from rq_common.errors import CalibrationDataError
from rq_common.pipeline import ConstantOperand, Layer, ModelView, Weight
from rq_common.pipeline import finalize as finalize_view
from rq_common.pipeline.placement import FloatOp
from rq_tf2.errors import NotCalibratedError, unwrapped
from rq_tf2.graph import functional_graph
from rq_tf2.layers import BiasAdd, ExportableLayerNormalization, QuantWeightedMixin
from rq_tf2.quantizer import ActivationQuantizer, Mode
from rq_tf2.rules import is_add, is_fusable_activation


@dataclass
class Links:
    """The quantized model's wiring, read from its graph."""

    quantizers: list[ActivationQuantizer] = field(default_factory=list)
    twins: list[QuantWeightedMixin] = field(default_factory=list)
    layer_norms: list[ExportableLayerNormalization] = field(default_factory=list)
    input_of: dict[str, ActivationQuantizer] = field(default_factory=dict)  # twin name -> quantizer of its input
    output_of: dict[str, ActivationQuantizer] = field(default_factory=dict)  # through a fused activation
    adds: list[list[ActivationQuantizer]] = field(default_factory=list)


def links(model: keras.Model) -> Links:
    graph = functional_graph(model)
    producer = {t: node for node in graph.nodes for t in node.outputs}
    found = Links()
    seen: set[int] = set()
    for node in graph.nodes:
        layer = node.operation
        if isinstance(layer, ActivationQuantizer) and id(layer) not in seen:
            found.quantizers.append(layer)
            seen.add(id(layer))
        if isinstance(layer, ExportableLayerNormalization) and id(layer) not in seen:
            found.layer_norms.append(layer)
            seen.add(id(layer))
        if isinstance(layer, QuantWeightedMixin) and id(layer) not in seen:
            found.twins.append(layer)
            seen.add(id(layer))
            source = producer.get(node.inputs[0])
            if source is not None and isinstance(source.operation, ActivationQuantizer):
                found.input_of[layer.name] = source.operation
            after = _quantizer_after(graph, node.outputs[0])
            if after is not None:
                found.output_of[layer.name] = after
        if is_add(layer) and len(node.inputs) == 2:
            sources = [producer.get(t) for t in node.inputs]
            found.adds.append([s.operation for s in sources if s is not None and isinstance(s.operation, ActivationQuantizer)])
    if not found.quantizers:
        raise NotCalibratedError(f"'{model.name}' has no rq quantizers: make it with rq_tf2.quantize_model first")
    return found


def _quantizer_after(graph, tensor) -> ActivationQuantizer | None:
    readers = graph.readers(tensor)
    if len(readers) != 1:
        return None
    reader = readers[0].operation
    if isinstance(reader, ActivationQuantizer):
        return reader
    if is_fusable_activation(reader):
        return _quantizer_after(graph, readers[0].outputs[0])
    return None


# -- data ------------------------------------------------------------------------------------------
def _batches(data, batch_size: int, input_count: int) -> Iterator:
    """Batches from a tf.data.Dataset (of x, (x, y...) or dicts), numpy arrays (split into
    batches), a list of arrays (one per input), a keras PyDataset, or any iterable of batches."""
    if isinstance(data, (np.ndarray, tf.Tensor)):
        array = np.asarray(data)
        for start in range(0, len(array), batch_size):
            yield array[start : start + batch_size]
        return
    if (
        isinstance(data, (list, tuple))
        and input_count > 1
        and len(data) == input_count
        and all(isinstance(a, np.ndarray) for a in data)
    ):
        for start in range(0, len(data[0]), batch_size):
            yield [a[start : start + batch_size] for a in data]
        return
    if isinstance(data, keras.utils.PyDataset):
        for index in range(len(data)):
            yield data[index]
        return
    yield from data


def sample_shape(data, batch_size: int) -> tuple[tuple | None, Iterable]:
    """The shape of one sample of the first calibration batch (its first input; None where it has
    none), and the data to calibrate on: ``data`` itself, or a one-shot iterator with the batch
    read put back in front."""
    if isinstance(data, Iterator):
        batch = next(data, None)
        if batch is not None:
            data = itertools.chain([batch], data)
    else:
        batch = next(iter(_batches(data, batch_size, 1)), None)
    if isinstance(batch, (tuple, list)) and batch:  # (x, y) as fit() takes it
        batch = batch[0]
    shape = getattr(batch, "shape", None)
    if shape is None or isinstance(batch, dict) or len(shape) < 2:
        return None, data
    return tuple(None if d is None else int(d) for d in shape[1:]), data


def _inputs(batch, model: keras.Model) -> list[np.ndarray]:
    """The model's inputs from one batch (labels after the inputs are dropped)."""
    names = [t.name for t in model.inputs]
    if isinstance(batch, (tuple, list)):  # (inputs, targets[, weights]), as fit() takes them
        batch = batch[0] if len(names) == 1 or isinstance(batch[0], (tuple, list, dict)) else batch[: len(names)]
    if isinstance(batch, dict):
        missing = [n for n in names if n not in batch]
        if missing:
            raise CalibrationDataError(f"a calibration batch is a dict with keys {sorted(batch)}; the model's inputs are {names}")
        values = [batch[n] for n in names]
    else:
        values = list(batch) if isinstance(batch, (tuple, list)) else [batch]
    if len(values) != len(names):
        raise CalibrationDataError(f"a calibration batch holds {len(values)} input(s); the model takes {len(names)}: {names}")
    arrays = [np.asarray(v, dtype=np.float32) for v in values]
    for array, tensor in zip(arrays, model.inputs):
        expected = tuple(tensor.shape)
        if len(array.shape) != len(expected) or any(e is not None and e != a for e, a in zip(expected, array.shape)):
            raise CalibrationDataError(
                f"a calibration batch for input '{tensor.name}' has shape {array.shape}, but the model takes "
                f"{expected} (None: any size); batch the data and give it the model's input shape"
            )
    return arrays


def calibrate(
    model: keras.Model,
    data: Iterable,
    max_calibration_batches: int | None = None,
    batch_size: int = 32,
    quiet: bool = False,
) -> keras.Model:
    """Run ``data`` through the model with observers on (weights in float), then give every
    quantizer its scale. ``max_calibration_batches``: at most this many batches."""
    wiring = links(model)
    for q in wiring.quantizers:
        q.reset()
        q.mode = Mode.OBSERVE
    for twin in wiring.twins:
        twin.mode = Mode.OFF
    total = (
        max_calibration_batches
        if max_calibration_batches is not None
        else (len(data) if hasattr(data, "__len__") and not isinstance(data, np.ndarray) else None)
    )
    count = 0
    try:
        batches = itertools.islice(_batches(data, batch_size, len(model.inputs)), max_calibration_batches)
        for batch in tqdm(batches, total=total, desc="calibrating", disable=quiet, file=sys.stderr):
            arrays = _inputs(batch, model)
            model(arrays if len(arrays) > 1 else arrays[0], training=False)
            count += 1
    except Exception as error:
        for q in wiring.quantizers:
            q.mode = Mode.QUANTIZE if q.is_calibrated else Mode.OFF
        original = unwrapped(error)  # an observer's NaN error, as rq raised it: one line
        if original is error:
            raise
        raise original from None
    if count == 0:
        for q in wiring.quantizers:
            q.mode = Mode.OFF
        raise CalibrationDataError("calibration got no batches; pass a dataset or arrays with at least one sample")
    finalize(model, wiring)
    return model


def finalize(model: keras.Model, wiring: Links | None = None) -> list[str]:
    """Fix activation, weight and bias scales (rq_common.pipeline.finalize decides, the NPU's position
    rules included) and write them into the layers' weights. Returns the notes."""
    wiring = wiring or links(model)
    preset = wiring.quantizers[0].preset
    for q in wiring.quantizers:
        q.finalize()
    key = {id(q): q.name for q in wiring.quantizers}
    kept_float = {op.node for op in getattr(model, "rq_float_ops", [])}
    twins = [twin for twin in wiring.twins if twin.name not in kept_float]
    layers = []
    for twin in twins:
        source, output = wiring.input_of.get(twin.name), wiring.output_of.get(twin.name)
        bias = None if twin.constant_operand else twin.float_bias()
        if bias is not None and source is None:
            raise NotCalibratedError(f"layer '{twin.name}' has a bias but no quantized input; this model was not made by rq_tf2")
        layers.append(
            Layer(
                twin.name,
                twin.name,
                key[id(source)] if source is not None else None,
                key[id(output)] if output is not None else None,
                None if bias is None else np.asarray(bias),
                shifted=not twin.constant_operand,
            )
        )
    view = ModelView(
        activations={q.name: q.qparams() for q in wiring.quantizers},
        weights={t.name: Weight(t.float_weight_view(), t.weight_spec.axis if t.weight_spec.per_channel else None) for t in twins},
        layers=layers,
        adds=[[key[id(q)] for q in add] for add in wiring.adds]
        + [  # a Dense's bias Add on 3-d inputs: the NPU aligns the constant's position too
            [key[id(wiring.input_of[t.name])], ConstantOperand(t.name)]
            for t in twins
            if isinstance(t, BiasAdd) and t.name in wiring.input_of
        ],
    )
    result = finalize_view(view, preset)
    notes = list(getattr(model, "rq_quantize_notes", [])) + list(result.notes)
    for q in wiring.quantizers:
        if result.activations[q.name] is not view.activations[q.name]:
            q.scale.assign(np.float32(result.activations[q.name].scale))
    for twin in twins:
        if twin.name in result.unrepairable:
            reason = f"{result.unrepairable[twin.name]}: runs in float"
            _keep_in_float(model, twin, reason)
            notes.append(f"{twin.name}: kept in float: {reason}")
            continue
        twin.set_weight_qparams(result.weights[twin.name])
        twin.mode = Mode.QUANTIZE
        if twin.name in result.biases:
            twin.set_input_scale(result.activations[key[id(wiring.input_of[twin.name])]])
            twin.set_bias_qparams(result.biases[twin.name])
    _forget_traced_functions(model)
    model.rq_notes = notes
    return notes


def _keep_in_float(model: keras.Model, twin: QuantWeightedMixin, reason: str) -> None:
    """A layer no NPU position can serve (rq_common's finalize names it) runs in float, as rq-onnx
    keeps such an op: its kernel unquantized and the twin uncalibrated (so a saved model loads it
    so), the activations around it quantized for their other users. The export records it as a
    float op."""
    twin.mode = Mode.OFF
    twin.calibrated.assign(0.0)
    if hasattr(model, "rq_float_ops"):  # a loaded model has none: its export finds the twin by its mode
        model.rq_float_ops.append(FloatOp(twin.name, type(twin).__name__, reason))


def _forget_traced_functions(model: keras.Model) -> None:
    """Modes are Python state: functions Keras traced before (predict, fit) must be traced again."""
    for name in ("train_function", "test_function", "predict_function"):
        if hasattr(model, name):
            setattr(model, name, None)


def require_calibrated(model: keras.Model) -> Links:
    wiring = links(model)
    missing = [q.name for q in wiring.quantizers if not q.is_calibrated]
    if missing:
        raise NotCalibratedError(
            f"{len(missing)} quantizer(s) have no scale yet ({', '.join(missing[:3])}...): "
            "run rq_tf2.calibrate(qmodel, data) before exporting"
        )
    return wiring
