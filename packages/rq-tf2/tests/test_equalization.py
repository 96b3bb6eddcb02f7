"""quantize_model(equalization=...): the equalized float layers (quantizers off) compute what the
model did (to 1e-5), paired channel ranges end equal, a ReLU6 pair is left alone, and a per-tensor
int8 export of a badly scaled net comes closer to float (ONNX Runtime) with it than without."""

import keras
import numpy as np
import onnxruntime as ort
import pytest

import rq_tf2
from rq_common.errors import SpecError
from rq_tf2.transform import set_mode

L = keras.layers


def badly_scaled(activation: str = "relu") -> keras.Model:
    """Conv-BN-ReLU -> depthwise Conv-BN-act -> Conv (1x1) -> Dense-ReLU-Dense, BN statistics spread
    over four decades and the next layer compensating, as folded backbones leave channel ranges."""
    rng = np.random.default_rng(3)
    inputs = keras.Input((10, 10, 3))
    x = L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", name="conv1")(inputs))
    x = L.ReLU(name="relu1")(x)
    x = L.BatchNormalization(name="bn2")(L.DepthwiseConv2D(3, padding="same", name="dw")(x))
    x = L.ReLU(6.0 if activation == "relu6" else None, name="act2")(x)
    x = L.Conv2D(16, 1, activation="relu", name="conv3")(x)
    x = L.Flatten(name="flat")(L.MaxPooling2D(10, name="pool")(x))
    x = L.Dense(12, activation="relu", name="fc1")(x)
    model = keras.Model(inputs, L.Dense(4, name="fc2")(x))
    for bn, reader in (("bn1", "dw"), ("bn2", "conv3")):
        variance = 10.0 ** rng.uniform(-2, 2, 8)
        model.get_layer(bn).set_weights([np.ones(8), np.zeros(8), np.zeros(8), variance])
        kernel, bias = model.get_layer(reader).get_weights()
        spread = np.sqrt(variance).reshape(1, 1, -1, 1)  # the reader multiplies back what BN divided
        model.get_layer(reader).set_weights([kernel * spread, bias])
    rows = 10.0 ** rng.uniform(-1.5, 1.5, 12)
    kernel, bias = model.get_layer("fc1").get_weights()
    model.get_layer("fc1").set_weights([kernel * rows, bias * rows])
    kernel, bias = model.get_layer("fc2").get_weights()
    model.get_layer("fc2").set_weights([kernel / rows[:, None], bias])
    return model


def data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 10, 10, 3)).astype(np.float32)


def ranges(kernel: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.moveaxis(kernel, axis, 0)).reshape(kernel.shape[axis], -1).max(axis=1)


def test_equalized_layers_compute_the_same_with_equal_paired_ranges():
    model = badly_scaled()
    x = data(4, 1)
    before = [w.copy() for w in model.get_weights()]
    qmodel = rq_tf2.quantize_model(model, "npu_transformer")  # per-tensor weights: on by default
    assert qmodel.rq_quantize_notes[-1].startswith("cross-layer equalization: 3 pair(s)")  # conv1-dw, dw-conv3, fc1-fc2
    set_mode(qmodel, rq_tf2.Mode.OFF)
    expected, got = model(x).numpy(), qmodel(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    kernel = {name: np.asarray(qmodel.get_layer(name).kernel) for name in ("conv1", "dw", "conv3", "fc1", "fc2")}
    np.testing.assert_allclose(ranges(kernel["conv1"], 3), ranges(kernel["dw"], 2), rtol=1e-4)
    np.testing.assert_allclose(ranges(kernel["dw"], 2), ranges(kernel["conv3"], 2), rtol=1e-4)
    np.testing.assert_allclose(ranges(kernel["fc1"], 1), ranges(kernel["fc2"], 0), rtol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))  # the user's model is as it was


def exported_sqnr(tmp_path, equalization) -> tuple[float, list[str]]:
    model = badly_scaled()
    qmodel = rq_tf2.quantize_model(model, "npu_transformer", calib_dataset=data(32, 5), quiet=True, equalization=equalization)
    result = rq_tf2.export_onnx(qmodel, tmp_path / f"{equalization}.onnx")
    assert result.violations == []
    session = ort.InferenceSession(str(tmp_path / f"{equalization}.onnx"), providers=["CPUExecutionProvider"])
    x = data(16, 9)
    got = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i : i + 1]})[0] for i in range(16)])
    expected = model(x).numpy().astype(np.float64)
    return float(10 * np.log10((expected**2).sum() / ((got - expected) ** 2).sum())), result.notes


def test_per_tensor_int8_export_comes_closer_to_float(tmp_path):
    plain, notes = exported_sqnr(tmp_path, False)
    assert not any("equaliz" in n for n in notes)
    equalized, notes = exported_sqnr(tmp_path, None)
    assert equalized > plain + 6, (plain, equalized)  # 6 dB: a quarter of the error
    assert any("3 pair(s) of layers equalized" in n for n in notes)


def test_relu6_keeps_its_pair_apart_and_per_channel_or_qat_batchnorm_are_not_equalized():
    notes = rq_tf2.quantize_model(badly_scaled("relu6"), "npu_cnn").rq_quantize_notes
    assert "1 pair(s) joined through ReLU6 left as they are" in notes[0] and "2 pair(s) of layers equalized" in notes[-1]
    assert rq_tf2.quantize_model(badly_scaled(), "cpu").rq_quantize_notes == []
    assert rq_tf2.quantize_model(badly_scaled(), "npu_cnn", freeze_bn_after=10).rq_quantize_notes == []
    with pytest.raises(SpecError, match="use one of the two"):
        rq_tf2.quantize_model(badly_scaled(), "npu_cnn", equalization=True, freeze_bn_after=10)
