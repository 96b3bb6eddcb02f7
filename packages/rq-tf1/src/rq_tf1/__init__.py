"""rq-tf1: quantize TF1 frozen graphs (vai_q_tensorflow's flow, on tf.compat.v1) to rq's int8 ONNX.

result = rq_tf1.quantize_frozen_graph("model.pb", ["input"], ["logits"], "calib.input_fn", max_calibration_batches=100, output_dir="out")
"""

from rq_common.pipeline import QuantizeResult
from rq_tf1.api import (
    EVAL_MODEL,
    ONNX_MODEL,
    inspect_frozen_graph,
    parse_input_shapes,
    quantize_frozen_graph,
    run_eval_model,
)
from rq_tf1.errors import GraphError, InputFnError
from rq_tf1.transforms import fold_batchnorms, fold_constants, normalize_bias_adds, prepare, strip_training_nodes

__version__ = "0.1.0"

__all__ = [
    "EVAL_MODEL",
    "ONNX_MODEL",
    "GraphError",
    "InputFnError",
    "QuantizeResult",
    "fold_batchnorms",
    "fold_constants",
    "inspect_frozen_graph",
    "normalize_bias_adds",
    "parse_input_shapes",
    "prepare",
    "quantize_frozen_graph",
    "run_eval_model",
    "strip_training_nodes",
]
