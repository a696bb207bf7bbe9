"""A site's DP-SGD accountant for one dataset, kept outside any run folder: `<state_dir>/privacy/<dataset>.pt`,
where `<dataset>` is `dataset_hash` of its training cases. Every DP step of the site on that dataset, in every
run and round (and the prior's stage 1), spends from this one accountant, whatever run folder a server names.

The hash is over the case files' names and contents (sha256 of each file, streamed): a copy or a move of the
dataset keeps its budget, and touching a file does not reset it. It costs one read of the training files per
site process, which the site reads anyway to preprocess them.

Two runs of a site may train at once: each adds to the file only what it spent since it loaded the accountant
(RDP composes in any order), under a lock, so neither overwrites the other's spending."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from pedseg_core.data.nnunet import Case
from pedseg_core.private_dirs import make_private_dir
from pedseg_core.torch_files import save_atomically

LEDGER_FOLDER = "privacy"
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def dataset_hash(cases: Iterable[Case]) -> str:
    """sha256 over the sorted (file name, sha256 of its contents) of every image and label of `cases`."""
    files = [path for case in cases for path in (case.image, case.label) if path is not None]
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


class PrivacyLedger:
    """The accountant's state (`PrivateTraining.state_dict()`) of one dataset at one site, written atomically into
    the site's private state folder (0700; the file 0600)."""

    def __init__(self, state_dir: Path, dataset: str) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LEDGER_FOLDER / f"{dataset}.pt"

    def load(self) -> dict | None:
        """What the site has spent on this dataset (None: no DP step yet)."""
        return torch.load(self.path, map_location="cpu", weights_only=True) if self.path.is_file() else None

    def save(self, state: dict, loaded: dict | None) -> None:
        """Add to the file what `state` spent beyond `loaded` (what `load` gave before training)."""
        make_private_dir(self.state_dir)
        make_private_dir(self.path.parent)
        with os.fdopen(os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.load()
            spent = steps_by_noise(state) - (steps_by_noise(loaded) if loaded is not None else Counter())
            history = [*(current["accountant"]["history"] if current is not None else []),
                       *((noise, rate, steps) for (noise, rate), steps in sorted(spent.items()))]
            save_atomically(self.path, {**state, "accountant": {**state["accountant"], "history": history}})


def steps_by_noise(state: dict) -> Counter:
    """The accountant's steps per (noise multiplier, sampling rate)."""
    steps: Counter = Counter()
    for noise, rate, count in state["accountant"]["history"]:
        steps[(noise, rate)] += count
    return steps
