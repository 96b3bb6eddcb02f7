"""tf.* functions called on Keras tensors, as layers: what tf.keras did with TFOpLambda and Keras 3 refuses.

A subclassed model's call() often mixes Keras layers with TensorFlow functions (HED's
``tf.image.resize(side, [h, w])`` on ``h, w = tf.shape(x)[1:3]``, ``tf.concat``, ``tf.nn.sigmoid``).
Keras 3 raises on a KerasTensor given to a TensorFlow function, so such a call() cannot be traced
into a Functional graph. TensorFlow's dispatch tries its global dispatchers when a function raises
a TypeError or ValueError; while ``recording_tf_ops()`` is active, rq's dispatcher answers a call
that was given Keras tensors with a ``TFOpLayer`` called on them: the function, its constant
arguments, and slots for the tensors. The traced graph then runs the same TensorFlow code, and the
rules quantize the functions whose ONNX op they know (TF_FUNCTION_OPS); the rest stay in float.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import keras
import tensorflow as tf
from keras import KerasTensor

from rq_tf2.quantizer import PACKAGE

# canonical tf API name (tf_export's) -> the ONNX op tf2onnx writes for it
TF_FUNCTION_OPS = {
    "concat": "Concat",
    "image.resize": "Resize",
    "math.add": "Add",
    "math.multiply": "Mul",
    "math.sigmoid": "Sigmoid",
    "math.tanh": "Tanh",
    "nn.relu": "Relu",
    "nn.softmax": "Softmax",
    "reshape": "Reshape",
    "transpose": "Transpose",
    "identity": "Identity",
}
RESIZE_METHODS = ("bilinear", "nearest")  # what ONNX Resize writes exactly (tf2onnx: linear / nearest)


class _Slot:
    """Where a tensor argument goes in a TFOpLayer's call template (JSON: {"tensor": i})."""

    def __init__(self, index: int):
        self.index = index


@keras.saving.register_keras_serializable(package=PACKAGE)
class TFOpLayer(keras.layers.Layer):
    """One call of a TensorFlow function (``function``: its tf API name, e.g. "image.resize") on
    Keras tensors; ``template`` holds the call's (args, kwargs), tensors replaced by slots."""

    def __init__(self, function: str, template: tuple[tuple, dict], **kwargs):
        super().__init__(**kwargs)
        self.function = function
        self.template = template
        self._fn = _resolve(function)

    @property
    def op(self) -> str | None:
        return TF_FUNCTION_OPS.get(self.function)

    def argument(self, name: str, position: int, default=None):
        """A constant argument of the call, given by keyword or position."""
        args, kwargs = self.template
        if name in kwargs:
            return kwargs[name]
        return args[position] if position < len(args) else default

    def call(self, *tensors):
        args, kwargs = tf.nest.map_structure(lambda v: tensors[v.index] if isinstance(v, _Slot) else v, self.template)
        return self._fn(*args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "function": self.function, "template": _to_config(list(self.template))}

    @classmethod
    def from_config(cls, config):
        args, kwargs = _from_config(config.pop("template"))
        return cls(template=(tuple(args), kwargs), **config)


def _resolve(name: str):
    target = tf
    for part in name.split("."):
        target = getattr(target, part)
    return target


def _to_config(value):
    """JSON of a template: slots and dtypes as one-key dicts, other dicts under "dict"."""
    if isinstance(value, _Slot):
        return {"tensor": value.index}
    if isinstance(value, tf.DType):
        return {"dtype": value.name}
    if isinstance(value, (list, tuple)):
        return [_to_config(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {k: _to_config(v) for k, v in value.items()}}
    return value


def _from_config(value):
    if isinstance(value, list):
        return [_from_config(v) for v in value]
    if isinstance(value, dict):
        if "tensor" in value:
            return _Slot(value["tensor"])
        if "dtype" in value:
            return tf.as_dtype(value["dtype"])
        return {k: _from_config(v) for k, v in value["dict"].items()}
    return value


_state = threading.local()


class _KerasTensorDispatcher(tf.__internal__.dispatch.GlobalOpDispatcher):
    def handle(self, op, args, kwargs):
        names = getattr(_state, "names", None)
        if names is None:
            return self.NOT_SUPPORTED
        flat = tf.nest.flatten((args, kwargs))
        tensors = [v for v in flat if isinstance(v, KerasTensor)]
        function = _api_name(op)
        if not tensors or function is None:
            return self.NOT_SUPPORTED
        slots = iter(range(len(tensors)))
        template = tf.nest.map_structure(lambda v: _Slot(next(slots)) if isinstance(v, KerasTensor) else v, (args, kwargs))
        base = f"tf.{function}"
        count = names.get(base, 0)
        names[base] = count + 1
        return TFOpLayer(function, template, name=base if count == 0 else f"{base}_{count}")(*tensors)


def _api_name(op) -> str | None:
    from tensorflow.python.util import tf_export

    name = tf_export.get_canonical_name_for_symbol(op)
    if not name:
        return None
    try:
        return name if _resolve(name) is not None else None
    except AttributeError:
        return None


_registered = False


@contextlib.contextmanager
def recording_tf_ops() -> Iterator[None]:
    """While active, a tf.* function called on Keras tensors becomes a TFOpLayer (see above)."""
    global _registered
    if not _registered:
        _KerasTensorDispatcher().register()
        _registered = True
    outer = getattr(_state, "names", None)
    _state.names = {} if outer is None else outer
    try:
        yield
    finally:
        _state.names = outer
