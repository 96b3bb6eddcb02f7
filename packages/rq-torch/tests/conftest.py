import numpy as np
import onnxruntime as ort
import pytest
import torch


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def run_ort(path, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def output_step(path) -> float:
    """The scale of the QuantizeLinear that produces the graph output (one output step)."""
    import onnx

    from rq_common.format import GraphIndex, qdq_params

    model = onnx.load(str(path))
    index = GraphIndex(model)
    dq = index.producers[model.graph.output[0].name]
    return float(qdq_params(index, dq).scale.reshape(-1)[0])
