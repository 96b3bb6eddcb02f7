import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def run_ort(path, feeds: dict, as_written: bool = False) -> np.ndarray:
    """ONNX Runtime's output; ``as_written`` leaves out its fusion into integer kernels."""
    disabled = ["QDQSelectorActionTransformer"] if as_written else None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return session.run(None, feeds)[0]


def output_step(path) -> float:
    """One step of the graph output: the scale of the DequantizeLinear that produces it."""
    from rq_common.format import output_qdq_params

    return float(output_qdq_params(onnx.load(str(path))).scale.reshape(-1)[0])


class Calibration:
    """An input_fn (vai_q's shape: iteration -> {input node: batch}) over seeded random batches."""

    def __init__(self, shape, batch=4, seed=0):
        self.rng = np.random.default_rng(seed)
        self.batches = [self.rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(8)]

    def __call__(self, iteration: int) -> dict:
        return {"x": self.batches[iteration % len(self.batches)]}
