"""One adapter per framework: the float model written as ONNX, rq's quantizer for that framework,
and ONNX Runtime's own quantizer on the float ONNX (the anchor). Each runs in the job process
(``zoo.job``), so torch and TensorFlow are imported only where a model of theirs is quantized."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from rq_common.pipeline.accuracy_loop import AccuracyTarget
from rq_onnx.readers import FeedListReader
from zoo.kinds import Framework, FrozenGraph, Samples
from zoo.variants import Algorithm, Variant

if TYPE_CHECKING:
    from zoo.core import ZooModel

OPSET = 17


# -- the float model as ONNX -------------------------------------------------------------------------
def export_float(entry: ZooModel, model: Any, path: Path) -> Path:
    example = entry.example()
    return FLOAT_EXPORTS[entry.framework](entry, model, example, path)


def _onnx_float(entry: ZooModel, model: onnx.ModelProto, example, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _torch_float(entry: ZooModel, model, example, path: Path) -> Path:
    import torch

    args = entry.torch_inputs(example)
    names = [f"input_{i}" for i in range(len(args))]
    with torch.no_grad():
        torch.onnx.export(model, args, str(path), opset_version=OPSET, dynamo=False, input_names=names, do_constant_folding=True)
    return path


def keras_function(model, example: tuple[np.ndarray, ...]):
    """A tf.function over the Keras model for tf2onnx's from_function (its from_keras does not take
    Keras 3), with the batch dimension left free."""
    import tensorflow as tf

    spec = [tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype), name=f"input_{i}") for i, a in enumerate(example)]

    @tf.function(input_signature=spec)
    def forward(*inputs):
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    return forward, spec


def _keras_float(entry: ZooModel, model, example, path: Path) -> Path:
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    forward, spec = keras_function(model, example)
    exported, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET)
    onnx.save(exported, path)
    return path


def _tf1_float(entry: ZooModel, graph: FrozenGraph, example, path: Path) -> Path:
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph.path.read_bytes())
    exported, _ = tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=[f"{n}:0" for n in graph.input_nodes],
        output_names=[f"{n}:0" for n in graph.output_nodes],
        opset=OPSET,
    )
    onnx.save(exported, path)
    return path


FLOAT_EXPORTS: dict[Framework, Callable] = {
    Framework.ONNX: _onnx_float,
    Framework.TORCH: _torch_float,
    Framework.TF2: _keras_float,
    Framework.TF1: _tf1_float,
}


# -- rq, through the framework's own package ----------------------------------------------------------
class SampleReader(FeedListReader):
    """ONNX Runtime's CalibrationDataReader protocol over zoo samples (input names by position)."""

    def __init__(self, samples: Samples, input_names: list[str]):
        super().__init__([dict(zip(input_names, sample, strict=True)) for sample in samples.inputs])


def input_names(path: Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def rq_quantize(entry: ZooModel, model: Any, calibration: Samples, preset: str, out: Path, work: Path) -> dict:
    """rq's defaults for ``preset``, through the framework's package; returns what it reported."""
    return RQ_QUANTIZERS[entry.framework](entry, model, calibration, preset, out, work)


def _rq_onnx(entry, model: onnx.ModelProto, calibration: Samples, preset: str, out: Path, work: Path) -> dict:
    from rq_onnx import quantize_static

    float_path = work / "float.onnx"
    if not float_path.exists():
        entry.export_float(model, float_path)
    arguments = Variant.parse(preset).onnx_arguments()
    if "target" in arguments:
        arguments["target"] = task_target(entry, arguments["target"], calibration)
    result = quantize_static(float_path, out, SampleReader(calibration, input_names(float_path)), quiet=True, **arguments)
    return _summary(result)


def task_target(entry: ZooModel, target: AccuracyTarget, calibration: Samples) -> AccuracyTarget:
    """The accuracy loop as a user with labels runs it: scored by the model's own headline metric
    (against the truth, or float where that is the metric) on the last quarter of the calibration
    samples, which it holds out of calibration (8 samples would score exact match in steps of 1/8)."""
    holdout = max(target.holdout, len(calibration) // 4)
    truth = calibration.truth[-holdout:] if calibration.truth is not None else None
    held_out = Samples(calibration.inputs[-holdout:], truth)
    sign = 1.0 if entry.higher_is_better else -1.0

    def headline(outputs, reference) -> float:
        scores = entry.score([list(o) for o in outputs], [list(r) for r in reference], held_out)
        return sign * next(iter(scores.values()))

    return replace(target, metric=headline, holdout=holdout)


def _rq_torch(entry, model, calibration: Samples, preset: str, out: Path, work: Path) -> dict:
    import rq_torch

    example = entry.torch_inputs(calibration.inputs[0])
    variant = Variant.parse(preset)
    qmodel = rq_torch.quantize_model(model, example, **variant.framework_arguments())
    options = {
        "bias_correction": Algorithm.BIAS_CORRECTION in variant.algorithms,
        "rounding": "adaround" if Algorithm.ADAROUND in variant.algorithms else "nearest",
    }
    rq_torch.calibrate(qmodel, [entry.torch_inputs(s) for s in calibration.inputs], quiet=True, **options)
    result = rq_torch.export_onnx(qmodel, example, out)
    return _summary(result)


def _rq_tf2(entry, model, calibration: Samples, preset: str, out: Path, work: Path) -> dict:
    import rq_tf2

    batches = [s if len(s) > 1 else s[0] for s in calibration.inputs]
    qmodel = rq_tf2.quantize_model(model, calib_dataset=batches, quiet=True, **Variant.parse(preset).framework_arguments())
    result = rq_tf2.export_onnx(qmodel, out)
    return _summary(result)


def _rq_tf1(entry, graph: FrozenGraph, calibration: Samples, preset: str, out: Path, work: Path) -> dict:
    import rq_tf1

    feeds = [dict(zip(graph.input_nodes, s, strict=True)) for s in calibration.inputs]
    output_dir = work / f"tf1_{preset}"
    shapes = ":".join(",".join("?" if d is None else str(d) for d in shape) for shape in graph.input_shapes)
    result = rq_tf1.quantize_frozen_graph(
        graph.path,
        graph.input_nodes,
        graph.output_nodes,
        lambda i: feeds[i],
        max_calibration_batches=len(feeds),
        output_dir=output_dir,
        input_shapes=shapes,
        quiet=True,
        **Variant.parse(preset).framework_arguments(),
    )
    shutil.copyfile(result.path, out)
    return _summary(result)


def _summary(result) -> dict:
    """What a quantizer reported (every package returns rq_common.pipeline.QuantizeResult), as JSON."""
    return {
        "violations": [str(v) for v in result.violations],
        "notes": [str(n) for n in result.notes],
        "float_ops": [f"{op.node}: {op.reason}" for op in result.float_ops],
    }


RQ_QUANTIZERS: dict[Framework, Callable] = {
    Framework.ONNX: _rq_onnx,
    Framework.TORCH: _rq_torch,
    Framework.TF2: _rq_tf2,
    Framework.TF1: _rq_tf1,
}


# -- ONNX Runtime's quantizer, the anchor ----------------------------------------------------------------
def ort_quantize(float_path: Path, calibration: Samples, out: Path) -> dict:
    """``quant_pre_process`` + ``quantize_static``: QDQ, uint8 activations, int8 per-channel weights,
    MinMax, as its documentation recommends for the CPU. It writes temporary files into the working
    folder, so it runs in a scratch folder."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    scratch = Path(tempfile.mkdtemp(prefix="ort-quant-"))
    here = os.getcwd()
    try:
        os.chdir(scratch)
        prepared = scratch / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            SampleReader(calibration, input_names(float_path)),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        os.chdir(here)
        shutil.rmtree(scratch, ignore_errors=True)
    return {"violations": [], "notes": [], "float_ops": []}  # ORT reports none of these
