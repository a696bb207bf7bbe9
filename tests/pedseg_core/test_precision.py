"""`train.precision: auto` picks bf16 + channels-last only where the CPU (or GPU) runs bf16 natively."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pedseg_core.config import build_config
from pedseg_core.errors import PedsegError
from pedseg_core.precision import cpu_flags, resolve_precision

CPU = torch.device("cpu")
AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2\n", encoding="utf-8")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize("flags, expected", [
    (AVX2_ONLY | {"avx512_bf16"}, ("bf16", True)),
    (AVX2_ONLY | {"amx_bf16", "amx_tile"}, ("bf16", True)),
    (AVX2_ONLY | {"avx512f", "avx512bw"}, ("fp32", False)),  # AVX-512 without bf16: emulated
    (AVX2_ONLY, ("fp32", False)),
])
def test_auto_uses_bf16_only_where_it_is_native(flags, expected):
    chosen = resolve_precision("auto", False, CPU, flags)
    assert (chosen.dtype, chosen.channels_last) == expected and chosen.reason.startswith("auto")


def test_an_explicit_precision_is_kept_on_any_cpu():
    assert resolve_precision("bf16", False, CPU, AVX2_ONLY).dtype == "bf16"
    assert resolve_precision("fp32", True, CPU, AVX2_ONLY | {"amx_bf16"}).channels_last
    assert build_config("tiny").train.precision == "auto"
    with pytest.raises(PedsegError, match="train.precision must be one of auto, fp32, bf16, got 'fp16'"):
        build_config("tiny", overrides={"train": {"precision": "fp16"}})


@pytest.mark.parametrize("cap, expected", [("AVX2", "fp32"), ("avx512_core", "fp32"), ("AVX512_CORE_BF16", "bf16"),
                                           ("AVX10_1_512_AMX", "bf16"), ("", "bf16")])
def test_a_onednn_isa_cap_below_bf16_makes_auto_train_in_fp32(monkeypatch, cap, expected):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    chosen = resolve_precision("auto", False, CPU, AVX2_ONLY | {"avx512_bf16", "amx_bf16"})
    assert chosen.dtype == expected
    if expected == "fp32":
        assert f"ONEDNN_MAX_CPU_ISA={cap.upper()} emulates bf16" in chosen.reason


def test_the_isa_cap_is_the_one_onednn_obeys():
    """A process started with ONEDNN_MAX_CPU_ISA=AVX2 reports oneDNN's ISA as AVX2 (torch's own verbose line)
    and auto picks fp32 there."""
    code = ("import torch; from pedseg_core.precision import resolve_precision;"
            "torch.nn.functional.conv2d(torch.ones(8, 32, 32, 32), torch.ones(32, 32, 3, 3));"
            "print(resolve_precision('auto', False, torch.device('cpu')).dtype)")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ONEDNN_VERBOSE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert "isa:Intel AVX2" in done.stdout and done.stdout.strip().endswith("fp32")
