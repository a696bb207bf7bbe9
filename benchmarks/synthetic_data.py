"""The benchmarks' synthetic data: `pedseg data synth DIR --seed 0` (the reproduction data, as `make reproduce`),
written once and reused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def synthesized(data: Path, *extra: str) -> Path:
    """`data` holding ankle/, knee/ and shoulder/ (synthesized unless already there); `extra`: more synth options."""
    if not (data / "shoulder" / "dataset.json").is_file():
        subprocess.run([sys.executable, "-m", "pedseg", "data", "synth", str(data), "--seed", "0", *extra],
                       check=True, stdout=subprocess.DEVNULL)
    return data
