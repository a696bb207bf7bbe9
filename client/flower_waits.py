"""Flower's fixed waits on a site, shortened; `python -m client.flower_waits ARGS` is `flower-supernode ARGS`
(Flower's own SuperNode, `flwr.supernode.cli.flower_supernode`) with them shortened, and with the tasks of
messages whose run ended while they were received closed (`client.ended_runs`).

flwr 1.41 hard-codes them (docs/dev/flower-round-cost.md §9):
- the SuperNode sleeps 3 s after every empty `PullMessages` from the SuperLink, and 0.5 s between looks at its
  own state while its worker writes a reply;
- a message is announced before its arrays have arrived (the ServerApp pushes them after the message, the
  SuperNode pulls them after handing the task out), and whoever pulls an array not there yet retries after 1 s,
  then 2, 4 and up to 10 s.
On loopback they were most of a round's 10 s outside the sites' handlers. None has a setting, so this module
replaces what the SuperNode loop and the task calls see: the SuperLink poll becomes `SUPERLINK_POLL_S` (one
small gRPC request per site and interval), the local waits `LOCAL_POLL_S`, and array retries are
`flower_common.object_retries`' (the ServerApp shortens its own the same way). It reaches into flwr's
internals: flwr is pinned, and tests/client/test_flower_waits.py checks on every upgrade that the names it
replaces still exist.
"""

from __future__ import annotations

import sys
import time

import flwr.supernode.runtime.run_clientapp as task_calls
import flwr.supernode.start_client_internal as supernode_loop
from flwr.supernode.cli import flower_supernode

from client.ended_runs import close_tasks_of_ended_runs
from flower_common.object_retries import pull_object_tree_promptly, pull_objects_promptly

SUPERLINK_POLL_S = 0.25  # after an empty PullMessages (Flower: 3 s)
LOCAL_POLL_S = 0.05  # the SuperNode waiting on its own state (Flower: 0.5 s)
FLOWER_IDLE_SLEEP_S = 3


class ShortSleeps:
    """The `time` module as the SuperNode loop sees it: every attribute is `time`'s, `sleep` is shortened."""

    def __getattr__(self, name: str):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(SUPERLINK_POLL_S if seconds >= FLOWER_IDLE_SLEEP_S else min(seconds, LOCAL_POLL_S))


def shorten_supernode_waits() -> None:
    """In a SuperNode's process: its loop's sleeps and its array retries."""
    supernode_loop.time = ShortSleeps()
    supernode_loop.pull_objects = pull_objects_promptly


def shorten_task_waits() -> None:
    """In a site worker's process: the array retries of `pull_task_input`."""
    task_calls.pull_and_inflate_object_from_tree = pull_object_tree_promptly


def main() -> None:
    shorten_supernode_waits()
    close_tasks_of_ended_runs()
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
