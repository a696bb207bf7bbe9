"""Sites that drop out of a real loopback federation (TLS, SuperNode keys): a killed site does not stop the run,
the round closes with the others and metrics.jsonl names it, and the site restarted with its state directory
rejoins with its private layers; without the quorum the run ends with a clear message, not a hang."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from client.flower_processes import flower_env
from pedseg_core.cli import main as pedseg
from tests.process_checks import family, wait_gone

STEPS = 3


def lines(out: Path) -> list[dict]:
    metrics = out / "metrics.jsonl"
    return [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def site_processes(root: int, site: str) -> tuple[psutil.Process, set[int]]:
    """Within the process tree of `root`: the site's pedseg-client and the PIDs of its own tree."""
    for proc in psutil.Process(root).children(recursive=True):
        cmd = proc.cmdline()
        if "client.cli" in cmd and cmd[cmd.index("--site") + 1] == site:
            return proc, family(proc.pid)
    raise AssertionError(f"no pedseg-client for site {site}")


def federate(data: Path, out: Path, joints: tuple[str, ...], rounds: int, *extra: str) -> subprocess.Popen:
    sites = [f"--data={joint}={data / joint}" for joint in joints]
    return subprocess.Popen([sys.executable, "-m", "pedseg_core.cli", "federate", "--local", *sites, "--out", str(out),
                             "--preset", "tiny", "--scheme", "multi-domain", "--rounds", str(rounds),
                             "--set", f"train.steps_per_epoch={STEPS}", "--threads", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert pedseg(["data", "synth", str(root), "--train", "2", "--test", "1"]) == 0
    return root


@pytest.mark.slow
def test_a_killed_site_is_named_the_run_goes_on_and_the_restarted_site_rejoins(data, tmp_path):
    out = tmp_path / "run"
    run = federate(data, out, ("ankle", "knee", "shoulder"), 7, "--min-sites", "2")
    wait_for(lambda: len(lines(out)) >= 1, 300, "the first round")
    client, pids = site_processes(run.pid, "shoulder")
    command = shlex.split((out / "logs" / "site-shoulder.log").read_text().splitlines()[0].removeprefix("$ "))
    for pid in pids:  # pedseg-client and its SuperNode, SIGKILLed
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    assert wait_gone(pids) == set()

    def missing_round():
        return next((line["round"] for line in lines(out)
                     if "shoulder" in {m["site"] for m in line.get("missing", [])}), None)

    first_missing = wait_for(missing_round, 240, "a round that names the killed site")
    restarted = subprocess.Popen(command, env=flower_env(out / "sites" / "shoulder" / "flwr-home"),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        stdout, stderr = run.communicate(timeout=600)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.communicate(timeout=60)
    assert run.returncode == 0, stderr
    assert "site shoulder stopped" in stderr and "the run goes on while the quorum holds" in stderr
    records = lines(out)
    missing = [r["round"] for r in records if "shoulder" in {m["site"] for m in r.get("missing", [])}]
    # the SuperLink answered for the dead site: an error reply, named after the site it stood in for
    assert {"site": "shoulder", "reason": "error reply"} in records[missing[0] - 1]["missing"]
    assert any(e["site"] == "shoulder" and "Node Unavailable" in e["reason"] for e in records[missing[0] - 1]["errors"])
    back = [r["round"] for r in records if "shoulder" in r["sites"]]
    assert first_missing in missing and any(r > max(missing) for r in back), (missing, back)
    assert all(set(r["sites"]) >= {"ankle", "knee"} for r in records)
    results = json.loads((out / "results.json").read_text())
    assert set(results["sites"]) == {"ankle", "knee", "shoulder"}
    # the rejoined site continued from its private layers: its BatchNorm counted the steps of every round it
    # trained before and after (one more when it was killed after saving them but before its reply came)
    (state,) = (out / "sites" / "shoulder").glob("run-*")
    private = torch.load(state / "private.pt", weights_only=True)
    (count,) = {int(v) for k, v in private.items() if k.endswith("num_batches_tracked")}
    assert len(back) * STEPS <= count <= (len(back) + 1) * STEPS


@pytest.mark.slow
def test_without_the_quorum_the_run_ends_with_a_clear_message(data, tmp_path):
    out = tmp_path / "run"
    run = federate(data, out, ("ankle", "knee"), 20, "--set", "federation.quorum_timeout=10")
    wait_for(lambda: len(lines(out)) >= 1, 300, "the first round")
    _, pids = site_processes(run.pid, "knee")
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    _, stderr = run.communicate(timeout=400)
    assert run.returncode == 2 and "Traceback" not in stderr
    assert "1 of the 2 sites needed (min-nodes) were connected after 10 s (quorum-timeout); the run ends" in stderr
    assert lines(out)[-1]["event"] == "run-ended"
