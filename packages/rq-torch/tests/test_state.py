"""A calibrated model's whole state is in state_dict() and loads with weights_only=True."""

import nets
import torch

import rq_torch
from rq_common import get_preset


def test_save_and_load_a_calibrated_model(tmp_path):
    model = nets.randomize_batchnorm(nets.ResNetStyle()).eval()
    example = torch.randn(1, 3, 16, 16)
    qmodel = rq_torch.quantize_model(model, example, preset="npu_cnn")
    rq_torch.calibrate(qmodel, [torch.randn(1, 3, 16, 16) for _ in range(8)], quiet=True)
    torch.save(qmodel.state_dict(), tmp_path / "q.pt")

    fresh = rq_torch.quantize_model(model, example, preset="npu_cnn")  # same structure, not calibrated
    fresh.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), qmodel(x))
    names = dict(qmodel.named_modules())
    for name, q in fresh.named_modules():
        if isinstance(q, rq_torch.TensorQuantizer) and q.persist_observer:
            original = names[name].calibrator.observer.state_dict()
            restored = q.calibrator.observer.state_dict()
            assert all((original[k] == restored[k]).all() for k in original), name  # observer state came along
    assert rq_torch.export_onnx(fresh, example, tmp_path / "q.onnx").violations == []


def test_torch_compile_gives_the_same_outputs():
    qmodel = rq_torch.quantize_model(nets.ResNetStyle(), torch.randn(1, 3, 16, 16), preset="cpu")
    rq_torch.calibrate(qmodel, [torch.randn(1, 3, 16, 16)], quiet=True)
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(qmodel, backend="eager")
    with torch.no_grad():
        assert torch.equal(compiled(x), qmodel(x))


def test_qparams_follow_the_buffers_however_they_change():
    """qparams() is read again whenever the scale or zero point buffer is replaced or changed in place."""
    q = rq_torch.TensorQuantizer(get_preset("cpu").activation, "minmax", name="t")
    q.mode = rq_torch.Mode.OBSERVE
    q(torch.linspace(-1.0, 3.0, 64))
    q.finalize()
    first = q.qparams()
    assert q.qparams() is first  # nothing changed: the same object

    with torch.no_grad():
        q.scale.mul_(2)  # in place
    assert float(q.qparams().scale) == float(first.scale) * 2

    other = rq_torch.TensorQuantizer(q.spec, "minmax", name="t")
    other.load_state_dict({**q.state_dict(), "zero_point": torch.tensor(7, dtype=torch.int32)})
    assert int(other.qparams().zero_point) == 7

    q.scale = torch.tensor(0.25)  # replaced
    assert float(q.qparams().scale) == 0.25
