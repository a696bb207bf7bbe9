"""A Grid that takes the sites' replies as soon as they arrive.

Flower 1.41's `send_and_receive` (`flwr/superlink/grid/http_grid.py`) looks for replies every 3 s, so every
message exchange waits 1.5 s on average, and up to 3 s, after the last site has answered: a fixed cost per
round that short rounds feel. This one pushes the messages and pulls with Flower's public `push_messages` and
`pull_messages` every POLL_SECONDS instead; everything else is the wrapped Grid's.

The replies' arrays are pulled by the wrapped Grid, with Flower's retries or, where `server.app` applied them, the
shorter ones of `flower_common.flower_patches.SERVERAPP`. This class patches nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_SECONDS = 0.1  # a pull is one small request to the SuperLink


class PromptGrid:
    """`grid` with replies pulled every POLL_SECONDS; `send_and_receive` returns as Flower's does: the replies
    that came before `timeout` (None: wait for all). `on_reply` runs on each reply as it arrives, while the
    slower sites still train (the strategy's decoding, `server.wire`)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.on_reply: Callable[[Message], Message] = lambda reply: reply

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        waiting = set(self.grid.push_messages(messages))
        end = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while waiting:
            arrived = [self.on_reply(reply) for reply in self.grid.pull_messages(waiting)]
            replies += arrived
            waiting -= {m.metadata.reply_to_message_id for m in arrived}
            if not waiting or (timeout is not None and time.monotonic() >= end):
                break
            time.sleep(POLL_SECONDS)
        return replies
