"""TensorQuantizer: one tensor's (or one group of tensors') observer, scale and fake quantization.

Modes: OBSERVE (calibration: statistics are fed to an rq_common Calibrator, values pass unchanged),
QUANTIZE (fake quantization with the fixed scale), OFF. The scale, zero point, mode and (for
activations) the observer's fixed-size state are buffers, so state_dict() holds everything and
loads with torch.load(weights_only=True); the exporter sees only tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from rq_common import Calibrator
from rq_common.pipeline.mode import Mode
from rq_common.qmath import QParams
from rq_common.spec import CalibrationMethod, QuantSpec
from rq_torch.errors import NotCalibratedError
from rq_torch.fake_quant import fake_quantize


class _ReadQParams(NamedTuple):
    """QParams read from a scale and a zero-point buffer, with what they were read from: the
    buffers themselves (held, so that their ids are not reused) and their in-place versions."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    versions: tuple[int, int]
    qparams: QParams

    @classmethod
    def of(cls, scale: torch.Tensor, zero_point: torch.Tensor, qparams: QParams) -> _ReadQParams:
        return cls(scale, zero_point, (scale._version, zero_point._version), qparams)

    def still_holds(self, scale: torch.Tensor, zero_point: torch.Tensor) -> bool:
        return self.scale is scale and self.zero_point is zero_point and self.versions == (scale._version, zero_point._version)


class TensorQuantizer(nn.Module):
    def __init__(
        self,
        spec: QuantSpec,
        method: CalibrationMethod | str,
        name: str = "tensor",
        channels: int | None = None,
        persist_observer: bool = True,
        learn_scale: bool = False,
    ):
        super().__init__()
        self.spec = spec
        self.method = CalibrationMethod(method) if not isinstance(method, CalibrationMethod) else method
        self.tensor_name = name
        shape = (channels,) if spec.per_channel else ()
        self.register_buffer("scale", torch.ones(shape, dtype=torch.float32))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("mode_code", torch.tensor(Mode.OFF.value, dtype=torch.int8))
        self._mode = Mode.OFF
        self._qparams: _ReadQParams | None = None  # see qparams()
        self.calibrator = Calibrator(spec, self.method, name=name)
        self.persist_observer = persist_observer
        # QAT with a learned scale: log2 of the scale is the parameter (TQT); for power-of-two specs
        # the forward pass rounds it (straight-through), so the scale stays 2^k at every step
        self.log2_scale = nn.Parameter(torch.zeros(shape)) if learn_scale else None
        if persist_observer:  # weight observers are rebuilt from the weights; activation ones are saved
            for key, value in self.calibrator.observer.state_dict().items():
                self.register_buffer(f"observer_{key}", torch.as_tensor(np.asarray(value)).clone())

    @property
    def mode(self) -> Mode:
        return self._mode  # a Python copy of the buffer: tracing and export read no tensor here

    @mode.setter
    def mode(self, mode: Mode) -> None:
        self._mode = mode
        self.mode_code.fill_(mode.value)

    # -- calibration ---------------------------------------------------------------------------
    def observe(self, x: torch.Tensor) -> None:
        self.calibrator.update(x.detach().to(torch.float32).cpu().numpy())

    def reset(self) -> None:
        self.calibrator = Calibrator(self.spec, self.method, name=self.tensor_name)

    def set_qparams(self, qparams: QParams) -> None:
        self.scale = torch.as_tensor(np.asarray(qparams.scale, np.float32)).reshape(self.scale.shape).clone()
        self.zero_point = torch.as_tensor(qparams.zero_point.astype(np.int32)).reshape(self.zero_point.shape).clone()
        self.calibrated.fill_(True)
        if self.log2_scale is not None:
            with torch.no_grad():
                self.log2_scale.copy_(torch.log2(self.scale))

    def current_scale(self) -> torch.Tensor:
        """The scale the forward pass uses: the buffer, or 2^(learned log2 scale)."""
        if self.log2_scale is None:
            return self.scale
        log2 = self.log2_scale
        if self.spec.power_of_two:
            log2 = log2 + (torch.round(log2) - log2).detach()
        return torch.exp2(log2)

    def sync_scale(self) -> None:
        """Copy a learned scale into the buffer (what export and state_dict readers see)."""
        if self.log2_scale is not None:
            with torch.no_grad():
                self.scale.copy_(self.current_scale())

    def finalize(self) -> QParams:
        """Scale and zero point from what was observed (rq_common decides); switch to QUANTIZE."""
        qparams = self.calibrator.qparams()
        self.set_qparams(qparams)
        self.mode = Mode.QUANTIZE
        return qparams

    def qparams(self) -> QParams:
        """The scale and zero point as rq_common QParams. QAT asks for them every step (the int32
        bias scale), so they are read again only when a buffer was replaced or changed in place."""
        if not bool(self.calibrated):
            raise NotCalibratedError(
                f"quantizer '{self.tensor_name}' has no scale yet: run rq_torch.calibrate(qmodel, data) first"
            )
        read = self._qparams
        if read is None or not read.still_holds(self.scale, self.zero_point):
            axis = self.spec.axis if self.spec.per_channel else None
            qparams = QParams(self.scale.numpy().copy(), self.zero_point.numpy().copy(), self.spec, axis=axis)
            read = self._qparams = _ReadQParams.of(self.scale, self.zero_point, qparams)
        return read.qparams

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is Mode.OBSERVE:
            self.observe(x)
            return x
        if self.mode is Mode.OFF:
            return x
        axis = self.spec.axis if self.spec.per_channel else None
        scale = self.current_scale() if self.log2_scale is not None and not torch.onnx.is_in_onnx_export() else self.scale
        return fake_quantize(x, scale, self.zero_point, self.spec.qmin, self.spec.qmax, axis)

    # -- state: observer <-> buffers around state_dict ------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.persist_observer:
            for key, value in self.calibrator.observer.state_dict().items():
                getattr(self, f"observer_{key}").copy_(torch.as_tensor(np.asarray(value)))
        self.sync_scale()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._mode = Mode(int(self.mode_code))
        if self.persist_observer:
            self.reset()
            state = {
                key.removeprefix("observer_"): buf.numpy() for key, buf in self.named_buffers() if key.startswith("observer_")
            }
            self.calibrator.observer.load_state_dict(state)

    def extra_repr(self) -> str:
        return f"{self.tensor_name}: {self.spec.dtype.value}, {self.method.value}, mode={self.mode.value}"
