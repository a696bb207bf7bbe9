"""A site's private layers on its own disk, so a restarted site node continues with them."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor


class PrivateStore:
    """`<state_dir>/<run>/private.pt`: one file per run, written atomically (temporary file, then rename)."""

    def __init__(self, state_dir: Path, run: str) -> None:
        self.path = Path(state_dir) / f"run-{run}" / "private.pt"

    def load(self) -> dict[str, Tensor] | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def save(self, private: dict[str, Tensor]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(private, tmp)
        os.replace(tmp, self.path)
