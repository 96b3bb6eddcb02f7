import subprocess
import sys

import numpy as np
import onnx

from rq_common.io import save_onnx


def test_import_loads_no_framework():
    code = (
        "import sys, rq_common, rq_common.format, rq_common.report, rq_common.calibration, rq_common.golden;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'onnxruntime', 'keras', 'tf2onnx'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_save_is_deterministic_and_atomic(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "c")],
    )
    model = helper.make_model(graph)
    save_onnx(model, tmp_path / "a.onnx")
    save_onnx(onnx.load(tmp_path / "a.onnx"), tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]
