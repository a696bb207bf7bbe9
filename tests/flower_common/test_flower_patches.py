"""flower_common.flower_patches: the names it patches are still where flwr keeps them; applied, the waits are short;
applied once per process, only on the flwr they were written for, and never with PEDSEG_STOCK_FLOWER=1."""

import inspect
import logging
import subprocess
import sys
import time

import flwr.superlink.grid.http_grid as http_grid
import flwr.supernode.runtime.run_clientapp as task_calls
import flwr.supernode.start_client_internal as supernode_loop
import pytest
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectUnavailableError,
    pull_and_inflate_object_from_tree,
    pull_objects,
)

from flower_common import flower_patches
from flower_common.flower_patches import (
    OBJECT_RETRY_S,
    SERVERAPP,
    SITE_WORKER,
    STOCK_FLOWER_ENV,
    SUPERNODE,
    apply_flower_patches,
)

EVERY_PATCH = (*SERVERAPP, *SUPERNODE, *SITE_WORKER)


@pytest.fixture
def unpatched(monkeypatch):
    """Flower's own attributes, however earlier tests left them, restored after the test; nothing applied yet."""
    for patch in EVERY_PATCH:
        module = __import__(patch.module, fromlist=["_"])
        original = {"time": time, "pull_objects": pull_objects,
                    "pull_and_inflate_object_from_tree": pull_and_inflate_object_from_tree}[patch.attribute]
        monkeypatch.setattr(module, patch.attribute, original)
    monkeypatch.setattr(flower_patches, "_applied", set())
    monkeypatch.setattr(flower_patches, "_said", [])
    monkeypatch.delenv(STOCK_FLOWER_ENV, raising=False)
    return monkeypatch


def arriving_after_misses(misses: int):
    """An object puller whose object "a" is not there for the first `misses` pulls."""
    left = {"a": misses}

    def pull(object_id: str) -> bytes:
        if left[object_id]:
            left[object_id] -= 1
            raise ObjectUnavailableError(object_id)
        return b"content"

    return pull


def patched_values() -> dict[str, object]:
    return {f"{p.module}.{p.attribute}": getattr(__import__(p.module, fromlist=["_"]), p.attribute)
            for p in EVERY_PATCH}


def flower_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flwr" and "stock Flower" in r.getMessage()]


def test_flwr_still_keeps_what_the_patches_replace():
    assert "time.sleep(3)" in inspect.getsource(supernode_loop) and "time.sleep(0.5)" in inspect.getsource(
        supernode_loop)
    assert "pull_objects(" in inspect.getsource(http_grid.HttpGrid.pull_messages)
    assert "pull_and_inflate_object_from_tree(" in inspect.getsource(task_calls.pull_task_input)
    for module, name in ((supernode_loop, "pull_objects"), (http_grid, "pull_objects"),
                         (task_calls, "pull_and_inflate_object_from_tree")):
        assert name in vars(module)


def test_every_patch_says_why_what_it_gains_and_when_it_goes():
    assert len({p.name for p in EVERY_PATCH}) == len(EVERY_PATCH) == 5
    assert all(p.reason and p.gain and p.remove_when for p in EVERY_PATCH)


def test_on_the_flower_they_were_written_for_the_patches_apply_once(unpatched, caplog):
    unpatched.setattr(flower_patches, "flower_version", lambda: "1.41.0")
    assert apply_flower_patches(SERVERAPP) and apply_flower_patches(SUPERNODE) and apply_flower_patches(SITE_WORKER)
    first = patched_values()
    assert supernode_loop.pull_objects is not pull_objects and http_grid.pull_objects is not pull_objects
    assert apply_flower_patches(SUPERNODE) and apply_flower_patches(SERVERAPP)  # idempotent: nothing wrapped twice
    assert patched_values() == first
    assert flower_warnings(caplog) == []

    started = time.monotonic()
    supernode_loop.time.sleep(3)
    supernode_loop.time.sleep(0.5)
    assert time.monotonic() - started < 1.5  # Flower: 3.5 s
    assert supernode_loop.time.monotonic is time.monotonic
    for pulled in (supernode_loop.pull_objects, http_grid.pull_objects):
        started = time.monotonic()
        assert pulled(["a"], arriving_after_misses(3)) == {"a": b"content"}
        assert time.monotonic() - started < 2  # Flower: 1 + 2 + 4 s
    assert task_calls.pull_and_inflate_object_from_tree.keywords["initial_backoff"] == OBJECT_RETRY_S


@pytest.mark.parametrize("version", ["1.42.0", "1.40.2", "2.41.0"])
def test_on_another_flower_nothing_is_patched_and_one_line_says_so(unpatched, caplog, version):
    unpatched.setattr(flower_patches, "flower_version", lambda: version)
    before = patched_values()
    with caplog.at_level(logging.INFO, logger="flwr"):
        assert not apply_flower_patches(SUPERNODE)
        assert not apply_flower_patches(SITE_WORKER)
        assert not apply_flower_patches(SERVERAPP)
    assert patched_values() == before
    (line,) = flower_warnings(caplog)
    assert f"flwr {version} is not the 1.41.x" in line and "stock Flower behaviour is used" in line
    assert [r.levelno for r in caplog.records if "stock Flower" in r.getMessage()] == [logging.WARNING]


def test_the_stock_switch_applies_nothing_on_the_right_flower(unpatched, caplog):
    unpatched.setattr(flower_patches, "flower_version", lambda: "1.41.0")
    unpatched.setenv(STOCK_FLOWER_ENV, "1")
    before = patched_values()
    with caplog.at_level(logging.INFO, logger="flwr"):
        assert not apply_flower_patches(SUPERNODE) and not apply_flower_patches(SERVERAPP)
    assert patched_values() == before
    (line,) = flower_warnings(caplog)
    assert line.startswith(f"pedseg: {STOCK_FLOWER_ENV}=1: stock Flower behaviour is used")
    unpatched.setenv(STOCK_FLOWER_ENV, "0")
    assert flower_patches.stock_flower_reason() is None


def test_importing_the_module_patches_nothing():
    """Only the entry points apply patches: a fresh interpreter that imports every module that names them
    still has Flower's own attributes."""
    probe = ("import flwr.superlink.grid.http_grid as g, flwr.supernode.start_client_internal as s, "
             "flwr.supernode.runtime.run_clientapp as t, time\n"
             "from flwr.supercore.inflatable.inflatable_utils import pull_objects, pull_and_inflate_object_from_tree\n"
             "import flower_common.flower_patches, server.prompt_grid, client.supernode, client.site_worker\n"
             "from server.prompt_grid import PromptGrid\nPromptGrid(None)\n"
             "assert g.pull_objects is pull_objects and s.pull_objects is pull_objects and s.time is time\n"
             "assert t.pull_and_inflate_object_from_tree is pull_and_inflate_object_from_tree\n")
    subprocess.run([sys.executable, "-c", probe], check=True)
