"""The quorum: a round starts only when enough sites are connected, and waits for them a bounded time.

Flower's own sampling waits without limit for `min_available_nodes`; a federation whose sites went away would
hang. `wait_for_quorum`, which the strategies call before Flower's sampling, gives up after the run's
`quorum-timeout` with a clear message instead.
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
            raise QuorumNotReached(f"{what}: {len(nodes)} of the {min_nodes} sites needed (min-sites) were connected "
                                   f"after {timeout:.0f} s (quorum-timeout); the run ends")
        time.sleep(POLL_SECONDS)
    return nodes

