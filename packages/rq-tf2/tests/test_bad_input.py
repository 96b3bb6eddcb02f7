"""Bad input: each a clear error (or, for an unsupported layer, a warning that names it)."""

import keras
import nets
import numpy as np
import pytest

import rq_tf2
from rq_common.errors import CalibrationDataError, FormatError, RqError, SpecError
from rq_common.format import ViolationKind, validate
from rq_common.spec import get_preset

from conftest import run_ort

L = keras.layers


def small_model():
    inputs = keras.Input((8, 8, 3), name="x")
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    return keras.Model(inputs, L.Dense(2, name="fc")(L.Flatten(name="flat")(x)))


def test_unsupported_layer_stays_float_with_a_warning_that_names_it(tmp_path):
    inputs = keras.Input((8, 8, 3), name="x")
    x = L.Conv2D(4, 3, activation="silu", name="conv")(inputs)
    model = keras.Model(inputs, L.Dense(2, name="fc")(L.Flatten(name="flat")(x)))
    with pytest.warns(UserWarning, match="'conv_activation' stays in float: activation 'silu'"):
        qmodel = rq_tf2.quantize_model(model, preset="cpu")
    rq_tf2.calibrate(qmodel, np.random.default_rng(0).standard_normal((8, 8, 8, 3)).astype(np.float32), quiet=True)
    assert rq_tf2.export_onnx(qmodel, tmp_path / "q.onnx").violations == []


def test_an_op_tf2onnx_cannot_convert_is_a_clear_error(tmp_path):
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, L.Dense(2, activation="gelu", name="fc")(inputs))
    with pytest.warns(UserWarning, match="gelu"):
        qmodel = rq_tf2.quantize_model(model, preset="cpu")
    rq_tf2.calibrate(qmodel, np.ones((4, 4), np.float32), quiet=True)
    with pytest.raises(rq_tf2.ExportError, match="Erfc"):
        rq_tf2.export_onnx(qmodel, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = L.Conv2D(4, 3, padding="same", name="conv")
        self.bn = L.BatchNormalization(name="bn")
        self.pool = L.GlobalAveragePooling2D(name="pool")
        self.dense = L.Dense(3, name="dense")

    def call(self, x):
        return self.dense(self.pool(keras.ops.relu(self.bn(self.conv(x)))))


def test_subclassed_model_is_traced_and_its_layers_quantized(tmp_path):
    model = SubclassedNet()
    x = np.random.default_rng(0).standard_normal((16, 8, 8, 3)).astype(np.float32)
    model(x)
    qmodel = rq_tf2.quantize_model(model, preset="npu_cnn")
    assert isinstance(qmodel.get_layer("conv"), rq_tf2.QuantConv2D) and isinstance(qmodel.get_layer("dense"), rq_tf2.QuantDense)
    rq_tf2.calibrate(qmodel, x, batch_size=4, quiet=True)
    result = rq_tf2.export_onnx(qmodel, tmp_path / "sub.onnx")
    assert result.violations == []
    expected, float_out = np.asarray(qmodel(x)), np.asarray(model(x))
    np.testing.assert_array_equal(run_ort(tmp_path / "sub.onnx", {"input": x}, as_written=True), expected)
    assert 10 * np.log10(np.sum(float_out**2) / np.sum((expected - float_out) ** 2)) > 20


def test_subclassed_model_that_cannot_be_traced_is_a_clear_error():
    class Branchy(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            if keras.ops.max(x) > 0:  # a Python branch on a tensor's value: no graph can hold it
                x = -x
            return self.dense(x)

    model = Branchy()
    x = np.ones((4, 3), np.float32)
    model(x)
    with pytest.raises(rq_tf2.UnsupportedModelError, match="cannot be traced.*no Python branches on tensor values") as info:
        rq_tf2.quantize_model(model, calib_dataset=x, quiet=True)
    # the message points at the user's own line and at rq-tf1
    assert "test_bad_input.py:" in str(info.value) and "if keras.ops.max(x) > 0:" in str(info.value)
    assert "rq_tf1.quantize_frozen_graph" in str(info.value) and "\n" not in str(info.value)
    unbuilt = Branchy()
    with pytest.raises(rq_tf2.UnsupportedModelError, match=r"no known input shape.*input_shape=.*model.build\(\(None"):
        rq_tf2.quantize_model(unbuilt)


class BuiltInInit(SubclassedNet):
    """Keras 2 style: marked built in __init__, so calling it on data records no shape for the model."""

    def __init__(self):
        super().__init__()
        self.built = True


def test_subclassed_model_called_on_data_is_traced_with_the_shape_its_first_layer_was_built_with(tmp_path):
    model = BuiltInInit()
    x = np.random.default_rng(2).standard_normal((8, 8, 8, 3)).astype(np.float32)
    model(x)
    assert not getattr(model, "_build_shapes_dict", None)
    qmodel = rq_tf2.quantize_model(model, preset="npu_cnn", calib_dataset=x, quiet=True)
    assert tuple(qmodel.inputs[0].shape) == (None, 8, 8, 3) and isinstance(qmodel.get_layer("conv"), rq_tf2.QuantConv2D)
    rq_tf2.export_onnx(qmodel, tmp_path / "called.onnx")
    np.testing.assert_array_equal(run_ort(tmp_path / "called.onnx", {"input": x}, as_written=True), np.asarray(qmodel(x)))


class OpsFirst(keras.Model):
    """Its call() starts with keras.ops, so no layer reads the input: its shape cannot be found."""

    def __init__(self):
        super().__init__()
        self.dense = L.Dense(3, name="dense")
        self.built = True

    def call(self, x):
        return self.dense(keras.ops.reshape(x, (-1, 32)))


def test_subclassed_model_with_no_shape_to_find_takes_an_explicit_input_shape(tmp_path):
    model = OpsFirst()
    x = np.random.default_rng(3).standard_normal((8, 4, 4, 2)).astype(np.float32)
    model(x)
    with pytest.raises(rq_tf2.UnsupportedModelError, match=r"no known input shape.*quantize_model\(model, input_shape=") as info:
        rq_tf2.quantize_model(model)
    assert "\n" not in str(info.value)
    qmodel = rq_tf2.quantize_model(model, preset="cpu", input_shape=(4, 4, 2), calib_dataset=x, quiet=True)
    assert tuple(qmodel.inputs[0].shape) == (None, 4, 4, 2)
    rq_tf2.export_onnx(qmodel, tmp_path / "explicit.onnx")
    np.testing.assert_array_equal(run_ort(tmp_path / "explicit.onnx", {"input": x}, as_written=True), np.asarray(qmodel(x)))
    with pytest.raises(rq_tf2.UnsupportedModelError, match=r"input_shape=\(4, 4, 2\) does not match.*subclassed models only"):
        rq_tf2.quantize_model(small_model(), input_shape=(4, 4, 2))


class BuiltWithDefaultShape(SubclassedNet):
    """As mtcnn's networks do: build() takes its input shape as a default and is called bare."""

    def build(self, input_shape=(None, 8, 8, 3)):
        for layer, shape in ((self.conv, input_shape), (self.bn, (None, 8, 8, 4)), (self.dense, (None, 4))):
            layer.build(shape)
        self.built = True


def test_subclassed_model_built_with_its_default_shape_is_traced(tmp_path):
    model = BuiltWithDefaultShape()
    model.build()  # Keras records no shape for a bare build()
    assert not getattr(model, "_build_shapes_dict", None)
    x = np.random.default_rng(1).standard_normal((8, 8, 8, 3)).astype(np.float32)
    qmodel = rq_tf2.quantize_model(model, preset="cpu", calib_dataset=x, quiet=True)
    assert tuple(qmodel.inputs[0].shape) == (None, 8, 8, 3)
    result = rq_tf2.export_onnx(qmodel, tmp_path / "default_shape.onnx")
    assert result.violations == []
    np.testing.assert_array_equal(run_ort(tmp_path / "default_shape.onnx", {"input": x}, as_written=True), np.asarray(qmodel(x)))


def test_unbuilt_sequential_is_a_clear_error():
    with pytest.raises(rq_tf2.UnsupportedModelError, match="not built"):
        rq_tf2.quantize_model(keras.Sequential([L.Dense(2)]))


def test_a_16_bit_activation_preset_is_refused_not_exported_in_8_bits():
    with pytest.raises(SpecError, match="rq-tf2 exports 8-bit activations only"):
        rq_tf2.quantize_model(small_model(), preset="npu_a16w8")


def test_dataset_whose_shape_does_not_match():
    qmodel = rq_tf2.quantize_model(small_model())
    with pytest.raises(CalibrationDataError, match=r"input 'x' has shape \(4, 9, 9, 3\).*\(None, 8, 8, 3\)"):
        rq_tf2.calibrate(qmodel, np.zeros((4, 9, 9, 3), np.float32), quiet=True)


def test_calibration_without_batches_and_with_nan():
    qmodel = rq_tf2.quantize_model(small_model())
    with pytest.raises(CalibrationDataError, match="no batches"):
        rq_tf2.calibrate(qmodel, np.zeros((0, 8, 8, 3), np.float32), quiet=True)
    bad = np.zeros((4, 8, 8, 3), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationDataError, match="NaN"):
        rq_tf2.calibrate(qmodel, bad, quiet=True)


def test_a_model_that_breaks_the_format_is_not_written(tmp_path):
    """Written means valid: keras.ops.multiply by a constant stays a float Mul with a float constant
    (a float-weight violation); export raises rq's FormatError and writes nothing, unless allowed."""
    inputs = keras.Input((8, 8, 3), name="x")
    x = keras.ops.multiply(L.Conv2D(4, 3, name="conv")(inputs), 2.0)
    model = keras.Model(inputs, L.Dense(2, name="fc")(L.Flatten(name="flat")(x)))
    with pytest.warns(UserWarning, match="constant operand"):
        qmodel = rq_tf2.quantize_model(model, preset="npu_cnn")
    rq_tf2.calibrate(qmodel, np.random.default_rng(0).standard_normal((8, 8, 8, 3)).astype(np.float32), quiet=True)
    with pytest.raises(FormatError) as info:
        rq_tf2.export_onnx(qmodel, tmp_path / "q.onnx")
    message = str(info.value)
    assert "'npu_cnn' format" in message and "float-weight" in message and "allow_violations=True" in message
    assert "nothing was written" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []
    result = rq_tf2.export_onnx(qmodel, tmp_path / "q.onnx", allow_violations=True)
    assert result.path == tmp_path / "q.onnx" and result.path.exists()
    assert [v.kind for v in result.violations] == [ViolationKind.FLOAT_WEIGHT]
    assert [str(v) for v in validate(result.path, "npu_cnn")] == [str(v) for v in result.violations]  # the file, checked again


def test_export_before_calibration(tmp_path):
    qmodel = rq_tf2.quantize_model(small_model())
    with pytest.raises(rq_tf2.NotCalibratedError, match="run rq_tf2.calibrate"):
        rq_tf2.export_onnx(qmodel, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_exclude_names_a_layer_the_model_lacks():
    with pytest.raises(ValueError, match="does not have"):
        rq_tf2.quantize_model(small_model(), exclude_nodes=["conv2"])


def test_excluded_layer_runs_in_float(tmp_path):
    model = nets.resnet_style()
    qmodel = rq_tf2.quantize_model(
        model,
        preset="cpu",
        exclude_nodes=["fc"],
        layer_configs={"head_conv": rq_tf2.LayerConfig(preset=get_preset("cpu", per_channel=False))},
    )
    assert type(qmodel.get_layer("fc")) is L.Dense
    assert not qmodel.get_layer("head_conv").weight_spec.per_channel and qmodel.get_layer("stem_conv").weight_spec.per_channel
    rq_tf2.calibrate(qmodel, np.random.default_rng(0).standard_normal((8, 16, 16, 3)).astype(np.float32), quiet=True)
    assert rq_tf2.export_onnx(qmodel, tmp_path / "q.onnx").violations == []


def test_errors_are_rq_errors():
    assert issubclass(rq_tf2.NotCalibratedError, RqError) and issubclass(rq_tf2.UnsupportedModelError, RqError)


def test_nan_in_calibration_is_rq_s_one_line_not_keras_s_wrapping():
    """The observer raises inside ActivationQuantizer.call(); Keras re-raises it with its own
    multi-line text. calibrate hands the user rq's own error and message."""
    qmodel = rq_tf2.quantize_model(small_model())
    bad = np.random.default_rng(0).standard_normal((8, 8, 8, 3)).astype(np.float32)
    bad[5, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationDataError) as info:
        rq_tf2.calibrate(qmodel, bad, batch_size=4, quiet=True)
    message = str(info.value)
    assert type(info.value) is CalibrationDataError
    assert message.startswith("x_quant: calibration batch holds 1 NaN and 0 infinite values") and "preprocessing" in message
    assert "Exception encountered" not in message and "Arguments received" not in message and "\n" not in message


def test_unwrapped_finds_an_rq_error_keras_turned_into_a_runtime_error():
    """An rq error whose class takes more than a message (SpecError) is re-raised by Keras as a
    RuntimeError; unwrapped gives the SpecError back, and leaves other errors alone."""
    from rq_common.errors import SpecError

    class Strict(L.Layer):
        def call(self, x):
            raise SpecError("activation.dtype", "int4 is not a dtype; use int8 or uint8")

    class Plain(L.Layer):
        def call(self, x):
            raise ValueError("not rq's")

    with pytest.raises(RuntimeError) as wrapped:
        Strict()(np.zeros((1, 2), np.float32))
    assert "Exception encountered" in str(wrapped.value)
    original = rq_tf2.errors.unwrapped(wrapped.value)
    assert type(original) is SpecError and str(original) == "activation.dtype: int4 is not a dtype; use int8 or uint8"
    with pytest.raises(ValueError) as other:
        Plain()(np.zeros((1, 2), np.float32))
    assert rq_tf2.errors.unwrapped(other.value) is other.value
