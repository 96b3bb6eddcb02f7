import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402

# ONNX Runtime's QDQ selector fuses DequantizeLinear -> op -> QuantizeLinear into its own integer
# kernels, which approximate what the graph says; disabling only that rewrite runs it as written.
INTEGER_KERNEL_FUSION = "QDQSelectorActionTransformer"


@pytest.fixture(autouse=True)
def seeded():
    keras.utils.set_random_seed(0)


def run_ort(path, feeds: dict, as_written: bool = False) -> np.ndarray:
    disabled = [INTEGER_KERNEL_FUSION] if as_written else None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return session.run(None, feeds)[0]


def output_step(path) -> float:
    """One step of the graph output: the scale of the DequantizeLinear that produces it."""
    from rq_common.format import output_qdq_params

    return float(output_qdq_params(onnx.load(str(path))).scale.reshape(-1)[0])
