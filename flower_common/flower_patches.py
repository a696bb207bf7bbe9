"""Every patch of Flower's internals, in one place, each with its reason, its measured gain and when to remove it.

Flower 1.41 hard-codes waits that short rounds feel (docs/decisions/0001-prompt-replies.md,
0007-shortened-flower-waits.md) and leaves a task open when a run ends while its message is received
(0002-warm-site-worker.md). None has a setting, so pedseg replaces the module attributes below. They are applied
only by the entry points, never at import or from a constructor:

    apply_flower_patches(SERVERAPP)    the ServerApp's main (server/app.py)
    apply_flower_patches(SUPERNODE)    a site's SuperNode process (client/supernode.py)
    apply_flower_patches(SITE_WORKER)  a site's warm worker (client/site_worker.py)

Each applies its patches once per process, and none where Flower is stock (`stock_flower_reason`): the environment
variable PEDSEG_STOCK_FLOWER=1 (set for the launcher, the SuperLink and every `pedseg-client`; their processes
inherit it), or a flwr other than the 1.41.x the patches were written for. Then one line is logged and Flower
behaves as shipped, end to end: a site's SuperNode starts Flower's own `flower-superexec` (one `flwr-clientapp`
process per message) instead of pedseg's warm worker (client/approved_app.py: `launcher_env`). The worker's retry
invoker (`task_retry_invoker`) is the one patch of a Flower object rather than a module; it exists only in the
worker, which stock Flower does not run.

tests/flower_common/test_flower_patches.py fails when a Flower upgrade moves a patched name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from logging import INFO, WARNING
from types import ModuleType
from typing import Any

WRITTEN_FOR = ("1", "41")  # flwr 1.41.x: the version whose source these patches were read against
STOCK_FLOWER_ENV = "PEDSEG_STOCK_FLOWER"  # "1": apply no patch and run Flower's own task executor on the sites

OBJECT_RETRY_S = 0.05  # first retry of an array not there yet (Flower: 1 s, doubling)
OBJECT_RETRY_CAP_S = 0.1  # (Flower: 10 s)
SUPERLINK_POLL_S = 0.25  # a SuperNode's wait after an empty PullMessages (Flower: 3 s)
LOCAL_POLL_S = 0.05  # a SuperNode waiting on its own state (Flower: 0.5 s)
FLOWER_IDLE_SLEEP_S = 3


@dataclass(frozen=True)
class Patch:
    """`module.attribute` replaced by `replace(the attribute as found)`."""

    name: str
    module: str
    attribute: str
    replace: Callable[[Any], Any]
    reason: str
    gain: str
    remove_when: str

    def apply(self) -> None:
        target: ModuleType = importlib.import_module(self.module)
        setattr(target, self.attribute, self.replace(getattr(target, self.attribute)))


def prompt_retries(pull: Callable[..., Any]) -> Callable[..., Any]:
    """Flower's `pull_objects` / `pull_and_inflate_object_from_tree` retrying a missing array after
    OBJECT_RETRY_S, doubling to OBJECT_RETRY_CAP_S."""
    return partial(pull, initial_backoff=OBJECT_RETRY_S, backoff_cap=OBJECT_RETRY_CAP_S)


class ShortSleeps:
    """The `time` module as the SuperNode loop sees it: every attribute is `time`'s, `sleep` is shortened."""

    def __init__(self, clock: ModuleType) -> None:
        self.clock = clock

    def __getattr__(self, name: str):
        return getattr(self.clock, name)

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(SUPERLINK_POLL_S if seconds >= FLOWER_IDLE_SLEEP_S else min(seconds, LOCAL_POLL_S))


class RunEndedWhileReceiving(Exception):
    """The SuperLink said the message's run has ended while its arrays were being pulled."""


def failing_when_the_run_ended(pull_objects: Callable[..., dict[str, bytes]]) -> Callable[..., dict[str, bytes]]:
    """`pull_objects`, raising `RunEndedWhileReceiving` (an Exception, which the SuperNode's clean-up catches)
    where it raised `RunNotRunningException` (a BaseException, which passes it by)."""
    from flwr.supercore.run import RunNotRunningException

    def pull(*args, **kwargs) -> dict[str, bytes]:
        try:
            return pull_objects(*args, **kwargs)
        except RunNotRunningException:
            raise RunEndedWhileReceiving("its run ended while the message was being received") from None

    return pull


WAITS_RECORD = "docs/decisions/0007-shortened-flower-waits.md"
SERVERAPP = (
    Patch("serverapp-prompt-reply-arrays", "flwr.superlink.grid.http_grid", "pull_objects", prompt_retries,
          reason="a reply is listed before its arrays have arrived; HttpGrid.pull_messages retries each missing "
                 "one after 1, 2, 4 ... 10 s",
          gain="15.4 % -> 12.9 % of a 50-step demo round outside the sites' handlers, about 0.9 s a round "
               "(3 sites, AMD EPYC, 2 cores; docs/decisions/0001-prompt-replies.md)",
          remove_when="Flower pushes a message's arrays before announcing it, or lets the backoff be set"),
)
SUPERNODE = (
    Patch("supernode-short-sleeps", "flwr.supernode.start_client_internal", "time", ShortSleeps,
          reason="the SuperNode sleeps 3 s after every empty PullMessages and 0.5 s between looks at its own state",
          gain=f"with the SuperNode's array retries below: about 10-11 s -> 7.8 s of a 50-step demo round outside "
               f"the handlers (3 sites, fp16, AMD EPYC, 2 cores; {WAITS_RECORD})",
          remove_when="Flower makes the SuperNode's polls settable, or pushes messages to it"),
    Patch("supernode-prompt-arrays", "flwr.supernode.start_client_internal", "pull_objects", prompt_retries,
          reason="a message is announced before its arrays have arrived; the SuperNode retries after 1, 2, 4 ... 10 s",
          gain=f"part of the 10-11 s -> 7.8 s above ({WAITS_RECORD})",
          remove_when="Flower pushes a message's arrays before announcing it, or lets the backoff be set"),
    Patch("supernode-ended-runs-fail-their-task", "flwr.supernode.start_client_internal", "pull_objects",
          failing_when_the_run_ended,
          reason="a message whose run ends while its arrays are pulled leaves an open task (RunNotRunningException "
                 "is a BaseException that passes the SuperNode's clean-up), which the warm worker claimed and "
                 "waited on for about 8 minutes",
          gain="a site whose SuperLink restarts takes the next run's message at once, not after ~8 minutes "
               "(docs/decisions/0002-warm-site-worker.md)",
          remove_when="tests/client/test_ended_runs.py::test_flwr_as_shipped_leaves_the_task_open fails "
                      "(Flower fixed it)"),
)
SITE_WORKER = (
    Patch("worker-prompt-task-arrays", "flwr.supernode.runtime.run_clientapp", "pull_and_inflate_object_from_tree",
          prompt_retries,
          reason="the worker pulls the task's message as soon as it is handed out, often before its arrays arrive; "
                 "Flower retries after 1, 2, 4 ... 10 s",
          gain=f"part of the 10-11 s -> 7.8 s above ({WAITS_RECORD})",
          remove_when="Flower pushes a message's arrays before announcing it, or lets the backoff be set"),
)

_applied: set[str] = set()  # the patches applied in this process
_said: list[str] = []  # the one line logged where Flower stays stock


def flower_version() -> str:
    return importlib.metadata.version("flwr")


def stock_flower_reason() -> str | None:
    """Why this process runs Flower as shipped (PEDSEG_STOCK_FLOWER=1, or a flwr the patches were not written
    for), or None: pedseg's patches and warm site worker are used."""
    if os.environ.get(STOCK_FLOWER_ENV, "") not in ("", "0"):
        return f"{STOCK_FLOWER_ENV}={os.environ[STOCK_FLOWER_ENV]}"
    version = flower_version()
    if tuple(version.split(".")[:2]) != WRITTEN_FOR:
        return f"flwr {version} is not the {'.'.join(WRITTEN_FOR)}.x pedseg's Flower patches were written for"
    return None


def apply_flower_patches(patches: Sequence[Patch]) -> bool:
    """Apply `patches` in this process, each once; True when they are applied, False (and one logged line, the
    first time) where Flower stays stock."""
    from flwr.common import log

    reason = stock_flower_reason()
    if reason is not None:
        if not _said:
            _said.append(reason)
            log(INFO if reason.startswith(STOCK_FLOWER_ENV) else WARNING,
                "pedseg: %s: stock Flower behaviour is used (no Flower patch, one process per message)", reason)
        return False
    for patch in patches:
        if patch.name not in _applied:
            patch.apply()
            _applied.add(patch.name)
    return True


def task_retry_invoker():
    """Flower's retries of Runtime API calls (`make_simple_http_retry_invoker`), except on a refused task token
    (401: the SuperNode has ended the task, e.g. a message whose run ended while it was received).

    Reason: Flower's invoker then interrupts its own process (SIGINT), right for a `flwr-clientapp` that lives for
    one task; the warm worker runs every task, so here the call fails, the task ends as failed, and the worker goes
    on to the next one. Gain: the site goes on with its next message instead of losing its worker and its cache.
    Remove when: the warm worker goes (decision 0002), or Flower's invoker lets the caller handle a 401."""
    import httpx
    from flwr.supercore.retry import make_simple_http_retry_invoker

    invoker = make_simple_http_retry_invoker()
    flower_gives_up = invoker.should_giveup

    def gives_up(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED:
            return True
        return flower_gives_up(exc)

    invoker.should_giveup = gives_up
    return invoker

