"""`pedseg federate --simulation --ray-address`: the virtual sites run on an existing Ray cluster (here a head
started with `ray start` on 127.0.0.1), which the run leaves running."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from pedseg.cli import main as pedseg
from pedseg_core.processes.ports import free_port, wait_for_port


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 (its own session, temp dir and ports); stopped by its process group at the end."""
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    ports = [f"--{name}={free_port()}" for name in ("ray-client-server-port", "dashboard-agent-listen-port",
                                                      "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                                      "metrics-export-port", "node-manager-port",
                                                      "object-manager-port")]
    ray = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}", *ports],
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port("127.0.0.1", port, timeout=120), "the Ray head did not start"
        yield head, f"127.0.0.1:{port}", temp
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        gone, alive = psutil.wait_procs([p for p in psutil.process_iter() if _in_session(p, head.pid)], timeout=30)
        for proc in alive:
            proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _in_session(proc: psutil.Process, sid: int) -> bool:
    try:
        return os.getsid(proc.pid) == sid
    except (OSError, psutil.Error):
        return False


@pytest.mark.slow
def test_a_simulation_runs_on_an_existing_ray_cluster_and_leaves_it_running(ray_head, tmp_path):
    head, address, temp = ray_head
    data = tmp_path / "data"
    assert pedseg(["data", "synth", str(data), "--joints", "ankle,knee", "--train", "4", "--test", "1"]) == 0
    out = tmp_path / "run"
    assert pedseg(["federate", "--simulation", "--ray-address", address, "--data", f"ankle={data / 'ankle'}",
                   "--data", f"knee={data / 'knee'}", "--out", str(out), "--preset", "tiny", "--scheme",
                   "multi-domain", "--rounds", "1", "--set", "train.steps_per_epoch=2"]) == 0
    assert (out / "results.json").is_file()
    assert head.poll() is None  # the cluster is the user's: still up
    # the sites ran as Flower's actors in the cluster's workers (Ray names an actor at the top of its log)
    logs = [w.read_text(errors="replace", encoding="utf-8") for w in temp.glob("session_*/logs/worker-*.out")]
    assert any(":actor_name:ClientAppActor\n" in log[:200] for log in logs), [log[:80] for log in logs]
