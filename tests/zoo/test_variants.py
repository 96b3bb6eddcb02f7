"""Zoo columns with rq's accuracy algorithms: the name says which options quantize_static gets, and
only packages that offer them get the column."""

import pytest

from rq_common.pipeline.accuracy_loop import AccuracyTarget
from rq_common.pipeline.mixed_precision import MixedPrecision
from rq_common.spec.dtypes import QuantDType
from zoo.registry import get
from zoo.variants import Algorithm, Variant


def test_a_column_name_is_a_preset_and_its_algorithms():
    variant = Variant.parse("npu_transformer+adaround+bias_correction")
    assert variant == Variant("npu_transformer", (Algorithm.ADAROUND, Algorithm.BIAS_CORRECTION))
    assert variant.onnx_arguments() == {"preset": "npu_transformer", "rounding": "adaround", "bias_correction": True}
    assert Variant.parse("cpu").onnx_arguments() == {"preset": "cpu"}
    sixteen = Variant.parse("cpu+int16").onnx_arguments()["preset"]
    assert sixteen.activation.dtype is QuantDType.INT16
    assert Variant.parse("cpu+mixed").onnx_arguments() == {"preset": "cpu", "mixed_precision": MixedPrecision()}
    assert Variant.parse("npu_cnn+auto").onnx_arguments() == {"preset": "npu_cnn", "target": AccuracyTarget(max_drop=0.015)}
    assert Variant.parse("npu_cnn+cle").onnx_arguments() == {"preset": "npu_cnn", "equalization": True}
    assert Variant.parse("npu_cnn+cle").framework_arguments() == {"preset": "npu_cnn", "equalization": True}
    assert Variant.parse("npu_cnn+nocle").framework_arguments() == {"preset": "npu_cnn", "equalization": False}
    assert Variant.parse("npu_cnn").framework_arguments() == {"preset": "npu_cnn"}
    for arguments in (Variant.parse("cpu+intkernels").onnx_arguments(), Variant.parse("cpu+intkernels").framework_arguments()):
        assert arguments["preset"].integer_kernels_only and arguments["preset"].name == "cpu"
    with pytest.raises(
        ValueError,
        match="'cpu\\+smooth': an algorithm after '\\+' is one of cle, nocle, bias_correction, adaround, int16, intkernels, mixed, auto",
    ):
        Variant.parse("cpu+smooth")


def test_only_packages_that_offer_an_algorithm_get_its_column():
    onnx_model, torch_model, keras_model = get("rapid_layout"), get("khmer_ocr"), get("hed")
    assert onnx_model.supports("npu_cnn+adaround") and onnx_model.supports("npu_cnn")
    assert torch_model.supports("npu_cnn+adaround") and not torch_model.supports("npu_cnn+mixed")
    assert torch_model.supports("npu_transformer+bias_correction") and not get("hed").supports("npu_transformer+bias_correction")
    assert torch_model.supports("npu_cnn+cle+adaround") and not torch_model.supports("npu_cnn+cle+mixed")
    assert keras_model.supports("npu_cnn+nocle") and get("hed_tf1").supports("npu_cnn+nocle")
    # the framework packages' fake-quant ops export 8-bit activations only
    assert onnx_model.supports("npu_a16w8") and not torch_model.supports("npu_a16w8")


def test_the_zoo_scores_the_loop_with_the_models_own_metric_on_held_out_calibration_samples():
    import numpy as np

    from zoo.frameworks import task_target
    from zoo.kinds import Samples

    class Entry:  # what task_target reads of a ZooModel
        higher_is_better = False  # an error rate: the loop maximizes its negative

        def score(self, outputs, reference, samples):
            wrong = [int(np.argmax(o[0]) != t) for o, t in zip(outputs, samples.truth, strict=True)]
            return {"error": float(np.mean(wrong)), "other": 0.0}

    calibration = Samples([(np.zeros(2),)] * 40, truth=[0] * 30 + [1] * 10)
    target = task_target(Entry(), AccuracyTarget(max_drop=0.01), calibration)
    assert target.holdout == 10 and target.max_drop == 0.01  # a quarter of 40 held out
    right, wrong = [np.array([0.0, 1.0])], [np.array([1.0, 0.0])]
    assert target.metric([right] * 10, [right] * 10) == 0.0  # the held-out ten are all class 1
    assert target.metric([wrong] * 5 + [right] * 5, [right] * 10) == -0.5
