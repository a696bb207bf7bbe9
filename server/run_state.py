"""What the server needs to continue a federated run after its last completed round, written atomically to
RUN/checkpoints/server_state.pt after every round and once before round 1, after the label query and the prior's
stage (in the background while the next round runs: `StateWriter`).

A resumed run (`resume-from = "RUN"` in the run config; `pedseg federate --resume RUN` sets it) reads it back:
the global shared weights, the round, the strategy's state (prototypes, pooled heads, the sites' joints and
first declared example counts, the evaluation still waiting for the next round), the frozen prior and the union
labels, the Flower run id that names the sites' private stores, and how much of metrics.jsonl belongs to the
completed rounds (a line written after the checkpoint is cut, as its round is trained again).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from copy import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pedseg_core.errors import PedsegError
from pedseg_core.torch_files import load_torch_file, save_atomically

STATE_FORMAT = "pedseg-server-state/1"


@dataclass
class RunState:
    """The server's side of a federated run after `completed_round` rounds (0: before the first)."""

    federation_run: str  # the first Flower run id of this federated run: sites keep their private layers under it
    completed_round: int
    arrays: dict[str, torch.Tensor]  # the global shared weights after that round
    strategy: dict  # server.strategy.SharedWeightsStrategy.state_dict()
    union: dict[str, int] | None = None  # the union label space (shared and full schemes)
    offsets: dict[str, int] | None = None  # each joint's offset in it
    prior: dict[str, torch.Tensor] | None = None  # the frozen shape auto-encoder (full scheme)
    metrics_bytes: int = 0  # the length of metrics.jsonl when the state was written


def state_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "server_state.pt"


def save_run_state(run_dir: Path, state: RunState) -> None:
    save_atomically(state_path(run_dir), {"format": STATE_FORMAT, **asdict(state)})


class StateWriter:
    """Writes each state in a background thread, so that the next round starts while it goes to disk (about
    0.1 s a round for the demo network). One write at a time, in order: `save` waits for the one before, `close`
    for the last; a write that failed raises there."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pedseg-server-state")
        self.pending: Future | None = None

    def save(self, state: RunState) -> None:
        """Write `state` as it is now (its fields are replaced after each round, never changed in place)."""
        self.wait()
        self.pending = self.pool.submit(save_run_state, self.run_dir, copy(state))

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown()


def load_run_state(run_dir: Path) -> RunState:
    """The state of the run in `run_dir`; PedsegError (one line) when there is none to continue from."""
    path = state_path(run_dir)
    if (Path(run_dir) / "results.json").exists():
        raise PedsegError(f"{run_dir}: this run already completed (results.json); nothing to resume")
    if not path.is_file():
        raise PedsegError(f"{path}: not found: the run stopped before its first checkpoint; start it anew")
    payload = load_torch_file(path, "the server state")
    if not isinstance(payload, dict) or payload.pop("format", None) != STATE_FORMAT:
        raise PedsegError(f"{path}: not a pedseg server state (expected format {STATE_FORMAT})")
    return RunState(**payload)
