"""Process checks shared by the tests: which processes a tree holds, and waiting for them to be gone (by PID)."""

from __future__ import annotations

import time

import psutil


def family(pid: int) -> set[int]:
    """PIDs of a process and all its descendants (empty when it is gone)."""
    try:
        return {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (zombies count as gone)."""
    running = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.add(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def wait_gone(pids: set[int], timeout: float = 30.0) -> set[int]:
    """Wait until none of `pids` runs; returns those still running at the timeout."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)
