"""Names of the range choosers (calibration methods); their logic lives in rq_common.calibration."""

from enum import Enum


class CalibrationMethod(Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"
    POT_NONOVERFLOW = "pot_nonoverflow"  # vai_q_tensorflow --method 0
    POT_MINMSE = "pot_minmse"  # vai_q_tensorflow --method 1

    @property
    def needs_power_of_two(self) -> bool:
        return self in (CalibrationMethod.POT_NONOVERFLOW, CalibrationMethod.POT_MINMSE)

    @property
    def needs_float_scale(self) -> bool:
        return self is CalibrationMethod.MSE


class BiasScaleRule(Enum):
    """How a bias gets its scale.

    PRODUCT: int32 with scale = input scale x weight scale (per channel), zero point 0; the
    integer accumulator adds it directly.
    OWN_POWER_OF_TWO: int8 with a power-of-two scale from the bias's own range (NonOverflow), as
    the Ryzen AI NPU's CNN path stores it.
    """

    PRODUCT = "product"
    OWN_POWER_OF_TWO = "own_power_of_two"


class QdqPlacement(Enum):
    """Which tensors get a QuantizeLinear / DequantizeLinear pair.

    EVERY_OP: every op rq covers is quantized, inputs and output: what the NPU runs, where an op
    left in float is a partition on the CPU.
    INTEGER_KERNELS: only where ONNX Runtime's CPU int8 kernels read or write int8 (optable's
    ``cpu`` facts; rq_common.pipeline.placement): an op without an integer kernel (LayerNorm, Erf)
    and an elementwise op between float tensors run in float on the float values, as fast and
    without their rounding (zoo minilm, cpu: mean cosine 0.843 -> 0.992 at the same latency). Opt-in
    on ``cpu`` (``get_preset("cpu", qdq="integer_kernels")``) until the whole zoo is measured with it.
    """

    EVERY_OP = "every_op"
    INTEGER_KERNELS = "integer_kernels"
