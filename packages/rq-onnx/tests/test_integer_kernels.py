"""QdqPlacement.INTEGER_KERNELS end to end on a transformer block: the written model passes the
format check, ONNX Runtime runs every weighted MatMul in an int8 kernel (QLinearMatMul, QGemm with
a float output, MatMulIntegerToFloat; none in float on dequantized weights), and the float residual
stream, LayerNorm and GELU bring the output closer to float than Q/DQ on every op."""

import nets
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from rq_common.format import validate
from rq_common.spec import get_preset
from rq_onnx import ArrayReader, quantize_static

from conftest import run, sqnr_db


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_integer_kernels_run_every_matmul_in_int8_and_keep_the_residual_stream_float(tmp_path, rng):
    model = nets.transformer_encoder_net()
    tokens = rng.standard_normal((64, 8, 32)).astype(np.float32)
    tokens[..., 3] *= 20  # an outlier channel in the residual stream, as trained transformers have
    results = {
        qdq: quantize_static(model, None, ArrayReader({"tokens": tokens[:48]}, 4), get_preset("cpu", qdq=qdq), quiet=True)
        for qdq in ("every_op", "integer_kernels")
    }
    kept = results["integer_kernels"].model
    assert validate(kept, "cpu") == []
    optimized = _optimized_ops(kept, tmp_path)
    assert "Gemm" not in optimized and "MatMul" not in optimized, optimized
    assert optimized.count("QGemm") + optimized.count("QLinearMatMul") + optimized.count("MatMulIntegerToFloat") == 8
    reference = run(model, {"tokens": tokens[48:]})[0]
    sqnr = {qdq: sqnr_db(reference, run(r.model, {"tokens": tokens[48:]})[0]) for qdq, r in results.items()}
    assert sqnr["integer_kernels"] > sqnr["every_op"] + 3, sqnr
    layer_norm_inputs = {n.input[0] for n in kept.graph.node if n.op_type == "LayerNormalization"}
    producers = {o: n.op_type for n in kept.graph.node for o in n.output}
    assert {producers.get(t) for t in layer_norm_inputs} <= {"Add", None}  # graph input or residual Add: no DQ


def test_a_matmuls_int32_bias_is_checked_like_any_other(rng):
    tokens = rng.standard_normal((16, 8, 32)).astype(np.float32)
    preset = get_preset("cpu", qdq="integer_kernels")
    model = quantize_static(nets.transformer_encoder_net(), None, ArrayReader({"tokens": tokens}, 4), preset, quiet=True).model
    scales = [t for t in model.graph.initializer if t.name.endswith("_bias_scale")]
    assert scales and validate(model, preset) == []
    doubled = numpy_helper.to_array(scales[0]) * 2
    scales[0].CopyFrom(numpy_helper.from_array(doubled, scales[0].name))
    assert [v.kind.value for v in validate(model, preset)] == ["bias-scale-mismatch"]
