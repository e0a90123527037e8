"""The precision a run computes in: ``auto``, ``fp32``, ``bf16`` or ``fp16``, resolved once at start-up.

``auto`` is bf16 where the hardware computes bf16 natively (a CUDA GPU that supports it; a CPU with
AVX512-BF16 or AMX, or an Arm CPU with BF16), else fp32. A CPU without those instructions emulates
bf16 through fp32 conversions and runs it slower than fp32 (bench/NOTES.md), so ``auto`` keeps such
machines on fp32 and their numbers unchanged. Training in bf16 is autocast with fp32 master weights
(Accelerate's mixed precision); decoding and rescoring in bf16 load the weights in bf16.

Every run says which path it took and why (:meth:`Precision.describe`): results from the fp32 and
the bf16 path are not bit-identical, so a table names the path that produced it.

Nothing here imports torch at module level (``neko --help`` reads :data:`PRECISIONS`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PRECISIONS",
    "Precision",
    "check_precision",
    "cpu_bf16_flags",
    "resolve_precision",
    "torch_dtype",
]

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
# /proc/cpuinfo flags of native bf16 arithmetic: x86 AVX512-BF16 and AMX, Arm's BF16 extension.
NATIVE_BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16", "bf16")
# The torch dtype names CorrectionOptions.dtype has always accepted, as precisions.
_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class Precision:
    """A resolved precision (``fp32``, ``bf16`` or ``fp16``) and why it was chosen."""

    name: str
    reason: str

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"


def check_precision(value: str, what: str = "precision") -> str:
    """``value`` as one of :data:`PRECISIONS` (torch's names float32/bfloat16/float16 are accepted
    too); any other value is one ValueError naming the choices."""
    name = _DTYPE_NAMES.get(value, value)
    if name not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return name


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 flags this CPU reports in ``/proc/cpuinfo`` (``cpuinfo``: its text, for
    tests). Empty where the file is unreadable (macOS, Windows): bf16 is then not assumed."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def _cpu_capability() -> str:
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def resolve_precision(
    requested: str,
    device_type: str,
    *,
    cpu_flags: Iterable[str] | None = None,
    cpu_capability: str | None = None,
    cuda_bf16: bool | None = None,
) -> Precision:
    """The precision a run on ``device_type`` ("cpu", "cuda", ...) computes in, for ``requested``.

    ``cpu_flags`` / ``cpu_capability`` / ``cuda_bf16`` replace the detection (tests inject them);
    by default they come from ``/proc/cpuinfo``, ``torch.backends.cpu.get_cpu_capability()`` and
    ``torch.cuda.is_bf16_supported()``."""
    name = check_precision(requested)
    if name != "auto":
        return Precision(name, "as requested")
    if device_type == "cuda":
        if cuda_bf16 is None:
            import torch

            cuda_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if cuda_bf16:
            return Precision("bf16", "auto: this GPU computes bf16 natively")
        return Precision("fp32", "auto: this GPU has no bf16 support")
    if device_type != "cpu":
        return Precision("fp32", f"auto: fp32 on {device_type}")
    flags = list(cpu_flags) if cpu_flags is not None else cpu_bf16_flags()
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    capability = cpu_capability if cpu_capability is not None else _cpu_capability()
    if native:
        return Precision("bf16", f"auto: this CPU has native bf16 ({', '.join(native)}; {capability})")
    return Precision(
        "fp32",
        f"auto: this CPU has no native bf16 ({capability}, no avx512_bf16/amx_bf16), where bf16 is "
        "emulated and slower",
    )


def torch_dtype(precision: Precision | str):
    """The torch dtype of a resolved precision (``fp32`` -> ``torch.float32``, ...)."""
    import torch

    name = precision.name if isinstance(precision, Precision) else check_precision(precision)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
