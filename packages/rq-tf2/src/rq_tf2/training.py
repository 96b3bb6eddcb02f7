"""QAT on a model that ends in Softmax or Sigmoid: the loss wants the values before it.

``pre_activation(qmodel)`` is a Keras model over the quantized model's own layers whose outputs are
the inputs of its final Softmax / Sigmoid (as quantized as they are in qmodel): ``fit()`` it with
a loss on logits (``from_logits=True``), export qmodel.
"""

from __future__ import annotations

import keras
from keras import tree

from rq_common.errors import SpecError
from rq_common.spec import get_preset
from rq_tf2.quantizer import ActivationQuantizer
from rq_tf2.rules import RuleContext, steps_for

FINAL_ACTIVATIONS = ("Softmax", "Sigmoid")


def _producer(tensor):
    history = tensor._keras_history
    node = history.operation._inbound_nodes[history.node_index]
    return history.operation, node.input_tensors


def _before_final_activation(tensor):
    """The tensor an output is computed from before its final activation (and that activation's
    quantizer), or None where it ends in no such activation (the op by rq-tf2's own rules)."""
    layer, inputs = _producer(tensor)
    if isinstance(layer, ActivationQuantizer):
        layer, inputs = _producer(inputs[0])
    if not isinstance(layer, keras.layers.Layer) or len(inputs) != 1:
        return None
    steps = steps_for(layer, RuleContext(get_preset("cpu"), len(inputs[0].shape)))
    return inputs[0] if [s.op for s in steps] in ([op] for op in FINAL_ACTIVATIONS) else None


def pre_activation(qmodel: keras.Model) -> keras.Model:
    """A model over ``qmodel``'s layers (made by quantize_model) that returns, for each output that
    ends in a Softmax or Sigmoid, that activation's input; the other outputs as they are. Training
    it trains qmodel."""
    outputs = [_before_final_activation(t) for t in tree.flatten(qmodel.outputs)]
    if all(o is None for o in outputs):
        raise SpecError("pre_activation", "the model's outputs end in no Softmax or Sigmoid: train on its outputs as they are")
    outputs = [o if o is not None else t for o, t in zip(outputs, tree.flatten(qmodel.outputs), strict=True)]
    return keras.Model(qmodel.inputs, outputs if len(outputs) > 1 else outputs[0], name=f"{qmodel.name}_pre_activation")
