"""pre_activation(qmodel): a model over qmodel's layers that returns the logits before its final
Softmax / Sigmoid, so fit() can use a loss from logits and qmodel is what trained."""

import keras
import numpy as np
import pytest

import rq_tf2
from rq_common.errors import SpecError
from rq_common.qmath import fake_quantize

L = keras.layers


def calibrated(final: str | None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = L.Flatten()(L.Conv2D(4, 3, activation="relu")(inputs))
    x = L.Dense(5)(x)
    outputs = {"softmax": L.Softmax(), "sigmoid": L.Activation("sigmoid"), None: L.Identity()}[final](x)
    data = np.random.default_rng(0).standard_normal((16, 8, 8, 1)).astype(np.float32)
    return rq_tf2.quantize_model(keras.Model(inputs, outputs), "npu_transformer", calib_dataset=data, quiet=True)


@pytest.mark.parametrize("final", ["softmax", "sigmoid"])
def test_the_view_gives_the_logits_the_model_applies_its_final_activation_to(final):
    qmodel = calibrated(final)
    view = rq_tf2.pre_activation(qmodel)
    x = np.random.default_rng(1).standard_normal((6, 8, 8, 1)).astype(np.float32)
    logits, probabilities = view(x).numpy(), qmodel(x).numpy()
    activation = (
        (lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)) if final == "softmax" else (lambda z: 1 / (1 + np.exp(-z)))
    )
    qparams = qmodel.outputs[0]._keras_history.operation.qparams()  # the final activation's quantizer
    # qmodel's output: those logits' activation, quantized (a tie may round the other way: one step)
    assert np.abs(fake_quantize(activation(logits), qparams) - probabilities).max() <= float(qparams.scale) + 1e-6
    assert not np.allclose(logits, probabilities)


def test_fitting_the_view_trains_the_model():
    qmodel = calibrated("softmax")
    view = rq_tf2.pre_activation(qmodel)
    dense = next(layer for layer in qmodel.layers if isinstance(layer, rq_tf2.QuantDense))
    before = np.asarray(dense.kernel).copy()
    view.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(2)
    view.fit(rng.standard_normal((8, 8, 8, 1)).astype(np.float32), rng.integers(0, 5, 8), epochs=1, verbose=0)
    assert not np.array_equal(before, np.asarray(dense.kernel))


def test_a_model_without_a_final_activation_is_refused():
    with pytest.raises(SpecError, match="end in no Softmax or Sigmoid"):
        rq_tf2.pre_activation(calibrated(None))
