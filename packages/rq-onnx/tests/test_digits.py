"""A classifier trained on scikit-learn's load_digits keeps its accuracy after quantization."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from rq_onnx import NpzReader, quantize_static

from conftest import run


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.3, random_state=0)
    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=0).fit(x_train, y_train)
    (w1, w2), (b1, b2) = mlp.coefs_, mlp.intercepts_
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2"),
        ],
        "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path_factory.mktemp("digits")
    np.savez(folder / "calib.npz", x=x_train[:256])
    return model, folder, x_test, y_test


@pytest.mark.parametrize("preset", ["cpu", "npu_cnn", "npu_transformer"])
def test_accuracy_drop_at_most_one_point(digits_model, preset):
    model, folder, x_test, y_test = digits_model
    batch = 1 if preset == "npu_cnn" else 32
    result = quantize_static(
        model, folder / f"{preset}.onnx", NpzReader(folder / "calib.npz", batch, ["x"]), preset=preset, quiet=True
    )
    assert result.violations == []
    float_acc = np.mean(run(model, {"x": x_test})[0].argmax(1) == y_test)
    if preset == "npu_cnn":  # batch 1 on the NPU
        logits = np.concatenate([run(str(result.output_path), {"x": x_test[i : i + 1]})[0] for i in range(len(x_test))])
    else:
        logits = run(str(result.output_path), {"x": x_test})[0]
    int8_acc = np.mean(logits.argmax(1) == y_test)
    assert float_acc > 0.95
    assert float_acc - int8_acc <= 0.010, (float_acc, int8_acc)
