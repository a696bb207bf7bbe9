"""server.prompt_grid: the replies' array retries it shortens are still where flwr keeps them, and shortened."""

import inspect
import time

import flwr.superlink.grid.http_grid as http_grid
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError, pull_objects

from flower_common.object_retries import OBJECT_RETRY_S
from server.prompt_grid import PromptGrid


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
