"""A site's own records on its own disk: its private layers (so a restarted site node continues with them),
its personalized model as last evaluated (for `pedseg predict`) and, when asked, an audit copy of exactly what
it sent to the server each round. A run folder closes after its run's last evaluation: no later request, whatever
`federation-run` it names, loads or writes it, so a finished run's `model.pt` is never overwritten and its
private layers never go into another run."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

from pedseg_core.atomic_files import write_atomically
from pedseg_core.errors import PedsegError
from pedseg_core.private_dirs import make_private_dir
from pedseg_core.torch_files import save_atomically

RUN_FOLDER = "run-{run}"
MODEL_FILE = "model.pt"
FINISHED_FILE = "finished"  # written after the run's last evaluation: the folder is closed


class RunFolderClosed(PedsegError):
    """A request names the run folder of a run that has finished at this site."""


class PrivateStore:
    """`<state_dir>/run-<run>/`: `private.pt`, `optimizer.pt`, `model.pt` and `sent/`, each file written
    atomically (temporary file, then rename). The state folder and the run folder are private (0700) before
    anything is written into them, so every file in them is too (0600)."""

    def __init__(self, state_dir: Path, run: str) -> None:
        self.state_dir = Path(state_dir)
        self.run = run
        self.path = self.state_dir / RUN_FOLDER.format(run=run) / "private.pt"
        self.optimizer_path = self.path.parent / "optimizer.pt"
        self.sent_dir = self.path.parent / "sent"

    @property
    def model_path(self) -> Path:
        """Where the site writes its complete pedseg checkpoint (`model.pt`), its private run folder ready."""
        return self._ready(self.path.parent / MODEL_FILE)

    @property
    def finished(self) -> bool:
        return (self.path.parent / FINISHED_FILE).is_file()

    def require_open(self) -> None:
        """RunFolderClosed (one line naming the run only; the folder in the site's log) when the run has finished."""
        if self.finished:
            print(f"pedseg site: refused a request naming federation-run {self.run}: {self.path.parent} is "
                  f"closed (its run has finished)", file=sys.stderr, flush=True)
            raise RunFolderClosed(f"federation-run {self.run}: that run has finished at this site, and its run "
                                  f"folder is neither loaded nor written again (a new run starts its own)")

    def finish(self) -> None:
        """Close the run folder (after the run's last evaluation)."""
        write_atomically(self._ready(self.path.parent / FINISHED_FILE), lambda tmp: tmp.write_text("finished\n"))

    def _ready(self, path: Path) -> Path:
        """`path`, once the state folder and the run folder are private (0700) and the run is not finished."""
        self.require_open()
        make_private_dir(self.state_dir)
        make_private_dir(self.path.parent)
        return path

    @staticmethod
    def models_in(state_dir: Path) -> list[Path]:
        """The personalized models that the runs of a site's state directory left, in order of run folder."""
        return sorted(Path(state_dir).glob(f"{RUN_FOLDER.format(run='*')}/{MODEL_FILE}"))

    def load(self) -> dict[str, Tensor] | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def save(self, private: dict[str, Tensor]) -> None:
        save_atomically(self._ready(self.path), private)

    def load_optimizer(self) -> dict | None:
        return torch.load(self.optimizer_path, map_location="cpu", weights_only=True) \
            if self.optimizer_path.is_file() else None

    def save_optimizer(self, state: dict) -> None:
        save_atomically(self._ready(self.optimizer_path), state)

    def save_sent(self, server_round: int, sent: dict[str, dict[str, Tensor]], num_examples: int) -> None:
        """`sent/round-NNN.pt`: every array record of this round's reply (by name) and its example count."""
        path = self._ready(self.sent_dir / f"round-{server_round:03d}.pt")
        save_atomically(path, {**sent, "num_examples": num_examples})
