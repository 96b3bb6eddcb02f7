"""ActivationQuantizer: the Keras layer that observes or fake-quantizes one tensor (or every
tensor of one scale group: the same layer is then called at each of them).

Modes: OBSERVE (calibration, eager: values feed an rq_common Calibrator and pass unchanged),
QUANTIZE (fake quantization with the fixed scale), OFF. The scale and zero point are
non-trainable weights, so model.save() keeps them; the mode is set again on load from whether a
scale was ever calibrated.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rq_common import Calibrator
from rq_common.pipeline.mode import Mode
from rq_common.qmath import QParams
from rq_common.spec import CalibrationMethod, Preset, QuantSpec, preset_from_config, preset_to_config
from rq_tf2.errors import NotCalibratedError
from rq_tf2.fake_quant import export_fake_quantize, fake_quantize, is_exporting

PACKAGE = "rq_tf2"


def state_weight(layer: keras.layers.Layer, name: str, shape=(), dtype="float32", initializer="zeros"):
    """A non-trainable weight that holds quantization state. Under MirroredStrategy every replica
    computes the same value (from mirrored weights), so the first replica's write stands."""
    return layer.add_weight(
        name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=False, aggregation="only_first_replica"
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class ActivationQuantizer(keras.layers.Layer):
    def __init__(self, preset: Preset | dict, method: CalibrationMethod | str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.preset = preset if isinstance(preset, Preset) else preset_from_config(preset)
        self.spec: QuantSpec = self.preset.activation
        self.method = CalibrationMethod(method or self.preset.activation_method)
        self.mode = Mode.OFF
        self.calibrator = Calibrator(self.spec, self.method, name=self.name)
        self.export_marker: str | None = None

    def build(self, input_shape) -> None:
        self.scale = state_weight(self, "scale", initializer="ones")
        self.zero_point = state_weight(self, "zero_point")
        self.calibrated = state_weight(self, "calibrated")
        self.built = True

    # -- calibration ---------------------------------------------------------------------------
    def reset(self) -> None:
        self.calibrator = Calibrator(self.spec, self.method, name=self.name)

    def finalize(self) -> QParams:
        """Scale and zero point from what was observed (rq_common decides); switch to QUANTIZE."""
        qparams = self.calibrator.qparams()
        self.set_qparams(qparams)
        self.mode = Mode.QUANTIZE
        return qparams

    def set_qparams(self, qparams: QParams) -> None:
        self.scale.assign(np.float32(qparams.scale))
        self.zero_point.assign(np.float32(qparams.zero_point))
        self.calibrated.assign(1.0)

    def qparams(self) -> QParams:
        if not self.is_calibrated:
            raise NotCalibratedError(f"quantizer '{self.name}' has no scale yet: run rq_tf2.calibrate(qmodel, data) first")
        return QParams(np.float32(self.scale.numpy()), np.int64(round(float(self.zero_point.numpy()))), self.spec)

    @property
    def is_calibrated(self) -> bool:
        return self.built and float(self.calibrated.numpy()) > 0

    # -- forward --------------------------------------------------------------------------------
    def call(self, x):
        if self.mode is Mode.OBSERVE:
            if not tf.executing_eagerly():
                raise NotCalibratedError("observing runs eagerly: calibrate with rq_tf2.calibrate(qmodel, data)")
            self.calibrator.update(np.asarray(x, dtype=np.float32))
            return x
        if self.mode is Mode.OFF:
            return x
        if is_exporting():
            with tf.name_scope(self.export_marker):
                return export_fake_quantize(x, self.scale, self.zero_point, self.spec.qmin, self.spec.qmax)
        return fake_quantize(x, self.scale, self.zero_point, self.spec.qmin, self.spec.qmax)

    def compute_output_shape(self, input_shape):
        return input_shape

    # -- saving ---------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "preset": preset_to_config(self.preset), "method": self.method.value}

    def load_own_variables(self, store) -> None:
        super().load_own_variables(store)
        self.mode = Mode.QUANTIZE if self.is_calibrated else Mode.OFF
