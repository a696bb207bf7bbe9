"""`pedseg federate --local`: a real Flower deployment on 127.0.0.1.

Starts `flower-superlink` and one `pedseg-client` per site (free ports, private FLWR_HOMEs under RUN/), submits
the app with `flwr run`, shows round progress, and stops every process it started, also on Ctrl-C and on
failure. The ServerApp writes the run directory (config.yaml, metrics.jsonl, checkpoints/, results.json)
into RUN; process logs go to RUN/logs/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from client.flower_processes import flower_env, flower_tool, free_port, stop_process_tree
from pedseg_core.config import config_from_run_config
from pedseg_core.data.validate import check_dataset
from pedseg_core.errors import PedsegError
from pedseg_core.progress import progress_bar

APP_DIR = Path(__file__).resolve().parents[1]  # the project root: pyproject.toml with [tool.flwr.app]
CONNECTION = "pedseg-local"
POLL_SECONDS = 2.0
STARTUP_TIMEOUT = 60.0


@dataclass
class LocalFederation:
    """The processes of one loopback federation and where they keep their files."""

    run_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    connection: str = CONNECTION
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def cli_home(self) -> Path:
        return self.run_dir / ".flower" / "cli"

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.logs[name] = self.log_dir / f"{name}.log"
        with self.logs[name].open("w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes.values()):  # sites first, then the SuperLink
            stop_process_tree(proc)

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """A `flwr` CLI command against this federation's SuperLink."""
        return subprocess.run([flower_tool("flwr"), *args], env=flower_env(self.cli_home, self.extra_env),
                              capture_output=True, text=True, timeout=timeout)


def wait_for_health(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PedsegError(f"flower-superlink exited with status {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise PedsegError(f"flower-superlink did not become ready in {STARTUP_TIMEOUT:.0f} s; see {log}")


def run_config(values: dict[str, object]) -> str:
    """Flower's --run-config syntax: space-separated TOML key=value pairs. Strings holding double quotes (JSON)
    go in TOML literal strings ('...'): Flower's parser does not accept escaped quotes."""
    def toml(value: object) -> str:
        if isinstance(value, str) and '"' in value:
            if "'" in value:
                raise PedsegError(f"cannot pass {value!r} in a Flower run config (both quote kinds)")
            return f"'{value}'"
        return json.dumps(value)

    return " ".join(f"{k}={toml(v)}" for k, v in values.items())


def valid_sites(data: dict[str, Path]) -> list[str]:
    """Names of the sites whose data passes validation; the others are reported (their pedseg-client refuses
    them too) and the federation goes on without them."""
    good = []
    for site, path in data.items():
        report = check_dataset(Path(path))
        if report.ok:
            good.append(site)
        else:
            for problem in report.problems:
                print(f"pedseg federate: site {site} will be refused: {problem}", file=sys.stderr)
    if not good:
        raise PedsegError("no site has a valid dataset; nothing to federate")
    return good


def federate_local(data: dict[str, Path], out: Path, app_config: dict[str, object],
                   joints: dict[str, str] | None = None, threads: int = 0, keep_sent: bool = False,
                   progress: bool = True) -> dict:
    """Run a loopback federation with one site per `data` entry (site -> dataset; `joints` maps sites to
    joints, default: the site's name); returns results.json."""
    sites = valid_sites(data)
    out, rounds = prepare_run_dir(out, app_config)
    fed = LocalFederation(out)
    try:
        port = free_port()
        superlink = fed.start("superlink", [
            flower_tool("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
            "--disable-runtime-dependency-installation",  # in-memory state: a local run is not resumed
        ], flower_env(out / ".flower" / "superlink"))
        wait_for_health(port, superlink, fed.logs["superlink"])
        for site, path in data.items():
            fed.start(f"site-{site}", [
                sys.executable, "-m", "client.cli", "--site", site, "--joint", (joints or {}).get(site, site),
                "--data", str(Path(path).resolve()), "--superlink", f"127.0.0.1:{port}", "--insecure",
                "--state-dir", str(out / "sites" / site), "--connect-timeout", "30",
                "--threads", str(threads or max(1, (os.cpu_count() or 1) // len(data))),
                *(["--keep-sent"] if keep_sent else []),
            ], flower_env(out / "sites" / site / "flwr-home"))
        write_connection(fed.cli_home, port)
        return submit_and_follow(fed, {**app_config, "min-nodes": len(sites), "out-dir": str(out)}, sites, rounds,
                                 progress)
    finally:
        fed.stop_all()


def prepare_run_dir(out: Path, app_config: dict[str, object]) -> tuple[Path, int]:
    """(absolute RUN, number of rounds): refuses a RUN that holds files and bad options, before anything
    starts."""
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise PedsegError(f"{out}: already exists and is not empty; choose a new --out")
    cfg = config_from_run_config(app_config)
    out.mkdir(parents=True, exist_ok=True)
    return out, cfg.federation.num_rounds(cfg.train)


def submit_and_follow(fed: LocalFederation, config: dict[str, object], sites: list[str], rounds: int,
                      progress: bool) -> dict:
    """`flwr run` the app with this run config, follow it to its end (Ctrl-C stops the run), keep its status
    and the ServerApp's log in RUN/logs, and return results.json; PedsegError if the run did not complete."""
    run_id = parse_run_id(fed.flwr("run", str(APP_DIR), fed.connection, "--run-config", run_config(config),
                                   "--format", "json"))
    try:
        status = follow_run(fed, run_id, sites, rounds, progress)
    except KeyboardInterrupt:
        fed.flwr("stop", run_id, fed.connection, timeout=30)
        raise
    fed.log_dir.mkdir(parents=True, exist_ok=True)
    (fed.log_dir / "run-status.json").write_text(json.dumps(status, indent=2))
    (fed.log_dir / "serverapp.log").write_text(fed.flwr("log", run_id, fed.connection, "--show", timeout=60).stdout)
    if status["status"] != "finished:completed":
        raise PedsegError(f"the federated run {run_id} ended as {status['status']}: "
                          f"{status.get('status-details', '')}; logs in {fed.log_dir}")
    return json.loads((fed.run_dir / "results.json").read_text())


def write_connection(cli_home: Path, port: int) -> None:
    """The `flwr` CLI's connection to this SuperLink, in `$FLWR_HOME/config.toml`."""
    cli_home.mkdir(parents=True, exist_ok=True)
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')


def parse_run_id(proc: subprocess.CompletedProcess) -> str:
    """The run id from `flwr run --format json`; PedsegError with Flower's own error message otherwise."""
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        reply = {}
    if reply.get("run-id"):
        return str(reply["run-id"])
    detail = str(reply.get("error-message") or proc.stderr or proc.stdout).strip().splitlines()
    raise PedsegError(f"flwr run did not start the run: {detail[-1] if detail else proc.returncode}")


def follow_run(fed: LocalFederation, run_id: str, sites: list[str], rounds: int, progress: bool) -> dict:
    """Poll the run's status until it finishes, with a progress bar over the rounds of metrics.jsonl; fail
    early when a valid site's process dies."""
    bar = progress_bar(None, "federated rounds", progress, total=rounds, unit="round")
    try:
        while True:
            listing = fed.flwr("ls", fed.connection, "--run-id", run_id, "--format", "json")
            runs = json.loads(listing.stdout or "{}").get("runs", [])
            if runs and str(runs[0].get("status", "")).startswith("finished"):
                return runs[0]
            done = len((fed.run_dir / "metrics.jsonl").read_text().splitlines()) if (
                fed.run_dir / "metrics.jsonl").exists() else 0
            bar.update(done - bar.n)
            for site in sites:
                proc = fed.processes[f"site-{site}"]
                if proc.poll() is not None:
                    fed.flwr("stop", run_id, fed.connection, timeout=30)
                    raise PedsegError(f"site {site} stopped unexpectedly (status {proc.returncode}); "
                                      f"see {fed.logs[f'site-{site}']}")
            time.sleep(POLL_SECONDS)
    finally:
        bar.close()
