"""``auto`` precision: resolved from the detected hardware (injected here), printed with its reason."""

from __future__ import annotations

import pytest

from neko.model.precision import PRECISIONS, check_precision, cpu_bf16_flags, resolve_precision, torch_dtype

AVX2_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_cpu_flags_are_read_from_cpuinfo():
    assert cpu_bf16_flags(AVX2_CPUINFO) == []
    assert cpu_bf16_flags(AMX_CPUINFO) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags(ARM_CPUINFO) == ["bf16"]
    assert cpu_bf16_flags("") == []


@pytest.mark.parametrize(
    ("device", "flags", "cuda_bf16", "expected"),
    [
        ("cpu", [], None, "fp32"),
        ("cpu", ["avx512_bf16"], None, "bf16"),
        ("cpu", ["amx_bf16", "avx512_bf16"], None, "bf16"),
        ("cuda", [], True, "bf16"),
        ("cuda", [], False, "fp32"),
        ("mps", ["amx_bf16"], None, "fp32"),
    ],
)
def test_auto_follows_the_detected_capability(device, flags, cuda_bf16, expected):
    p = resolve_precision("auto", device, cpu_flags=flags, cpu_capability="AVX512", cuda_bf16=cuda_bf16)
    assert p.name == expected
    assert p.describe().startswith(f"precision {expected} (auto: ")


def test_the_no_bf16_cpu_reason_names_what_is_missing():
    p = resolve_precision("auto", "cpu", cpu_flags=[], cpu_capability="AVX2")
    assert p.describe() == (
        "precision fp32 (auto: this CPU has no native bf16 (AVX2, no avx512_bf16/amx_bf16), where bf16 "
        "is emulated and slower)"
    )


@pytest.mark.parametrize("value", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept_on_any_hardware(value):
    p = resolve_precision(value, "cpu", cpu_flags=[], cpu_capability="AVX2")
    assert (p.name, p.reason) == (value, "as requested")


def test_torch_names_are_accepted_and_anything_else_is_one_clear_error():
    import torch

    assert check_precision("bfloat16") == "bf16" and check_precision("float32") == "fp32"
    assert (
        torch_dtype("bf16") is torch.bfloat16
        and torch_dtype(resolve_precision("fp32", "cpu")) is torch.float32
    )
    with pytest.raises(ValueError, match=r"precision must be one of auto, fp32, bf16, fp16, got 'bf17'"):
        resolve_precision("bf17", "cpu")
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")


def test_this_machine_resolves_without_injection():
    p = resolve_precision("auto", "cpu")
    assert p.name == ("bf16" if cpu_bf16_flags() else "fp32")
