"""The process guard ends a whole process tree, orphans in new sessions included, when its starter closes its
stdin or dies by SIGKILL, and when the guarded command exits."""

import subprocess
import sys
import textwrap
import time

import psutil

from pedseg_core.processes.guard import start_guarded, stop_guarded
from tests.process_checks import wait_gone

# bash -> bash -> (sleep, sleep in a new session): Flower's trees also start new sessions.
ESCAPING_TREE = ["bash", "-c", "bash -c 'setsid sleep 300 & sleep 300 & wait' & sleep 300"]


def tree(pid: int, at_least: int, timeout: float = 20.0) -> set[int]:
    """PIDs under `pid` once there are `at_least` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {p.pid for p in psutil.Process(pid).children(recursive=True)}
        if len(pids) >= at_least:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"the tree under {pid} did not grow to {at_least} processes")


def test_closing_stdin_ends_the_tree_and_its_orphans():
    guard = start_guarded(ESCAPING_TREE)
    pids = tree(guard.pid, 4)
    inner = next(p for p in pids if psutil.Process(p).name() == "bash" and psutil.Process(p).ppid() != guard.pid)
    orphans = {p.pid for p in psutil.Process(inner).children()}
    psutil.Process(inner).kill()  # its two sleeps become orphans: re-parented to the guard, not to init
    time.sleep(0.5)
    assert len(orphans) == 2 and orphans <= {p.pid for p in psutil.Process(guard.pid).children()}
    stop_guarded(guard)
    assert wait_gone(pids) == set()


def test_the_tree_ends_when_its_starter_is_killed():
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pedseg_core.processes.guard import start_guarded
        guard = start_guarded({ESCAPING_TREE!r})
        print(guard.pid, flush=True)
        time.sleep(300)
        """)], stdout=subprocess.PIPE, encoding="utf-8", errors="replace")
    guard_pid = int(starter.stdout.readline())
    pids = tree(guard_pid, 4) | {guard_pid}
    starter.kill()
    starter.wait()
    assert wait_gone(pids) == set()


def test_the_guard_exits_with_the_status_of_its_command_and_leaves_nothing():
    guard = start_guarded(["bash", "-c", "sleep 300 & sleep 0.5; exit 3"])
    pids = tree(guard.pid, 2)
    assert guard.wait(timeout=30) == 3
    assert wait_gone(pids) == set()
