"""The arithmetic training runs in: `train.precision` (auto | fp32 | bf16) -> what the machine does fastest.

bf16 autocast with channels-last memory is the fastest path where bf16 is native: CUDA GPUs that support it, and
CPUs with AVX512-BF16 or AMX (1.97x the fp32 peer loop, 2 cores: benchmarks/RESULTS.md). Where bf16 is emulated
(AVX2-only CPUs) it runs several times slower than fp32, and channels-last alone was 0.89x of fp32 there, so
`auto` picks plain fp32. The CPU's flags are read from /proc/cpuinfo, never assumed, and a cap on oneDNN's
instruction set (`ONEDNN_MAX_CPU_ISA`, which an administrator sets to make a mixed cluster compute alike) below
AVX512_CORE_BF16 makes bf16 emulated on any CPU: oneDNN then ran a bf16 convolution 70x slower than fp32 here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
# oneDNN's ISA names below AVX512_CORE_BF16 (oneDNN's documented ONEDNN_MAX_CPU_ISA values): bf16 is emulated
ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


@dataclass(frozen=True)
class Precision:
    """What training uses: bf16 autocast or fp32, channels-last memory or not, and why (for the log)."""

    dtype: str  # "bf16" | "fp32"
    channels_last: bool
    reason: str

    def describe(self) -> str:
        layout = " + channels-last" if self.channels_last else ""
        return f"{self.dtype}{layout} ({self.reason})"


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo is not readable)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def isa_cap_without_bf16() -> str | None:
    """ONEDNN_MAX_CPU_ISA where it caps oneDNN below native bf16 (e.g. "AVX2"), else None."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return cap if cap in ISA_CAPS_WITHOUT_BF16 else None


def native_bf16(device: torch.device, flags: set[str] | None = None) -> str | None:
    """Why bf16 is native on `device` (a short reason), or None where it would be emulated."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} supports bf16" if torch.cuda.is_bf16_supported() else None
    if isa_cap_without_bf16() is not None:
        return None
    found = sorted((cpu_flags() if flags is None else flags) & set(NATIVE_BF16_CPU_FLAGS))
    return f"the CPU has {', '.join(found)}" if found else None


def resolve_precision(name: str, channels_last: bool, device: torch.device, flags: set[str] | None = None
                      ) -> Precision:
    """`train.precision` (validated by the config) and `train.channels_last` on `device` -> the path to train
    with."""
    if name != "auto":
        return Precision(name, channels_last, "train.precision")
    reason = native_bf16(device, flags)
    if reason is not None:
        return Precision("bf16", True, f"auto: {reason}")
    cap = isa_cap_without_bf16() if device.type == "cpu" else None
    why = f"ONEDNN_MAX_CPU_ISA={cap} emulates bf16" if cap else "bf16 would be emulated here"
    return Precision("fp32", channels_last, f"auto: {why}")
