"""Torch-saved files: written atomically (temporary file, then rename), read back as tensors and plain values
only, with one clear line when a file is missing or unreadable."""

from __future__ import annotations

from pathlib import Path

import torch

from pedseg_core.atomic_files import write_atomically
from pedseg_core.errors import PedsegError


def save_atomically(path: Path, payload: dict) -> None:
    """Temporary file, then rename: an interrupted save never leaves a broken file."""
    write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_torch_file(path: Path, what: str) -> object:
    """A torch-saved file (tensors and plain values only); PedsegError naming `what` when it is missing or
    unreadable."""
    path = Path(path)
    if not path.is_file():
        raise PedsegError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise PedsegError(f"{path}: cannot read {what}: the file is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one user-facing line
        reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise PedsegError(f"{path}: cannot read {what} (truncated or not a torch file?): "
                          f"{reason.split('. ')[0]}") from None
