"""rq_common.cpu_features against flag sets written by hand."""

from unittest import mock

from rq_common import cpu_features


def _with(flags: set[str], machine: str = "x86_64"):
    return (
        mock.patch.object(cpu_features, "cpu_flags", lambda: frozenset(flags)),
        mock.patch.object(cpu_features.platform, "machine", lambda: machine),
    )


def test_avx2_without_vnni_saturates_and_vnni_or_arm_does_not():
    cases = [({"sse2", "avx2"}, "x86_64", True), ({"avx2", "avx_vnni"}, "x86_64", False), ({"avx512bw", "avx512_vnni"}, "x86_64", False), (set(), "aarch64", False)]  # fmt: skip
    for flags, machine, saturates in cases:
        first, second = _with(flags, machine)
        with first, second:
            assert cpu_features.u8s8_kernels_may_saturate() is saturates, (flags, machine)


def test_report_line_names_the_simd_level_and_vnni():
    first, second = _with({"avx2", "fma"})
    with first, second:
        assert cpu_features.int8_features() == "avx2, no VNNI: ONNX Runtime's u8s8 kernels can saturate"
    first, second = _with({"avx2", "avx512bw", "avx512_vnni"})
    with first, second:
        assert cpu_features.int8_features() == "avx512bw, VNNI (avx512_vnni)"
