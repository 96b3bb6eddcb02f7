"""Subclassed models whose call() mixes Keras layers with tf.* functions and nested Sequential blocks
(HED's shape: VGG blocks, side outputs resized to the input's size with tf.shape / tf.image.resize,
tf.concat, tf.nn.sigmoid): traced, quantized, exported, and each checked against the float model,
ONNX Runtime and a reload."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import rq_tf2
from rq_tf2.graph import functional_of
from rq_tf2.tf_ops import TFOpLayer

from conftest import output_step, run_ort

L = keras.layers


class SideOutputs(keras.Model):
    """Two VGG-style blocks (nested Sequentials), each with a 1x1 side output resized to the
    input's height and width, concatenated and fused, then a sigmoid."""

    def __init__(self, method="bilinear"):
        super().__init__()
        self.method = method
        self.block1 = keras.Sequential([L.Conv2D(4, 3, padding="same", activation="relu", name="b1_conv")], name="block1")
        self.block2 = keras.Sequential(
            [L.MaxPooling2D(2, name="b2_pool"), L.Conv2D(6, 3, padding="same", activation="relu", name="b2_conv")], name="block2"
        )
        self.side1 = L.Conv2D(1, 1, name="side1")
        self.side2 = L.Conv2D(1, 1, name="side2")
        self.fuse = L.Conv2D(1, 1, name="fuse")

    def call(self, x):
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        c1 = self.block1(x)
        c2 = self.block2(c1)
        s1 = self.side1(c1)
        s2 = tf.image.resize(self.side2(c2), [height, width], method=self.method)
        return tf.nn.sigmoid(self.fuse(tf.concat([s1, s2], axis=-1)))


def built_model(method="bilinear") -> keras.Model:
    model = SideOutputs(method)
    model(tf.zeros((1, 16, 16, 3)))  # built on a 16x16 image, as HED's constructor does on 64x64
    return model


def images(n: int = 8, size: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def sqnr(candidate, reference) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((candidate - reference) ** 2)))


def test_the_traced_graph_computes_what_call_does_at_any_size():
    model = built_model()
    x = images()
    traced = functional_of(model, (24, 24, 3))
    np.testing.assert_array_equal(np.asarray(traced(x)), np.asarray(model(x)))
    functions = sorted(layer.function for layer in traced.layers if isinstance(layer, TFOpLayer))
    assert functions == ["concat", "image.resize", "math.sigmoid", "shape", "shape"]


@pytest.mark.parametrize("preset", ["npu_cnn", "cpu"])
def test_tf_functions_are_quantized_as_their_onnx_ops(tmp_path, preset):
    model, x = built_model(), images()
    qmodel = rq_tf2.quantize_model(model, preset=preset, calib_dataset=x, calib_batch_size=4, quiet=True)
    assert tuple(qmodel.inputs[0].shape) == (None, 24, 24, 3)  # the calibration data's size, not the 16x16 it was built on
    assert qmodel.rq_float_ops == []
    assert {"b1_conv", "b2_conv", "side1", "fuse"} <= {
        layer.name for layer in qmodel.layers if isinstance(layer, rq_tf2.QuantConv2D)
    }
    result = rq_tf2.export_onnx(qmodel, tmp_path / "side.onnx")
    assert result.violations == [] and result.float_ops == []
    expected, onnx_out = np.asarray(qmodel(x)), run_ort(tmp_path / "side.onnx", {"input": x}, as_written=True)
    assert np.abs(onnx_out - expected).max() <= output_step(tmp_path / "side.onnx") * 1.001
    assert sqnr(expected, np.asarray(model(x))) > 20


def test_a_quantized_model_with_tf_functions_saves_and_loads(tmp_path):
    x = images()
    qmodel = rq_tf2.quantize_model(built_model(), preset="npu_cnn", calib_dataset=x, quiet=True)
    qmodel.save(tmp_path / "side.keras")
    loaded = keras.saving.load_model(tmp_path / "side.keras")
    resize = next(layer for layer in loaded.layers if isinstance(layer, TFOpLayer) and layer.function == "image.resize")
    assert resize.argument("method", 2) == "bilinear"
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(qmodel(x)))


def test_tf_functions_rq_cannot_write_exactly_stay_float_with_their_reason():
    x = images()
    with pytest.warns(UserWarning, match="tf.image.resize' stays in float: .*bicubic"):
        qmodel = rq_tf2.quantize_model(built_model("bicubic"), preset="cpu", calib_dataset=x, quiet=True)
    assert [op.node for op in qmodel.rq_float_ops] == ["tf.image.resize"]

    class Pooled(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(2, 3, name="conv")
            self.dense = L.Dense(2, name="dense")

        def call(self, x):
            return self.dense(tf.math.reduce_max(self.conv(x), axis=[1, 2]))

    with pytest.warns(UserWarning, match="'tf.math.reduce_max' stays in float: .*reduce_max"):
        qmodel = rq_tf2.quantize_model(Pooled(), preset="cpu", calib_dataset=x, quiet=True)
    assert isinstance(qmodel.get_layer("conv"), rq_tf2.QuantConv2D) and isinstance(qmodel.get_layer("dense"), rq_tf2.QuantDense)


def test_a_subclassed_model_calibrated_from_a_generator_is_traced_with_its_first_batch():
    model, x = built_model(), images(n=12)
    batches = (x[i : i + 4] for i in range(0, 12, 4))  # one pass only: the batch read for the shape is put back
    qmodel = rq_tf2.quantize_model(model, preset="cpu", calib_dataset=batches, quiet=True)
    assert tuple(qmodel.inputs[0].shape) == (None, 24, 24, 3)
    reference = rq_tf2.quantize_model(model, preset="cpu", calib_dataset=x, calib_batch_size=4, quiet=True)
    np.testing.assert_array_equal(np.asarray(qmodel(x)), np.asarray(reference(x)))  # the same three batches observed


def test_a_nested_functional_backbone_is_inlined_and_quantized(tmp_path):
    inputs = keras.Input((12, 12, 3), name="image")
    features = L.Conv2D(4, 3, activation="relu", name="stem")(inputs)
    backbone = keras.Model(inputs, L.Conv2D(8, 3, strides=2, activation="relu", name="stage")(features), name="backbone")
    outer_in = keras.Input((12, 12, 3), name="x")
    model = keras.Model(outer_in, L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="pool")(backbone(outer_in))))
    x = images(size=12)
    qmodel = rq_tf2.quantize_model(model, preset="npu_cnn", calib_dataset=x, quiet=True)
    assert {"stem", "stage"} <= {layer.name for layer in qmodel.layers if isinstance(layer, rq_tf2.QuantConv2D)}
    assert not any(isinstance(layer, keras.Model) for layer in qmodel.layers)
    rq_tf2.export_onnx(qmodel, tmp_path / "backbone.onnx")
    np.testing.assert_array_equal(run_ort(tmp_path / "backbone.onnx", {"x": x}, as_written=True), np.asarray(qmodel(x)))
    assert sqnr(np.asarray(qmodel(x)), np.asarray(model(x))) > 15


class FullyConvolutional(keras.Model):
    """MTCNN PNet's shape: built for any height and width, valid convolutions with PReLU down to a
    1x1 map on its 12x12 training windows, run on whole images."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = L.Conv2D(4, 3, name="conv1"), L.Conv2D(8, 3, name="conv2")
        self.prelu1, self.prelu2 = L.PReLU(shared_axes=[1, 2], name="prelu1"), L.PReLU(shared_axes=[1, 2], name="prelu2")
        self.pool = L.MaxPooling2D(2, name="pool")
        self.head = L.Conv2D(2, 3, name="head")

    def build(self, input_shape=(None, None, None, 3)):
        self.conv1.build(input_shape)
        super().build(input_shape)

    def call(self, x):
        return self.head(self.prelu2(self.conv2(self.pool(self.prelu1(self.conv1(x))))))


def test_a_model_built_for_any_size_stays_so_when_calibrated_on_one(tmp_path):
    """Calibrated on 12x12 windows (the PReLU's map is then 1x1), the model is traced with the
    shape it was built with (any height and width), as before calibration: the export runs on
    12x12 windows and on a whole image."""
    model = FullyConvolutional()
    model.build()
    qmodel = rq_tf2.quantize_model(model, preset="cpu", calib_dataset=images(8, 12), calib_batch_size=4, quiet=True)
    assert tuple(qmodel.inputs[0].shape) == (None, None, None, 3)
    result = rq_tf2.export_onnx(qmodel, tmp_path / "fcn.onnx")
    assert result.violations == [] and result.float_ops == []
    for x in (images(2, 12, seed=3), images(1, 20, seed=4)):
        expected, onnx_out = np.asarray(qmodel(x)), run_ort(tmp_path / "fcn.onnx", {"input": x}, as_written=True)
        assert (
            onnx_out.shape == expected.shape and np.abs(onnx_out - expected).max() <= output_step(tmp_path / "fcn.onnx") * 1.001
        )
