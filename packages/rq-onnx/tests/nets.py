"""Small float reference networks built with onnx.helper (no framework needed), seeded."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, value, base="c") -> str:
        name = self.name(base)
        self.inits.append(
            numpy_helper.from_array(
                np.asarray(value, np.float32) if np.asarray(value).dtype.kind == "f" else np.asarray(value), name
            )
        )
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, cin, cout, k=3, stride=1, group=1, bias=True):
        fan_in = cin // group * k * k
        w = self.const(self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in), "w")
        inputs = [x, w] + ([self.const(self.rng.standard_normal(cout) * 0.05, "b")] if bias else [])
        return self.op("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride], group=group)

    def bn(self, x, c):
        gamma = self.const(self.rng.uniform(0.5, 1.5, c), "gamma")
        beta = self.const(self.rng.standard_normal(c) * 0.1, "beta")
        mean = self.const(self.rng.standard_normal(c) * 0.1, "mean")
        var = self.const(self.rng.uniform(0.5, 1.5, c), "var")
        return self.op("BatchNormalization", [x, gamma, beta, mean, var], epsilon=1e-5)

    def linear(self, x, din, dout):
        w = self.const(self.rng.standard_normal((din, dout)) / np.sqrt(din), "w")
        b = self.const(self.rng.standard_normal(dout) * 0.02, "b")
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def model(self, inputs, outputs, opset=17) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "net", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rq-tests")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def resnet_block_net(seed: int = 0, classes: int = 10, size: int = 16) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    x = g.op("Relu", [g.bn(g.conv("input", 3, 16, bias=False), 16)])
    for _ in range(2):
        y = g.op("Relu", [g.bn(g.conv(x, 16, 16, bias=False), 16)])
        y = g.bn(g.conv(y, 16, 16, bias=False), 16)
        x = g.op("Relu", [g.op("Add", [x, y])])
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.op("Relu", [g.conv(x, 16, 32, stride=2)])
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    w = g.const(g.rng.standard_normal((classes, 32)) * 0.3, "fc_w")
    b = g.const(g.rng.standard_normal(classes) * 0.05, "fc_b")
    g.nodes.append(helper.make_node("Gemm", [x, w, b], ["logits"], name="fc", transB=1))
    return g.model(
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
    )


def relu6(g: GraphBuilder, x: str) -> str:
    return g.op("Clip", [x, g.const(np.float32(0.0), "lo"), g.const(np.float32(6.0), "hi")])


def mobilenet_v2_net(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    x = relu6(g, g.bn(g.conv("input", 3, 16, stride=2, bias=False), 16))
    for expand in (4, 6):
        y = relu6(g, g.bn(g.conv(x, 16, 16 * expand, k=1, bias=False), 16 * expand))
        y = relu6(g, g.bn(g.conv(y, 16 * expand, 16 * expand, k=3, group=16 * expand, bias=False), 16 * expand))
        y = g.bn(g.conv(y, 16 * expand, 16, k=1, bias=False), 16)
        x = g.op("Add", [x, y])
    a = relu6(g, g.conv(x, 16, 8, k=1))
    b = relu6(g, g.conv(x, 16, 8, k=3))
    x = g.op("Concat", [a, b], axis=1)
    x = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.op("Reshape", [g.op("GlobalAveragePool", [x]), g.const(np.array([-1, 16], np.int64), "shape")])
    w = g.const(g.rng.standard_normal((classes, 16)) * 0.3, "fc_w")
    g.nodes.append(helper.make_node("Gemm", [x, w, g.const(np.zeros(classes), "fc_b")], ["logits"], name="fc", transB=1))
    return g.model(
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
    )


def layer_norm(g: GraphBuilder, x: str, d: int, written_out: bool = False) -> str:
    """One LayerNormalization op, or (written_out) the textbook ops older exporters write for it."""
    gamma, beta = g.const(g.rng.uniform(0.8, 1.2, d), "ln_g"), g.const(g.rng.standard_normal(d) * 0.05, "ln_b")
    if not written_out:
        return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)
    mean = g.op("ReduceMean", [x], axes=[-1])
    centered = g.op("Sub", [x, mean])
    variance = g.op("ReduceMean", [g.op("Pow", [centered, g.const(np.float32(2), "two")])], axes=[-1])
    std = g.op("Sqrt", [g.op("Add", [variance, g.const(np.float32(1e-5), "eps")])])
    return g.op("Add", [g.op("Mul", [g.op("Div", [centered, std]), gamma]), beta])


def hf_additive_mask(g: GraphBuilder, form: str) -> str:
    """A Hugging Face encoder's additive attention mask from its int64 ``attention_mask`` [N, T]:
    0 where a token counts, -inf (``where_inf``, recent transformers) or float32's lowest value
    (``finfo_min``, older ones) where it does not; shaped [N, 1, 1, T] to broadcast over the scores."""
    mask = g.op("Unsqueeze", ["attention_mask", g.const(np.array([1, 2], np.int64), "axes")])
    if form == "where_inf":
        masked = g.op("Equal", [mask, g.const(np.array(0, np.int64), "zero_i")])
        return g.op("Where", [masked, g.const(np.float32(-np.inf), "minus_inf"), g.const(np.float32(0.0), "zero_f")])
    keep = g.op("Cast", [mask], to=TensorProto.FLOAT)
    return g.op("Mul", [g.op("Sub", [g.const(np.float32(1.0), "one_f"), keep]), g.const(np.finfo(np.float32).min, "lowest")])


def transformer_encoder_net(
    seed: int = 0,
    tokens: int = 8,
    d: int = 32,
    heads: int = 4,
    written_out_layer_norm: bool = False,
    mask: str | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """One pre-norm encoder block, its GELU written out as torch.onnx writes it; ``mask``
    ("where_inf" / "finfo_min") adds an ``attention_mask`` input applied to the scores as a Hugging
    Face export writes it."""
    g = GraphBuilder(seed)
    hd = d // heads
    x = "tokens"
    h = layer_norm(g, x, d, written_out_layer_norm)
    split_shape = g.const(np.array([0, tokens, heads, hd], np.int64), "split")

    def project(t):
        return g.op("Transpose", [g.op("Reshape", [g.linear(t, d, d), split_shape])], perm=[0, 2, 1, 3])

    q, k, v = project(h), project(h), project(h)
    scores = g.op(
        "Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), g.const(np.float32(1 / np.sqrt(hd)), "scale")]
    )
    if mask is not None:
        scores = g.op("Add", [scores, hf_additive_mask(g, mask)])
    attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    merged = g.op("Reshape", [g.op("Transpose", [attn], perm=[0, 2, 1, 3]), g.const(np.array([0, tokens, d], np.int64), "merge")])
    x = g.op("Add", [x, g.linear(merged, d, d)])
    h = g.linear(layer_norm(g, x, d, written_out_layer_norm), d, 2 * d)
    gelu = g.op(
        "Mul",
        [
            g.op("Mul", [h, g.const(np.float32(0.5), "half")]),
            g.op(
                "Add",
                [g.op("Erf", [g.op("Div", [h, g.const(np.float32(np.sqrt(2)), "sqrt2")])]), g.const(np.float32(1.0), "one")],
            ),
        ],
    )
    g.op("Add", [x, g.linear(gelu, 2 * d, d)])
    g.nodes[-1].output[0] = "encoded"  # the residual sum is the graph output
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", tokens, d])]
    if mask is not None:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", tokens]))
    return g.model(inputs, [helper.make_tensor_value_info("encoded", TensorProto.FLOAT, ["N", tokens, d])], opset=opset)


def digits_mlp(hidden: int = 64):
    """An MLP trained by scikit-learn on load_digits, as a float ONNX model.

    Returns (model, x_train, x_test, y_train, y_test), inputs scaled to [0, 1].
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.3, random_state=0)
    mlp = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=400, random_state=0).fit(x_train, y_train)
    (w1, w2), (b1, b2) = mlp.coefs_, mlp.intercepts_
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2"),
        ],
        "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, x_train, x_test, y_train, y_test
