"""server.prompt_grid: the replies' array retries it shortens are still where flwr keeps them, and shortened; each
reply goes through `on_reply` once, as it arrives."""

import inspect
import time

import flwr.superlink.grid.http_grid as http_grid
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError, pull_objects

from flower_common.object_retries import OBJECT_RETRY_S
from server.prompt_grid import PromptGrid
from tests.server.replies import reply


def test_flwr_still_pulls_reply_arrays_through_the_name_this_module_replaces():
    assert http_grid.pull_objects is pull_objects
    assert "pull_objects(" in inspect.getsource(http_grid.HttpGrid.pull_messages)


def test_a_prompt_grid_retries_a_missing_reply_array_promptly(monkeypatch):
    monkeypatch.setattr(http_grid, "pull_objects", http_grid.pull_objects)  # restored after the test
    PromptGrid(grid=None)
    misses = {"a": 3}

    def pull(object_id: str) -> bytes:
        if misses[object_id]:
            misses[object_id] -= 1
            raise ObjectUnavailableError(object_id)
        return b"content"

    started = time.monotonic()
    assert http_grid.pull_objects(["a"], pull) == {"a": b"content"}
    assert time.monotonic() - started < 2  # Flower: 1 + 2 + 4 s
    assert http_grid.pull_objects.keywords["initial_backoff"] == OBJECT_RETRY_S


class SlowSitesGrid:
    """The two calls of Flower's Grid a PromptGrid makes: each pull returns the next site's reply."""

    def __init__(self, nodes: list[int]) -> None:
        self.replies = [reply(node, f"site-{node}") for node in nodes]
        self.pulls = 0

    def push_messages(self, messages):
        return [f"to-{m}" for m in messages]

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [r for r in self.replies[self.pulls - 1:self.pulls] if r.metadata.reply_to_message_id in message_ids]


def test_each_reply_goes_through_on_reply_once_as_it_arrives(monkeypatch):
    monkeypatch.setattr(http_grid, "pull_objects", http_grid.pull_objects)  # restored after the test
    grid = PromptGrid(SlowSitesGrid([1, 2, 3]))
    seen = []
    grid.on_reply = lambda r: seen.append((r.metadata.src_node_id, grid.grid.pulls)) or r
    replies = grid.send_and_receive([1, 2, 3])
    assert [r.metadata.src_node_id for r in replies] == [1, 2, 3]
    assert seen == [(1, 1), (2, 2), (3, 3)]  # each at the pull that brought it, not all after the last
