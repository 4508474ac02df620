"""qlgrad.cpu_capability() follows ATEN_CPU_CAPABILITY as ATen does, and the kernel tests pass under
every capability below the machine's, so that the AVX2 and portable kernels are tested on every
machine (the machine's own capability is the rest of the suite's)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qlgrad
from helpers import run_python

TESTS_DIR = Path(__file__).parent
CAPABILITIES = ("default", "avx2", "avx512")  # in increasing order, as ATen's
# Every kernel path of every weight kind, row count and precision: per tensor and per channel in
# rows and in fbgemm's packing, group-wise, fp16 weights, through the ops and the standalone API;
# and the activation quantizers and the group-wise dequantization of torchao's layers.
# (test_int4pack.py runs its own tests under each capability.)
KERNEL_TESTS = (
    "test_linear_dynamic.py",
    "test_family.py",
    "test_standalone.py",
    "test_precision.py",
    "test_groupwise.py",
    "test_fbgemm_in_place.py",
    "test_bfloat16_products.py",
    "test_torchao_lowbit.py::test_groupwise_product_is_the_float64_product",
    "test_torchao_lowbit.py::test_dynamic_groupwise_forward_is_the_float64_product",
    "test_torchao_lowbit.py::test_dynamic_groupwise_forward_takes_floats_where_integers_cannot_hold_it",
    "test_torchao.py::test_activation_quantization_is_torchaos",
    "test_torchao_lowbit.py::test_activation_quantization_is_torchaos",
    "test_torchao_lowbit.py::test_groupwise_dequantization_is_torchaos",
)
# The kernels that AVX512-BF16 replaces on AVX-512 CPUs that have it: those of the bf16 precision.
BFLOAT16_KERNEL_TESTS = (
    "test_bfloat16_products.py",
    "test_precision.py",
    "test_int4pack.py",
    "test_torchao_lowbit.py::test_groupwise_product_is_the_float64_product",
)
# The integer products that AVX512-VNNI gives torchao's int8 and group-wise training forwards and
# the int8 precision (torch._int_mm, and the group-wise layers' floating point product, without it).
INT8_KERNEL_TESTS = (
    "test_torchao.py::test_integer_product_is_torchs",
    "test_torchao_lowbit.py::test_dynamic_groupwise_forward_is_the_float64_product",
    "test_torchao.py::test_training_forward_is_torchaos_bit_for_bit",
    "test_fbgemm_in_place.py::test_int8_product_is_exact",
)


def machine_capability() -> str:
    return torch.backends.cpu.get_cpu_capability().lower()


def capability_under(variable: str) -> tuple[str, str]:
    """(qlgrad's, ATen's) capability in a fresh process with ATEN_CPU_CAPABILITY set to ``variable``."""
    os.environ["ATEN_CPU_CAPABILITY"] = variable
    try:
        result = run_python(
            "import torch, qlgrad\nprint(qlgrad.cpu_capability(), torch.backends.cpu.get_cpu_capability().lower())"
        )
    finally:
        del os.environ["ATEN_CPU_CAPABILITY"]
    assert result.returncode == 0, result.stderr[-3000:]
    qlgrad_capability, aten_capability = result.stdout.split()
    return qlgrad_capability, aten_capability


def test_cpu_capability_is_aten_s():
    assert qlgrad.cpu_capability() == machine_capability()
    assert qlgrad.cpu_capability() in CAPABILITIES


@pytest.mark.parametrize("variable", [*CAPABILITIES, "not-a-capability"])
def test_cpu_capability_follows_the_variable_as_aten_does(variable):
    """A capability the CPU has is taken; one above it, or an unknown one, falls back as ATen decides."""
    qlgrad_capability, aten_capability = capability_under(variable)
    assert qlgrad_capability == aten_capability
    if variable in CAPABILITIES and CAPABILITIES.index(variable) <= CAPABILITIES.index(machine_capability()):
        assert qlgrad_capability == variable


@pytest.mark.parametrize(
    "capability",
    [c for c in CAPABILITIES if CAPABILITIES.index(c) < CAPABILITIES.index(machine_capability())],
)
def test_kernel_tests_pass_under_a_lower_capability(capability, tmp_path):
    run_kernel_tests(KERNEL_TESTS, tmp_path, ATEN_CPU_CAPABILITY=capability)


@pytest.mark.skipif(
    machine_capability() != "avx512" or "avx512_bf16" not in Path("/proc/cpuinfo").read_text(),
    reason="the CPU runs AVX-512 without AVX512-BF16 already, or no AVX-512",
)
def test_kernel_tests_pass_on_avx512_without_bfloat16_products(tmp_path):
    run_kernel_tests(BFLOAT16_KERNEL_TESTS, tmp_path, QLGRAD_AVX512_BF16="0")


@pytest.mark.skipif(
    machine_capability() != "avx512" or "avx512_vnni" not in Path("/proc/cpuinfo").read_text(),
    reason="the CPU runs AVX-512 without AVX512-VNNI already, or no AVX-512",
)
def test_kernel_tests_pass_on_avx512_without_int8_products(tmp_path):
    run_kernel_tests(INT8_KERNEL_TESTS, tmp_path, QLGRAD_AVX512_VNNI="0")


@pytest.mark.skipif(
    machine_capability() != "avx512" or "amx_bf16" not in Path("/proc/cpuinfo").read_text(),
    reason="the CPU runs AVX-512 without AMX already, or no AVX-512",
)
def test_kernel_tests_pass_on_avx512_without_amx(tmp_path):
    run_kernel_tests(BFLOAT16_KERNEL_TESTS + INT8_KERNEL_TESTS, tmp_path, QLGRAD_AMX="0")


# The tests of the panel GEMM's packed rows, which go past the caches on some CPUs only: the
# bfloat16 and int8 products (backwards and training forwards) and the bits of one thread and two.
PACKED_ROWS_TESTS = (
    "test_standalone.py::test_one_thread_and_two_give_the_same_bits",
    "test_bfloat16_products.py",
    "test_torchao.py::test_training_forward_is_torchaos_bit_for_bit",
    "test_fbgemm_in_place.py::test_int8_product_is_exact",
)


@pytest.mark.skipif(machine_capability() != "avx512", reason="only the AVX-512 packers stream their rows")
@pytest.mark.parametrize("streamed", ["0", "1"])
def test_kernel_tests_pass_with_the_packed_rows_streamed_or_cached(streamed, tmp_path):
    """Which CPUs stream the packed rows is a measured choice (Zen 4's do); both ways are tested on
    every AVX-512 machine, with the rows packed that AMD's CPUs would read where they lie."""
    run_kernel_tests(PACKED_ROWS_TESTS, tmp_path, QLGRAD_STREAMED_PACKED_ROWS=streamed, QLGRAD_ROWS_IN_PLACE="0")


@pytest.mark.skipif(machine_capability() != "avx512", reason="only the AVX-512 kernels read rows in place")
@pytest.mark.parametrize("in_place", ["0", "1"])
def test_kernel_tests_pass_with_rows_packed_or_in_place(in_place, tmp_path):
    """Which CPUs' AVX-512 kernels read bfloat16 and int8 rows where they lie is a measured choice
    (AMD's do); both ways are tested on every AVX-512 machine."""
    run_kernel_tests(BFLOAT16_KERNEL_TESTS + INT8_KERNEL_TESTS, tmp_path, QLGRAD_ROWS_IN_PLACE=in_place)


def run_kernel_tests(tests, tmp_path, **variables):
    env = dict(
        os.environ,
        **variables,
        # The figures of these runs are not the machine's: kept out of the reliability report.
        QLGRAD_RELIABILITY_REPORT=str(tmp_path / "reliability.json"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=TESTS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "passed" in result.stdout.splitlines()[-1]
