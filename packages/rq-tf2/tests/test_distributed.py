"""QAT under tf.distribute.MirroredStrategy on two logical CPU devices: training runs, and every
replica ends with the same weights and the same (still power-of-two) scales.

Logical devices can only be set up before TensorFlow starts, so the run is its own process."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, sys.argv[1])
    import nets, rq_tf2

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        qmodel = rq_tf2.quantize_model(nets.randomize_batchnorm(nets.resnet_style()), preset="npu_cnn", freeze_bn_after=2)
        rq_tf2.calibrate(qmodel, x[:32], batch_size=8, quiet=True)
        qmodel.compile(keras.optimizers.SGD(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = np.asarray(qmodel.get_layer("fc").kernel).copy()
    qmodel.fit(x, y, batch_size=16, epochs=2, verbose=0)
    report = {"replicas": strategy.num_replicas_in_sync, "differs": [], "not_pow2": [], "steps": []}
    for layer in qmodel.layers:
        for variable in layer.weights:
            values = [np.asarray(v) for v in getattr(variable.value, "values", [variable.value])]
            if any(not np.array_equal(values[0], v) for v in values[1:]):
                report["differs"].append(variable.path)
        if isinstance(layer, rq_tf2.QuantConv2D):
            scale = np.asarray(layer.weight_scale)
            if not np.all(np.ldexp(1.0, np.round(np.log2(scale)).astype(int)) == scale):
                report["not_pow2"].append(layer.name)
            report["steps"].append(int(np.asarray(layer.qat_steps)))
    report["trained"] = not np.array_equal(before, np.asarray(qmodel.get_layer("fc").kernel))
    print("REPORT" + json.dumps(report))
    """
)


def test_mirrored_strategy_keeps_replicas_identical(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith("REPORT")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT") :])
    assert report["replicas"] == 2 and report["trained"]
    assert report["differs"] == [] and report["not_pow2"] == []
    assert set(report["steps"]) == {8}  # 64 samples / 16 per step x 2 epochs, counted once, not per replica
