"""The command line: vai_q_tensorflow's flags, inspect, and errors that exit 2 with one line."""

import re
import textwrap

import nets
import numpy as np
import pytest

from rq_tf1.cli import main

from conftest import run_ort

INPUT_FN = textwrap.dedent(
    """
    import numpy as np

    def input_fn(iteration):
        rng = np.random.default_rng(iteration)
        return {"x": rng.standard_normal((4, 16, 16, 3)).astype(np.float32)}

    def wrong_keys(iteration):
        return {"images": np.zeros((4, 16, 16, 3), np.float32)}

    def interrupted(iteration):
        if iteration == 2:
            raise KeyboardInterrupt
        return input_fn(iteration)
    """
)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    (tmp_path / "calib_data.py").write_text(INPUT_FN)
    monkeypatch.syspath_prepend(str(tmp_path))
    build, shape = nets.NETWORKS["depthwise_residual"]
    return nets.freeze(build, shape, tmp_path / "model.pb"), tmp_path


def quantize_args(graph, out, **changes):
    args = {
        "--input_frozen_graph": str(graph),
        "--input_nodes": "x",
        "--input_shapes": "?,16,16,3",
        "--output_nodes": "logits",
        "--input_fn": "calib_data.input_fn",
        "--calib_iter": "4",
        "--output_dir": str(out),
        "--method": "1",
    }
    args.update(changes)
    return ["quantize", "--quiet", *[item for pair in args.items() for item in pair]]


def test_quantize_with_vai_q_flags_writes_both_models(setup, capsys):
    graph, tmp = setup
    assert main(quantize_args(graph, tmp / "out")) == 0
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["quantize_eval_model.pb", "quantized.onnx"]
    x = np.random.default_rng(9).standard_normal((2, 16, 16, 3)).astype(np.float32)
    from rq_tf1 import run_eval_model

    (expected,) = run_eval_model(tmp / "out" / "quantize_eval_model.pb", {"x": x}, ["logits"])
    np.testing.assert_array_equal(run_ort(tmp / "out" / "quantized.onnx", {"x:0": x}, as_written=True), expected)
    assert "wrote" in capsys.readouterr().out


def test_ignore_nodes_keeps_them_in_float_and_the_models_still_agree(setup, capsys):
    graph, tmp = setup
    assert main(quantize_args(graph, tmp / "out", **{"--ignore_nodes": "expand/Conv2D"})) == 0
    assert "float: expand/Conv2D: excluded by name" in capsys.readouterr().out
    import onnx

    model = onnx.load(str(tmp / "out" / "quantized.onnx"))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    initializers = {t.name: t for t in model.graph.initializer}
    float_convs = [
        n for n in convs if n.input[1] in initializers and initializers[n.input[1]].data_type == onnx.TensorProto.FLOAT
    ]
    assert len(float_convs) == 1 and len(convs) == 4  # the excluded Conv keeps its float weight
    x = np.random.default_rng(9).standard_normal((2, 16, 16, 3)).astype(np.float32)
    from rq_tf1 import run_eval_model

    (expected,) = run_eval_model(tmp / "out" / "quantize_eval_model.pb", {"x": x}, ["logits"])
    # unoptimized: ORT's optimized float Conv (NCHWc, FMA) rounds its sums unlike TF's
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(str(tmp / "out" / "quantized.onnx"), options).run(None, {"x:0": x})[0]
    np.testing.assert_array_equal(got, expected)


def test_inspect_lists_what_happens_to_each_node(setup, capsys):
    graph, _ = setup
    assert main(["inspect", "--input_frozen_graph", str(graph)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["expand/Conv2D"].endswith("quantized")
    assert "BatchNorm folded" in lines["expand_bn"]
    assert "quantized" in lines["residual"] and "removed" in lines["features"]


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"--input_nodes": "input"}, "--input_nodes names 'input'.*close names: x"),
        ({"--output_nodes": "logit"}, "close names: logits"),
        ({"--input_fn": "no_such_module.fn"}, "cannot import module 'no_such_module'"),
        ({"--input_fn": "calib_data.wrong_keys"}, r"returned keys \['images'\]; the input nodes are \['x'\]"),
        ({"--input_shapes": "?,32,32,3"}, r"--input_shapes gives \(None, 32, 32, 3\) for 'x', but the graph declares \?,16,16,3"),
        ({"--calib_iter": "0"}, "calibrate on at least one batch"),
        ({"--output_dir": "{graph}"}, "is the input model; write the int8 model to another path"),
        ({"--ignore_nodes": "expand/conv"}, "--ignore_nodes names 'expand/conv'.*close names: expand/Conv2D"),
        (
            {"--input_shapes": "?,16,16,three"},
            r"--input_shapes '\?,16,16,three': 'three' is not a size; give positive integers or \?",
        ),
        ({"--input_shapes": "?,16,,3"}, r"--input_shapes '\?,16,,3': '' is not a size"),
        ({"--input_shapes": "?,16,16,0"}, r"--input_shapes '\?,16,16,0': '0' is not a size"),
        ({"--input_shapes": "?,16,16,3:"}, r"--input_shapes '\?,16,16,3:': '' is not a size"),
        ({"--input_shapes": "?,16,16,3:?,4"}, r"--input_shapes gives 2 shape\(s\) for 1 input node\(s\)"),
        ({"--calib_iter": "-3"}, "calibrate on at least one batch"),
        ({"--input_nodes": ","}, "--input_nodes ',' names no node; give comma-separated node names"),
        ({"--ignore_nodes": " , "}, "--ignore_nodes ' , ' names no node"),
    ],
)
def test_bad_input_is_one_line_and_no_output_directory(setup, capsys, changes, message):
    graph, tmp = setup
    changes = {flag: value.format(graph=graph) for flag, value in changes.items()}
    assert main(quantize_args(graph, tmp / "out", **changes)) == 2
    err = capsys.readouterr().err
    assert err.startswith("rq-tf1: error:") and re.search(message, err), err
    assert not (tmp / "out").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out-")]  # no staging left behind


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"--calib_iter": "ten"}, "argument --calib_iter: invalid int value: 'ten'"),
        ({"--method": "2"}, r"argument --method: invalid choice: 2 \(choose from 0, 1\)"),
        ({"--method": "pot"}, "argument --method: invalid int value: 'pot'"),
    ],
)
def test_flags_argparse_refuses_are_one_line_too(setup, capsys, changes, message):
    graph, tmp = setup
    with pytest.raises(SystemExit) as info:
        main(quantize_args(graph, tmp / "out", **changes))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert err.startswith("rq-tf1 quantize: error: ") and re.search(message, err) and "see rq-tf1 quantize --help" in err
    assert not (tmp / "out").exists()


def test_ctrl_c_during_calibration_is_one_line_exit_130_and_nothing_written(setup, capsys):
    graph, tmp = setup
    assert main(quantize_args(graph, tmp / "out", **{"--input_fn": "calib_data.interrupted"})) == 130
    err = capsys.readouterr().err
    assert err.strip() == "rq-tf1: interrupted; nothing was written"
    assert not (tmp / "out").exists()


def test_graph_that_is_not_frozen_or_not_a_graph(tmp_path, capsys):
    import tensorflow as tf

    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, (None, 3), name="x")
        tf.identity(tf.matmul(x, tf.compat.v1.Variable(np.ones((3, 2), np.float32))), name="logits")
    (tmp_path / "unfrozen.pb").write_bytes(graph.as_graph_def().SerializeToString())
    (tmp_path / "junk.pb").write_bytes(b"not a graph at all")
    for name, message in (
        ("unfrozen.pb", "not frozen.*convert_variables_to_constants"),
        ("junk.pb", "not a TensorFlow GraphDef"),
    ):
        code = main(quantize_args(tmp_path / name, tmp_path / "out", **{"--input_fn": "os.getcwd", "--input_shapes": "?,3"}))
        assert code == 2 and re.search(message, capsys.readouterr().err)


def test_parse_input_shapes_raises_graph_error_for_a_bad_size():
    from rq_tf1.api import parse_input_shapes
    from rq_tf1.errors import GraphError

    assert parse_input_shapes("?,8,8,3:-1,4", 2) == [(None, 8, 8, 3), (None, 4)]
    with pytest.raises(GraphError, match=r"--input_shapes '\?,8,8,three': 'three' is not a size") as info:
        parse_input_shapes("?,8,8,three", 1)
    assert type(info.value) is GraphError


def test_a_graph_that_breaks_the_format_is_written_only_when_asked(setup, capsys, monkeypatch):
    """Written means valid: the validator's verdict decides (here made to find one violation)."""
    from rq_common.format import Violation, ViolationKind

    graph, tmp = setup
    broken = Violation(ViolationKind.MISSING_QDQ, "conv", "x", "input 0 of quantized Conv does not come from a DequantizeLinear")
    monkeypatch.setattr("rq_common.format.marked_export.validate", lambda *args, **kwargs: [broken])
    assert main(quantize_args(graph, tmp / "out")) == 2
    err = capsys.readouterr().err
    assert "breaks 1 rule(s) of the 'npu_cnn' format, first: missing-qdq" in err and "--allow_violations" in err
    assert not (tmp / "out").exists()
    assert main([*quantize_args(graph, tmp / "out"), "--allow_violations"]) == 0
    out = capsys.readouterr().out
    assert "violation: missing-qdq" in out and "written anyway (--allow_violations)" in out
    assert (tmp / "out" / "quantized.onnx").exists()


PREPROCESSED_FN = textwrap.dedent(
    """
    import numpy as np

    def preprocessed(iteration):
        rng = np.random.default_rng(iteration)
        return {"preprocess/scaled": rng.standard_normal((4, 16, 16, 3)).astype(np.float32)}
    """
)


def test_input_nodes_may_cut_the_graph_at_a_preprocessing_node(tmp_path, monkeypatch):
    """vai_q_tensorflow's users point --input_nodes at the last preprocessing node: the graph starts
    there, input_fn gives that node's values, and the written models read them."""
    import tensorflow as tf

    from rq_tf1 import run_eval_model

    (tmp_path / "pre_fn.py").write_text(PREPROCESSED_FN)
    monkeypatch.syspath_prepend(str(tmp_path))
    build, shape = nets.NETWORKS["conv_bn_relu"]

    def with_preprocessing(b, x):
        scaled = tf.multiply(tf.subtract(x, 127.5), 1 / 64, name="preprocess/scaled")
        return build(b, scaled)

    graph = nets.freeze(with_preprocessing, shape, tmp_path / "model.pb")
    args = quantize_args(graph, tmp_path / "out", **{"--input_nodes": "preprocess/scaled", "--input_fn": "pre_fn.preprocessed"})
    assert main(args) == 0
    import onnx

    model = onnx.load(str(tmp_path / "out" / "quantized.onnx"))
    assert [i.name for i in model.graph.input] == ["preprocess/scaled:0"]
    assert not {"Sub", "Mul"} & {n.op_type for n in model.graph.node if n.name.startswith("preprocess")}
    pixels = np.random.default_rng(5).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    scaled = ((pixels - 127.5) * np.float32(1 / 64)).astype(np.float32)
    (expected,) = run_eval_model(tmp_path / "out" / "quantize_eval_model.pb", {"preprocess/scaled": scaled}, ["logits"])
    np.testing.assert_array_equal(
        run_ort(tmp_path / "out" / "quantized.onnx", {"preprocess/scaled:0": scaled}, as_written=True), expected
    )
    (float_out,) = run_eval_model(graph, {"x": pixels}, ["logits"])  # the uncut float graph on the raw pixels
    assert 10 * np.log10(np.sum(float_out**2) / np.sum((expected - float_out) ** 2)) > 20


def test_a_16_bit_activation_preset_is_refused_not_exported_in_8_bits(setup):
    from rq_common.errors import SpecError
    from rq_tf1 import quantize_frozen_graph

    graph, tmp = setup
    with pytest.raises(SpecError, match="rq-tf1 exports 8-bit activations only; .* quantize it with rq-onnx"):
        quantize_frozen_graph(graph, ["x"], ["logits"], "calib_data.input_fn", output_dir=tmp / "out", preset="npu_a16w8")
    assert not (tmp / "out").exists()
