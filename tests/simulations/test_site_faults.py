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

from pedseg.cli import main as pedseg
from pedseg_core.processes.flower_env import flower_env
from pedseg_core.processes.ports import free_port
from simulations.local import (
    LocalFederation,
    RunProgress,
    follow_run,
    parse_run_id,
    register_sites,
    run_config,
    superlink_command,
    wait_for_health,
    write_connection,
)
from simulations.run_pki import make_run_pki
from tests.app_folder import APP_DIR
from tests.process_checks import family, wait_gone

STEPS = 3


def lines(out: Path) -> list[dict]:
    metrics = out / "metrics.jsonl"
    return [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines()] if metrics.exists() else []


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
    return subprocess.Popen([sys.executable, "-m", "pedseg", "federate", "--local", *sites, "--out", str(out),
                             "--preset", "tiny", "--scheme", "multi-domain", "--rounds", str(rounds),
                             "--set", f"train.steps_per_epoch={STEPS}", "--threads", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert pedseg(["data", "synth", str(root), "--train", "2", "--test", "1"]) == 0
    return root


@pytest.mark.slow
def test_a_killed_site_is_named_the_run_goes_on_and_the_restarted_site_rejoins(data, tmp_path):
    out = tmp_path / "run"
    # 16 rounds: the restarted site needs about 10 s to start and register, and the rounds after the kill take
    # about 2 s each (7 rounds left it no round to rejoin in once rounds got cheaper)
    run = federate(data, out, ("ankle", "knee", "shoulder"), 16, "--min-sites", "2")
    wait_for(lambda: len(lines(out)) >= 1, 300, "the first round")
    client, pids = site_processes(run.pid, "shoulder")
    command = shlex.split(
        (out / "logs" / "site-shoulder.log").read_text(encoding="utf-8").splitlines()[0].removeprefix("$ ")
    )
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
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
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
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
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
    assert "1 of the 2 sites needed (min-sites) were connected after 10 s (quorum-timeout); the run ends" in stderr
    assert lines(out)[-1]["event"] == "run-ended"


def completed_round(out: Path) -> int:
    """The last round the server's state was written for (-1: none yet); the file is replaced atomically."""
    path = out / "checkpoints" / "server_state.pt"
    return torch.load(path, weights_only=True)["completed_round"] if path.exists() else -1


def kill_everything(root: int) -> None:
    """SIGKILL a process and every descendant at once, as a crash or a power cut would."""
    pids = family(root)
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    assert wait_gone(pids) == set()


@pytest.mark.slow
def test_a_killed_run_is_completed_by_resume(data, tmp_path):
    """`full` with two ankle sites (pooled heads), a knee (prototypes) and the prior: SIGKILL of every process
    after round 2 of 4, then `pedseg federate --resume RUN` finishes it."""
    out = tmp_path / "run"
    sites = [f"--data=ankle-a:ankle={data / 'ankle'}", f"--data=ankle-b:ankle={data / 'ankle'}",
             f"--data=knee={data / 'knee'}"]
    run = subprocess.Popen([sys.executable, "-m", "pedseg", "federate", "--local", *sites, "--out", str(out),
                            "--preset", "tiny", "--scheme", "full", "--rounds", "4", "--threads", "1",
                            "--set", f"train.steps_per_epoch={STEPS}", "--set", "federation.evaluate_every=2"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: completed_round(out) >= 2, 400, "round 2")
    kill_everything(run.pid)
    before = torch.load(out / "checkpoints" / "server_state.pt", weights_only=True)
    assert before["completed_round"] == 2 and before["strategy"]["joint_heads"].keys() == {"ankle"}
    assert json.loads(before["strategy"]["awaiting_evaluation"])["round"] == 2  # its evaluation comes in round 3
    assert not (out / "results.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "pedseg", "federate", "--resume", str(out)],
                             capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "after round 2 of 4" in resumed.stderr
    records = lines(out)
    rounds = [r["round"] for r in records if "stage" not in r and "event" not in r]
    assert rounds == [1, 2, 3, 4]  # continued where it stopped, no round twice
    assert [r["after_round"] for r in records if r.get("event") == "resumed"] == [2]
    assert len([r for r in records if r.get("stage") == "prior"]) == 1  # the prior was not trained again
    round2, round3 = (next(r for r in records if r.get("round") == n) for n in (2, 3))
    assert set(round3["sites"]) == {"ankle-a", "ankle-b", "knee"} and round3["pooled_heads"] == ["ankle"]
    # round 2's evaluation was still to come at the kill: it came with round 3's replies, into round 2's line
    assert round2["evaluation"]["sites"].keys() == {"ankle-a", "ankle-b", "knee"}
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results["sites"]) == {"ankle-a", "ankle-b", "knee"} and results["rounds"] == 4
    # each site kept one private store: the resumed run's messages named the first run
    for site in ("ankle-a", "ankle-b", "knee"):
        (store,) = (out / "sites" / site).glob("run-*")
        assert (store / "model.pt").is_file()


@pytest.mark.slow
def test_a_superlink_restarted_with_its_database_continues_the_run(data, tmp_path):
    """The server machine goes down after round 2 of 5 (SuperLink, SuperExec and ServerApp SIGKILLed); the
    SuperLink restarted with the same --database gets its sites back, and a run with `resume-from` completes it."""
    out, sites = tmp_path / "run", ["ankle", "knee"]
    out.mkdir()
    fed = LocalFederation(out)
    pki = make_run_pki(out / "pki", sites)
    port = free_port()
    command = [*superlink_command(port, pki), "--database", str(tmp_path / "superlink.db")]
    config = {"preset": "tiny", "scheme": "multi-domain", "rounds": 5, "min-sites": 2,
              "overrides": f"train.steps_per_epoch={STEPS}", "out-dir": str(out)}

    def start_superlink() -> subprocess.Popen:
        superlink = fed.start("superlink", command, flower_env(fed.superlink_home))
        wait_for_health(port, superlink, fed.logs["superlink"], pki.ca)
        return superlink

    def submit(values: dict) -> str:
        return parse_run_id(fed.flwr("run", str(APP_DIR), fed.connection, "--run-config", run_config(values),
                                     "--format", "json"))

    try:
        superlink = start_superlink()
        write_connection(fed.cli_home, fed.connection, port, pki)
        register_sites(fed, pki, sites)
        for site in sites:
            fed.start(f"site-{site}", [sys.executable, "-m", "client.cli", "--site", site, "--joint", site,
                                       "--data", str(data / site), "--superlink", f"127.0.0.1:{port}",
                                       "--root-certificates", str(pki.ca), "--auth-key", str(pki.site_key(site)),
                                       "--state-dir", str(out / "sites" / site), "--threads", "1"],
                      flower_env(out / "sites" / site / "flwr-home"))
        first = submit(config)
        wait_for(lambda: completed_round(out) >= 2, 400, "round 2")
        kill_everything(superlink.pid)
        start_superlink()
        second = submit({**config, "resume-from": str(out)})
        status = follow_run(fed, second, sites, RunProgress(0, 5, enabled=False))

        def first_run_ended() -> dict | None:
            listing = json.loads(fed.flwr("ls", fed.connection, "--format", "json").stdout)
            old = {run["run-id"]: run for run in listing["runs"]}[first]
            return old if old["status"].startswith("finished") else None

        # the SuperLink gives up on the ServerApp it lost once its heartbeats are missed (Flower: 30 s, twice)
        old = wait_for(first_run_ended, 240, "the SuperLink to end the first run")
    finally:
        fed.stop_all()
    assert status["status"] == "finished:completed", status
    assert old["status"] == "finished:failed", old
    records = lines(out)
    assert [r["round"] for r in records if "event" not in r] == [1, 2, 3, 4, 5]
    assert all(set(r["sites"]) == set(sites) for r in records if "event" not in r)
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["rounds"] == 5
    for site in sites:  # the sites kept the private layers of the first run: one store each
        (store,) = (out / "sites" / site).glob("run-*")
        assert store.name == f"run-{first}"
