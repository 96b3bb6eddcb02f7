"""A classifier trained on scikit-learn's load_digits keeps its accuracy after quantization."""

import nets
import numpy as np
import pytest

from rq_onnx import NpzReader, quantize_static

from conftest import run


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    model, x_train, x_test, _, y_test = nets.digits_mlp()
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
        logits = np.concatenate([run(str(result.path), {"x": x_test[i : i + 1]})[0] for i in range(len(x_test))])
    else:
        logits = run(str(result.path), {"x": x_test})[0]
    int8_acc = np.mean(logits.argmax(1) == y_test)
    assert float_acc > 0.95
    assert float_acc - int8_acc <= 0.010, (float_acc, int8_acc)
