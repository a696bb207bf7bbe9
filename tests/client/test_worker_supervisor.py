"""The SuperNode's `flower-superexec` as pedseg installs it: a supervisor that keeps one site worker running,
starts a new one when the worker is killed or interrupted, and ends (with its worker) when the SuperNode is
gone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from client.worker_supervisor import install_launcher
from pedseg_core.processes.ports import free_port


def workers(supervisor: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in supervisor.children():
        try:
            if "client.site_worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # a killed worker not reaped yet
            pass
    return found


def wait_for(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    return condition()


def take_ctrl_c() -> None:
    """SIGINT acted on, even when the suite runs as a background job (which starts it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_killed_or_interrupted_worker_is_replaced_and_all_end_with_the_supernode(tmp_path):
    """Interrupted: a worker ends with status 0 on SIGINT (Flower sends one to its own process, e.g. when its
    parent seems gone); the site still needs a worker while its SuperNode lives."""
    launcher = install_launcher(tmp_path / "bin") / "flower-superexec"
    supernode = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # stands in for its pid
    supervisor = subprocess.Popen(
        [
            str(launcher),
            "--insecure",
            "--runtime-api-address",
            f"127.0.0.1:{free_port()}",
            "--parent-pid",
            str(supernode.pid),
        ],
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        preexec_fn=take_ctrl_c,
    )
    try:
        first = wait_for(lambda: workers(psutil.Process(supervisor.pid)))
        assert len(first) == 1
        first[0].kill()
        second = wait_for(lambda: [w for w in workers(psutil.Process(supervisor.pid)) if w.pid != first[0].pid])
        assert len(second) == 1
        time.sleep(3)  # the worker is up and has its SIGINT handler (the KeyboardInterrupt it exits 0 on)
        second[0].send_signal(signal.SIGINT)
        seen = {first[0].pid, second[0].pid}
        third = wait_for(lambda: [w for w in workers(psutil.Process(supervisor.pid)) if w.pid not in seen])
        assert len(third) == 1
        supernode.kill()
        supernode.wait()
        assert supervisor.wait(timeout=60) == 0
        assert not psutil.pid_exists(third[0].pid) or third[0].status() == psutil.STATUS_ZOMBIE
        log = supervisor.stderr.read()
        assert "the site's worker exited with status -9; starting a new one" in log
        assert "the site's worker exited with status 0; starting a new one" in log
    finally:
        for proc in (supervisor, supernode):
            if proc.poll() is None:
                proc.kill()
