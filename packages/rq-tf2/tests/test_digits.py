"""A CNN trained here on scikit-learn's load_digits: PTQ with npu_cnn, then QAT with fit()."""

import keras
import nets
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import rq_tf2
from rq_common.qmath.npu_rules import position


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    return train_test_split(x, data.target, test_size=0.3, random_state=0)


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(0)
    x_train, _, y_train, _ = digits
    model = nets.digits_cnn()
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=32, epochs=12, verbose=0)
    return model


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(np.asarray(model.predict(x, verbose=0)), axis=1) == y))


def compile_for_qat(model, lr=5e-4):
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def test_ptq_and_qat_keep_accuracy(digits, trained):
    x_train, x_test, y_train, y_test = digits
    float_acc = accuracy(trained, x_test, y_test)
    assert float_acc > 0.95
    qmodel = rq_tf2.quantize_model(trained, preset="npu_cnn", calib_dataset=x_train[:256], max_calibration_batches=8, quiet=True)
    ptq_acc = accuracy(qmodel, x_test, y_test)
    assert float_acc - ptq_acc <= 0.015
    compile_for_qat(qmodel)
    qmodel.fit(x_train, y_train, batch_size=32, epochs=3, verbose=0)
    qat_acc = accuracy(qmodel, x_test, y_test)
    assert float_acc - qat_acc <= 0.005
    for layer in qmodel.layers:  # the power-of-two scales stayed powers of two through training
        if isinstance(layer, rq_tf2.QuantConv2D):
            scale = np.asarray(layer.weight_scale)
            assert np.all(np.ldexp(1.0, -position(scale)) == scale)


def test_qat_with_batchnorm_kept_apart_then_frozen(digits, trained):
    x_train, x_test, y_train, y_test = digits
    qmodel = rq_tf2.quantize_model(trained, preset="npu_cnn", freeze_bn_after=20)
    rq_tf2.calibrate(qmodel, x_train[:256], quiet=True)
    conv = qmodel.get_layer("c1_conv")
    assert conv.batchnorm is not None and "c1_bn" not in {layer.name for layer in qmodel.layers}
    compile_for_qat(qmodel)
    mean_before = np.asarray(conv.bn_moving_mean).copy()
    qmodel.fit(x_train[:640], y_train[:640], batch_size=32, epochs=1, verbose=0)  # 20 steps: BN learns
    assert int(conv.bn_steps.numpy()) == 20 and not np.array_equal(np.asarray(conv.bn_moving_mean), mean_before)
    frozen = np.asarray(conv.bn_moving_mean).copy()
    qmodel.fit(x_train[640:], y_train[640:], batch_size=32, epochs=1, verbose=0)
    np.testing.assert_array_equal(np.asarray(conv.bn_moving_mean), frozen)  # frozen after 20 steps
    assert accuracy(trained, x_test, y_test) - accuracy(qmodel, x_test, y_test) <= 0.015
