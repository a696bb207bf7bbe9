"""The quorum: a round starts only when enough sites are connected, and waits for them a bounded time.

Flower's own sampling waits without limit for `min_available_nodes`; a federation whose sites went away would
hang. `wait_for_quorum` gives up after the run's `quorum-timeout` with a clear message instead.
"""

from __future__ import annotations

import time

from flwr.serverapp import Grid

from pedseg_core.errors import PedsegError

POLL_SECONDS = 1.0


class QuorumNotReached(PedsegError):
    """Fewer sites than the quorum stayed connected for the whole wait."""


def wait_for_quorum(grid: Grid, min_nodes: int, timeout: float, what: str) -> list[int]:
    """The IDs of all connected nodes once at least `min_nodes` are; QuorumNotReached after `timeout` s."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < min_nodes:
        if time.monotonic() >= deadline:
            raise QuorumNotReached(f"{what}: {len(nodes)} of the {min_nodes} sites needed (min-nodes) were connected "
                                   f"after {timeout:.0f} s (quorum-timeout); the run ends")
        time.sleep(POLL_SECONDS)
    return nodes


class BoundedQuorum:
    """Mixin for a Flower strategy (before it in the bases): each round's sampling first waits, at most
    `quorum_timeout` seconds, for its `min_available_nodes`."""

    def __init__(self, *args, quorum_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.quorum_timeout = quorum_timeout

    def configure_train(self, server_round, arrays, config, grid):
        wait_for_quorum(grid, self.min_available_nodes, self.quorum_timeout, f"round {server_round}")
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round, arrays, config, grid):
        wait_for_quorum(grid, self.min_available_nodes, self.quorum_timeout, f"the evaluation of round {server_round}")
        return super().configure_evaluate(server_round, arrays, config, grid)
