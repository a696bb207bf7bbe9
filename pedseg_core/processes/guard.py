"""A guard that ties a process tree to the process that started it.

    python -m pedseg_core.processes.guard CMD [ARG ...]    (started by `start_guarded`, stdin a pipe from its starter)

Flower's processes outlive their starter: a SuperNode keeps running when its `pedseg-client` is killed, and
Flower's SuperExec, ClientApp and ServerApp follow their parent only by polling it, in new sessions, and not
while blocked in C code. The guard makes itself a child subreaper (Linux), so every orphan of the tree is
re-parented to it, runs CMD, and tears the whole tree down (SIGTERM, then SIGKILL after a grace period) when

- its stdin reaches EOF: the starter closed it, or died in any way, SIGKILL included;
- it gets SIGTERM or SIGINT;
- CMD exits (what CMD left running goes too).

It exits with CMD's status. Imports nothing heavy: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
GRACE_SECONDS = 10.0
POLL_SECONDS = 0.2


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of init (Linux; a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def stop_descendants(grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every descendant of this process, SIGKILL those left after `grace` seconds, and reap them;
    repeated until none is left, since orphans keep arriving as their parents die."""
    deadline = time.monotonic() + grace
    while family := psutil.Process().children(recursive=True):
        late = time.monotonic() > deadline
        for proc in family:
            try:
                proc.kill() if late else proc.terminate()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=POLL_SECONDS * 5)


def wait_for_eof(stop: list[str]) -> None:
    """Block until stdin reaches EOF (raw reads: a buffered reader's lock would abort the interpreter's exit)."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop.append("stdin closed")


def guard(cmd: Sequence[str]) -> int:
    """Run `cmd` until it exits, stdin closes or a stop signal arrives; then stop the tree; CMD's status."""
    become_subreaper()
    stop: list[str] = []  # appended to (never locked: signal handlers may run anywhere) by both stop paths
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: stop.append(signal.Signals(signum).name))
    try:
        child = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL)
    except OSError as err:
        print(f"process_guard: cannot start {cmd[0]}: {err}", file=sys.stderr)
        return 127
    threading.Thread(target=wait_for_eof, args=(stop,), daemon=True).start()
    while child.poll() is None and not stop:
        time.sleep(POLL_SECONDS)
    stop_descendants()
    return child.wait()


def start_guarded(cmd: Sequence[str], **popen_kwargs) -> subprocess.Popen:
    """Start `cmd` under a guard in a session of its own; `stop_guarded` (or this process's death) ends the
    whole tree. `popen_kwargs` (env, stdout, stderr, text, ...) go to the guard, which CMD inherits them from."""
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *cmd], stdin=subprocess.PIPE,
                            start_new_session=True, **popen_kwargs)


def stop_guarded(proc: subprocess.Popen, timeout: float = GRACE_SECONDS + 20.0) -> int:
    """Ask a guard to stop its tree (close its stdin) and wait for it; SIGKILL it if it does not finish."""
    try:
        proc.stdin.close()
    except (OSError, AttributeError):
        pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


if __name__ == "__main__":
    sys.exit(guard(sys.argv[1:]))
