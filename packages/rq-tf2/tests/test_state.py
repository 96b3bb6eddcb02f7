"""Save and load: a calibrated (and a QAT-trained) model keeps its scales and its outputs."""

import keras
import nets
import numpy as np

import rq_tf2

from conftest import run_ort


def calibrated(preset="npu_cnn"):
    model = nets.randomize_batchnorm(nets.mobilenet_v2_style())
    rng = np.random.default_rng(0)
    qmodel = rq_tf2.quantize_model(model, preset=preset)
    rq_tf2.calibrate(qmodel, rng.standard_normal((32, 32, 32, 3)).astype(np.float32), batch_size=8, quiet=True)
    return qmodel, rng.standard_normal((4, 32, 32, 3)).astype(np.float32)


def test_save_load_round_trip_keeps_outputs_and_export(tmp_path):
    qmodel, x = calibrated()
    qmodel.save(tmp_path / "q.keras")
    loaded = keras.models.load_model(tmp_path / "q.keras")  # registered objects: no custom_objects needed
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(qmodel(x)))
    again = rq_tf2.load_model(tmp_path / "q.keras")
    rq_layers = {type(layer).__name__ for layer in qmodel.layers if type(layer).__module__.startswith("rq_tf2")}
    assert rq_layers <= set(rq_tf2.custom_objects())
    assert {type(layer).__name__ for layer in again.layers} >= {"ActivationQuantizer", "QuantConv2D", "QuantDepthwiseConv2D"}
    # the loaded model's graph lists its ops in another order, so tf2onnx keeps other names for
    # shared constants; the integers, scales and outputs are the same
    a = rq_tf2.export_onnx(qmodel, tmp_path / "a.onnx").model
    b = rq_tf2.export_onnx(loaded, tmp_path / "b.onnx").model
    assert sorted(t.raw_data for t in a.graph.initializer) == sorted(t.raw_data for t in b.graph.initializer)
    np.testing.assert_array_equal(run_ort(tmp_path / "a.onnx", {"x": x}), run_ort(tmp_path / "b.onnx", {"x": x}))


def test_qat_model_round_trip_with_batchnorm_kept_apart(tmp_path):
    model = nets.randomize_batchnorm(nets.resnet_style())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    qmodel = rq_tf2.quantize_model(model, preset="cpu", freeze_bn_after=1)
    rq_tf2.calibrate(qmodel, x, batch_size=8, quiet=True)
    qmodel.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, batch_size=8, epochs=1, verbose=0)
    qmodel.save(tmp_path / "qat.keras")
    loaded = rq_tf2.load_model(tmp_path / "qat.keras")
    np.testing.assert_array_equal(np.asarray(loaded(x[:4])), np.asarray(qmodel(x[:4])))
    assert int(loaded.get_layer("stem_conv").bn_steps.numpy()) == 1  # frozen after one step, and still


def test_export_is_deterministic(tmp_path):
    for name in ("a", "b"):
        keras.utils.set_random_seed(0)
        qmodel, _ = calibrated("cpu")
        rq_tf2.export_onnx(qmodel, tmp_path / f"{name}.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
