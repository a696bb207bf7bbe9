"""The arithmetic training runs in: `train.precision` (auto | fp32 | bf16) -> what the machine does fastest.

bf16 autocast with channels-last memory is the fastest path where bf16 is native: CUDA GPUs that support it, and
CPUs with AVX512-BF16 or AMX (1.7x fp32 for the ResNet-34 U-Net on 2 cores, FACTS.md). Where bf16 is emulated
(AVX2-only CPUs) it runs several times slower than fp32, and channels-last alone was 0.89x of fp32 there, so
`auto` picks plain fp32. The CPU's flags are read from /proc/cpuinfo, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


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


def native_bf16(device: torch.device, flags: set[str] | None = None) -> str | None:
    """Why bf16 is native on `device` (a short reason), or None where it would be emulated."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} supports bf16" if torch.cuda.is_bf16_supported() else None
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
    return Precision("fp32", channels_last, "auto: bf16 would be emulated here")
