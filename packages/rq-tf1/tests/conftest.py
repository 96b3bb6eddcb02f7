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
    from rq_common.format import GraphIndex, qdq_params

    model = onnx.load(str(path))
    index = GraphIndex(model)
    producer = index.producers[model.graph.output[0].name]
    while producer.op_type != "DequantizeLinear":  # through an Identity tf2onnx may keep
        producer = index.producers[producer.input[0]]
    return float(qdq_params(index, producer).scale.reshape(-1)[0])


class Calibration:
    """An input_fn (vai_q's shape: iteration -> {input node: batch}) over seeded random batches."""

    def __init__(self, shape, batch=4, seed=0):
        self.rng = np.random.default_rng(seed)
        self.batches = [self.rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(8)]

    def __call__(self, iteration: int) -> dict:
        return {"x": self.batches[iteration % len(self.batches)]}
