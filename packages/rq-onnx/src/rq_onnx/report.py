"""The per-tensor report: SQNR of the quantized model's tensors against the float model's."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from rq_common.qmath import QParams
from rq_common.report import QuantReport
from rq_onnx.calibrate import make_session, with_outputs


def _fit_batch(feeds: Iterable[dict[str, np.ndarray]], model: onnx.ModelProto):
    """Split batches into single samples where the quantized model has batch 1 (npu_cnn)."""
    fixed_one = any(v.type.tensor_type.shape.dim and v.type.tensor_type.shape.dim[0].dim_value == 1 for v in model.graph.input)
    for feed in feeds:
        size = len(next(iter(feed.values())))
        if not fixed_one or size == 1:
            yield feed
        else:
            yield from ({k: v[i : i + 1] for k, v in feed.items()} for i in range(size))


def error_report(
    float_model: onnx.ModelProto,
    quantized_model: onnx.ModelProto,
    dequantized: dict[str, str],
    qparams: dict[str, QParams],
    feeds: Iterable[dict[str, np.ndarray]],
    report: QuantReport,
) -> QuantReport:
    """Run both models on ``feeds``; compare each quantized tensor with its float original."""
    float_names = list(dequantized)
    quant_names = [dequantized[t] for t in float_names]
    float_session = make_session(with_outputs(float_model, float_names))
    quant_session = make_session(with_outputs(quantized_model, quant_names))
    for feed in _fit_batch(feeds, quantized_model):
        reference = dict(zip([o.name for o in float_session.get_outputs()], float_session.run(None, feed), strict=True))
        reference.update(feed)
        approx = dict(zip([o.name for o in quant_session.get_outputs()], quant_session.run(None, feed), strict=True))
        for tensor, name in zip(float_names, quant_names, strict=True):
            report.stats(tensor).update(reference[tensor], approx[name], qparams.get(tensor))
    return report
