"""Saving and loading: every rq layer is registered as a Keras serializable object, so
``qmodel.save("m.keras")`` and ``keras.models.load_model("m.keras")`` work once rq_tf2 is
imported; ``custom_objects()`` is there for code that passes them explicitly."""

from __future__ import annotations

from pathlib import Path

import keras

import rq_tf2.layers  # noqa: F401  (registers the layers; importing the quantizer registers its own)
from rq_tf2.quantizer import PACKAGE


def custom_objects() -> dict[str, type]:
    """Every layer rq_tf2 registered with Keras, by class name."""
    prefix = f"{PACKAGE}>"
    return {name.removeprefix(prefix): cls for name, cls in keras.saving.get_custom_objects().items() if name.startswith(prefix)}


def load_model(path: str | Path) -> keras.Model:
    """A quantized model saved with model.save(); its scales and modes as they were saved."""
    return keras.models.load_model(str(path), custom_objects=custom_objects())
