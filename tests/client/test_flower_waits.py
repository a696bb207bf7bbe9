"""client.flower_waits: the waits it shortens are still where flwr keeps them, and shortened they are short."""

import inspect
import time

import flwr.supernode.runtime.run_clientapp as task_calls
import flwr.supernode.start_client_internal as supernode_loop
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectUnavailableError,
    pull_and_inflate_object_from_tree,
    pull_objects,
)

from client import flower_waits
from flower_common.object_retries import OBJECT_RETRY_S


def test_flwr_still_hard_codes_the_waits_this_module_replaces():
    source = inspect.getsource(supernode_loop)
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source
    assert supernode_loop.pull_objects is pull_objects
    assert task_calls.pull_and_inflate_object_from_tree is pull_and_inflate_object_from_tree
    assert "pull_and_inflate_object_from_tree(" in inspect.getsource(task_calls.pull_task_input)


def test_shortened_sleeps_and_retries(monkeypatch):
    for module, name in ((supernode_loop, "time"), (supernode_loop, "pull_objects"),
                         (task_calls, "pull_and_inflate_object_from_tree")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    flower_waits.shorten_supernode_waits()
    flower_waits.shorten_task_waits()

    started = time.monotonic()
    supernode_loop.time.sleep(3)
    supernode_loop.time.sleep(0.5)
    assert time.monotonic() - started < 1.5  # Flower: 3.5 s
    assert supernode_loop.time.monotonic is time.monotonic

    misses = {"a": 3}

    def pull(object_id: str) -> bytes:
        if misses[object_id]:
            misses[object_id] -= 1
            raise ObjectUnavailableError(object_id)
        return b"content"

    started = time.monotonic()
    assert supernode_loop.pull_objects(["a"], pull) == {"a": b"content"}
    assert time.monotonic() - started < 2  # Flower: 1 + 2 + 4 s
    assert task_calls.pull_and_inflate_object_from_tree.keywords["initial_backoff"] == OBJECT_RETRY_S
