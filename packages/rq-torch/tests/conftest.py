import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


# ONNX Runtime's QDQ selector fuses DequantizeLinear -> op -> QuantizeLinear into its own integer
# kernels (QLinearMatMul, QLinearAdd, QLinearMul, QLinearSoftmax with an exp lookup table), which
# approximate what the graph says. Disabling only that rewrite runs the graph as written.
INTEGER_KERNEL_FUSION = "QDQSelectorActionTransformer"


def run_ort(path, feeds: dict, as_written: bool = False) -> np.ndarray:
    """ONNX Runtime's output; ``as_written`` executes the Q/DQ graph without the integer-kernel fusion."""
    disabled = [INTEGER_KERNEL_FUSION] if as_written else None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return session.run(None, feeds)[0]


def output_step(path) -> float:
    """One step of the graph output: the scale of the DequantizeLinear that produces it."""
    from rq_common.format import output_qdq_params

    return float(output_qdq_params(onnx.load(str(path))).scale.reshape(-1)[0])
