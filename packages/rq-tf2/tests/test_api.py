"""The call shapes users bring: Sequential models, tf.data pipelines, batches with labels."""

import keras
import numpy as np
import tensorflow as tf

import rq_tf2

from conftest import run_ort

L = keras.layers


def test_sequential_model_and_tf_data_calibration(tmp_path):
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), L.Conv2D(8, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(), L.Dense(4)], name="seq"
    )
    rng = np.random.default_rng(0)
    images = rng.random((40, 8, 8, 1), np.float32)
    labels = rng.integers(0, 4, 40)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)  # (x, y) batches, as fit() takes
    qmodel = rq_tf2.quantize_model(model, preset="npu_cnn")
    rq_tf2.calibrate(qmodel, dataset, max_calibration_batches=3, quiet=True)
    observed = rq_tf2.quantize_model(model, preset="npu_cnn")
    rq_tf2.calibrate(observed, images[:24], batch_size=8, quiet=True)  # the same 24 samples as arrays
    scales = lambda m: [float(layer.scale.numpy()) for layer in m.layers if isinstance(layer, rq_tf2.ActivationQuantizer)]  # noqa: E731
    assert scales(qmodel) == scales(observed)
    input_name = qmodel.inputs[0].name
    result = rq_tf2.export_onnx(qmodel, tmp_path / "seq.onnx")
    assert result.violations == []
    x = images[:4]
    np.testing.assert_array_equal(run_ort(tmp_path / "seq.onnx", {input_name: x}, as_written=True), np.asarray(qmodel(x)))


def test_multi_input_model_with_dict_batches(tmp_path):
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    out = L.Dense(3, name="fc")(L.Concatenate(name="cat")([L.Dense(4, name="fa")(a), L.Dense(4, name="fb")(b)]))
    model = keras.Model([a, b], out)
    rng = np.random.default_rng(1)
    data = [
        {"a": rng.standard_normal((8, 6)).astype(np.float32), "b": rng.standard_normal((8, 6)).astype(np.float32)}
        for _ in range(3)
    ]
    qmodel = rq_tf2.quantize_model(model, preset="cpu")
    rq_tf2.calibrate(qmodel, data, quiet=True)
    result = rq_tf2.export_onnx(qmodel, tmp_path / "two.onnx")
    assert result.violations == []
    feeds = data[0]
    got = run_ort(tmp_path / "two.onnx", feeds, as_written=True)
    expected = np.asarray(qmodel([feeds["a"], feeds["b"]]))
    assert np.abs(got - expected).max() <= float(qmodel.get_layer("fc_quant").scale.numpy()) * 1.0001


def regularized_model() -> keras.Model:
    """A Keras 2 habit: L2 / L1 penalties on kernels, biases and activations (and a BN's gamma)."""
    R = keras.regularizers
    inputs = keras.Input((8, 8, 3), name="x")
    conv = keras.layers.Conv2D(
        4,
        3,
        activation="relu",
        kernel_regularizer=R.L2(0.1),
        bias_regularizer=R.L1(0.2),
        activity_regularizer=R.L2(0.05),
        name="conv",
    )
    y = keras.layers.BatchNormalization(gamma_regularizer=R.L2(0.3), name="bn")(
        keras.layers.MaxPooling2D(name="pool")(conv(inputs))
    )
    y = keras.layers.Dense(2, kernel_regularizer=R.L2(0.1), name="fc")(keras.layers.Flatten(name="flat")(y))
    model = keras.Model(inputs, y)
    conv.bias.assign(np.linspace(-0.5, 0.5, 4).astype(np.float32))
    return model


def test_regularizers_are_left_out_unless_kept():
    model = regularized_model()
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype(np.float32)
    model(x)
    float_losses = sorted(float(v) for v in model.losses)
    conv = model.get_layer("conv")
    by_hand = 0.1 * np.sum(np.asarray(conv.kernel) ** 2)  # the conv's L2 term, computed here
    assert len(float_losses) == 5 and any(np.isclose(v, by_hand, rtol=1e-5) for v in float_losses)

    qmodel = rq_tf2.quantize_model(model, preset="cpu")  # the BN after a pool stays a float copy
    qmodel(x)
    assert qmodel.losses == []
    assert all(getattr(layer, "kernel_regularizer", None) is None for layer in qmodel.layers)

    kept = rq_tf2.quantize_model(model, preset="cpu", keep_regularizers=True)
    kept(x)  # quantizers off: the same values, so the same penalties (the activity one after the split-off ReLU)
    np.testing.assert_allclose(sorted(float(v) for v in kept.losses), float_losses, rtol=1e-5)
    assert kept.get_layer("conv").activity_regularizer is None and kept.get_layer("conv_activation").activity_regularizer
    assert len(model.losses) == 5 and conv.kernel_regularizer is not None  # the float model is unchanged
