import numpy as np
import onnx
import onnxruntime as ort
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def run(model: onnx.ModelProto | str, feeds: dict, as_written: bool = False) -> list[np.ndarray]:
    """ONNX Runtime's outputs; ``as_written`` without its fusion of Q/DQ into integer kernels."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    disabled = ["QDQSelectorActionTransformer"] if as_written else None
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return session.run(None, feeds)


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    error = approximation.astype(np.float64) - reference
    return float(10 * np.log10(np.sum(reference**2) / np.sum(error**2)))


class ArrayReader:
    """A minimal reader in ONNX Runtime's protocol (get_next only, no rewind), as users write them."""

    def __init__(self, name: str, data: np.ndarray, batch_size: int = 1):
        self.batches = [{name: data[i : i + batch_size]} for i in range(0, len(data), batch_size)]

    def get_next(self):
        return self.batches.pop(0) if self.batches else None
