"""What the CPU that runs an int8 model offers for int8 dot products, and what follows for ONNX
Runtime's CPU kernels.

ONNX Runtime's u8 x s8 kernels on x86 without VNNI multiply with AVX2's VPMADDUBSW, which adds each
pair of neighbouring products in int16 with saturation: where two activations near 255 meet two
weights of the same sign near 127 (2 x 255 x 127 = 64770 > 32767), the sum is clipped and the
fused QLinearConv / QLinearMatMul output is wrong (ONNX Runtime's quantization docs: "When and why
do I need to try U8U8?"; its remedy is 7-bit weights, reduce_range). With VNNI (VPDPBUSD, int32
accumulation), on Arm, and in the graph as written, there is no such saturation.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def u8s8_kernels_may_saturate() -> bool:
    """True where ONNX Runtime's fused u8 x s8 kernels run on VPMADDUBSW (x86 without VNNI)."""
    return is_x86() and not (cpu_flags() & set(VNNI_FLAGS))


def int8_features() -> str:
    """One line for reports: the SIMD level and whether VNNI is there."""
    if not is_x86():
        return platform.machine()
    flags = cpu_flags()
    simd = next((f for f in ("avx512bw", "avx2") if f in flags), "no AVX2")
    vnni = sorted(flags & set(VNNI_FLAGS))
    return f"{simd}, " + (f"VNNI ({', '.join(vnni)})" if vnni else "no VNNI: ONNX Runtime's u8s8 kernels can saturate")
