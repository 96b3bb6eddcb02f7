"""Saving and loading: every rq layer is registered as a Keras serializable object, so
``qmodel.save("m.keras")`` and ``keras.models.load_model("m.keras")`` work once rq_tf2 is
imported; ``custom_objects()`` is there for code that passes them explicitly."""

from __future__ import annotations

from pathlib import Path

import keras

from rq_tf2.layers import BiasAdd, MatMul, QuantConv1D, QuantConv2D, QuantConv2DTranspose, QuantDense, QuantDepthwiseConv2D
from rq_tf2.quantizer import ActivationQuantizer


def custom_objects() -> dict[str, type]:
    layers = (
        ActivationQuantizer,
        BiasAdd,
        MatMul,
        QuantConv1D,
        QuantConv2D,
        QuantConv2DTranspose,
        QuantDense,
        QuantDepthwiseConv2D,
    )
    return {cls.__name__: cls for cls in layers}


def load_model(path: str | Path) -> keras.Model:
    """A quantized model saved with model.save(); its scales and modes as they were saved."""
    return keras.models.load_model(str(path), custom_objects=custom_objects())
