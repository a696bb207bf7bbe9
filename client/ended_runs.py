"""A message of a run that ended while the SuperNode was receiving it leaves no open task behind.

flwr 1.41's SuperNode creates a ClientApp task for each message it is handed, then pulls the message's arrays.
When the SuperLink answers that the run has ended (a run it stopped, or one it lost in a restart), the pull
raises `RunNotRunningException`, a BaseException, which passes the SuperNode's own clean-up by: the message
stays without its arrays and its task stays open. Flower's one `flwr-clientapp` process per task would wait for
it on its own; a site's warm worker (`client.site_worker`), which runs tasks one after the other, claimed it and
waited for its arrays up to 500 retries (about 8 minutes) before any later message ran: a site stalled after
its SuperLink came back. Raised as an ordinary error instead, Flower's own path runs: the message and its
objects are deleted and the task is finished as failed ("Failed to receive message ...").
"""

from __future__ import annotations

from collections.abc import Callable

import flwr.supernode.start_client_internal as supernode_loop
from flwr.supercore.run import RunNotRunningException


class RunEndedWhileReceiving(Exception):
    """The SuperLink said the message's run has ended while its arrays were being pulled."""


def failing_when_the_run_ended(pull_objects: Callable[..., dict[str, bytes]]) -> Callable[..., dict[str, bytes]]:
    """`pull_objects`, raising `RunEndedWhileReceiving` where it raised `RunNotRunningException`."""

    def pull(*args, **kwargs) -> dict[str, bytes]:
        try:
            return pull_objects(*args, **kwargs)
        except RunNotRunningException:
            raise RunEndedWhileReceiving("its run ended while the message was being received") from None

    return pull


def close_tasks_of_ended_runs() -> None:
    """In a SuperNode's process: a message whose run ends while it is received fails its task."""
    supernode_loop.pull_objects = failing_when_the_run_ended(supernode_loop.pull_objects)
