"""`pedseg federate --local`: a real Flower deployment on 127.0.0.1.

Starts `flower-superlink` and one `pedseg-client` per site (free ports, private FLWR_HOMEs under RUN/), by
default with TLS and SuperNode authentication from a private PKI in RUN/pki/; submits the app with `flwr run`,
shows round progress, and stops every process it started, also on Ctrl-C and on failure, and when this process
is killed (each process tree runs under a guard that ends with it). The configuration arrives resolved (a
`PedsegConfig`) and crosses into Flower as one document; the ServerApp writes the run directory (config.yaml:
that document, metrics.jsonl, checkpoints/, results.json) into RUN; process logs go to RUN/logs/ (without
colour codes), and the sites and their data to RUN/federation.json. From these two files `pedseg federate
[--local] --resume RUN` continues a stopped or killed run after its last completed round.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from client.approved_app import app_hash, own_app
from flower_common.flower_patches import stock_flower_reason
from flower_common.run_config import run_config_with_document
from pedseg_core.config import PRIOR_SCHEMES, PedsegConfig
from pedseg_core.data.validate import check_dataset
from pedseg_core.errors import PedsegError
from pedseg_core.policy import load_policy
from pedseg_core.processes.flower_env import flower_env, flower_tool
from pedseg_core.processes.guard import start_guarded, stop_guarded
from pedseg_core.processes.ports import free_port
from pedseg_core.progress import StepProgress
from pedseg_core.train.metrics_line import RUN_ENDED, MetricsLine, read_metrics
from pedseg_core.train.run_dir import LAUNCH_FILE, METRICS_FILE, recorded_config, write_json
from server.run_state import load_run_state
from simulations.run_pki import RunPKI, make_run_pki
from simulations.site_dirs import site_state_dir

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
    copiers: list[threading.Thread] = field(default_factory=list)  # each process's output to its log

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def cli_home(self) -> Path:
        return self.run_dir / ".flower" / "cli"

    @property
    def superlink_home(self) -> Path:
        return self.run_dir / ".flower" / "superlink"

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start `cmd` under a guard; its output goes to RUN/logs/NAME.log, without colour codes."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.logs[name] = self.log_dir / f"{name}.log"
        log = self.logs[name].open("a", encoding="utf-8")  # a resumed run's processes log after the first ones
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = start_guarded(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                             errors="replace")
        copier = threading.Thread(target=copy_without_colour, args=(proc.stdout, log), daemon=True)
        copier.start()
        self.copiers.append(copier)
        self.processes[name] = proc
        return proc

    def stop_all(self) -> None:
        """Stop the sites together, then the SuperLink; each guard takes its whole process tree with it."""
        sites = [proc for name, proc in self.processes.items() if name != "superlink"]
        superlink = [proc for name, proc in self.processes.items() if name == "superlink"]
        for group in (sites, superlink):
            for proc in group:
                proc.stdin.close()
            for proc in group:
                stop_guarded(proc)
        for copier in self.copiers:  # the logs hold every line once the processes are gone
            copier.join(timeout=10)

    def flwr_env(self) -> dict[str, str]:
        """Environment of the `flwr` CLI: its FLWR_HOME holds the connection to this federation's SuperLink."""
        return flower_env(self.cli_home, self.extra_env)

    @staticmethod
    def flwr_command(*args: str) -> list[str]:
        return [flower_tool("flwr"), *args]

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """A `flwr` CLI command against this federation's SuperLink."""
        return subprocess.run(
            self.flwr_command(*args),
            env=self.flwr_env(),
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
        )


def wait_for_health(port: int, proc: subprocess.Popen, log: Path, ca: Path | None) -> None:
    """Wait until the SuperLink answers on /health (over TLS, verified with `ca`, unless `ca` is None)."""
    url = f"{'https' if ca else 'http'}://127.0.0.1:{port}/health"
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PedsegError(f"flower-superlink exited with status {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise PedsegError(f"flower-superlink did not become ready in {STARTUP_TIMEOUT:.0f} s; see {log}")


def superlink_command(port: int, pki: RunPKI | None, simulation: bool = False) -> list[str]:
    """flower-superlink on 127.0.0.1:`port`: TLS and (unless it simulates the sites) SuperNode authentication
    with `pki`, neither without."""
    security = ["--insecure"] if pki is None else pki.superlink_tls_args()
    if pki is not None and not simulation:
        security.append("--enable-supernode-auth")
    return [flower_tool("flower-superlink"), *security, "--host", "127.0.0.1", "--port", str(port),
            "--disable-runtime-dependency-installation", *(["--simulation"] if simulation else [])]


def start_superlink(fed: LocalFederation, pki: RunPKI | None, simulation: bool = False,
                    connection_extra: str = "") -> int:
    """Start the federation's SuperLink on a free port, wait until it serves, write the `flwr` connection to it
    (with `connection_extra` TOML lines); returns the port."""
    port = free_port()
    superlink = fed.start("superlink", superlink_command(port, pki, simulation),
                          flower_env(fed.superlink_home, fed.extra_env))
    wait_for_health(port, superlink, fed.logs["superlink"], pki.ca if pki else None)
    write_connection(fed.cli_home, fed.connection, port, pki, connection_extra)
    return port


def register_sites(fed: LocalFederation, pki: RunPKI, sites: list[str]) -> None:
    """`flwr supernode register` each site's public key with the SuperLink, all at once."""
    commands = {site: fed.flwr_command("supernode", "register", str(pki.site_public_key(site)), fed.connection,
                                       "--name", site) for site in sites}
    running = {site: subprocess.Popen(cmd, env=fed.flwr_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      encoding="utf-8", errors="replace") for site, cmd in commands.items()}
    for site, proc in running.items():
        output, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            detail = output.strip().splitlines() or [f"exit status {proc.returncode}"]
            raise PedsegError(f"could not register the key of site {site}: {detail[-1]}")


ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")  # Flower's logger colours each level name, with no switch to turn it off


def copy_without_colour(stream: IO[str], log: IO[str], on_line: Callable[[str], None] | None = None) -> None:
    """Copy a process's output to its `log` line by line (then close it) without colour codes; `on_line` sees
    each line."""
    with log:
        for line in stream:
            line = ANSI_CODE.sub("", line)
            log.write(line)
            log.flush()
            if on_line is not None:
                on_line(line)


INSECURE_WARNING = ("warning: --insecure: no TLS and no SuperNode authentication; anything on this host can read "
                    "the federation's traffic or join it as a site")


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


@dataclass
class LocalLaunch:
    """What `pedseg federate --local` was asked besides the configuration: recorded in RUN/federation.json, so
    that `--resume RUN` runs the same sites on the same data in the same way (with RUN/config.yaml)."""

    data: dict[str, str]  # site -> dataset directory
    joints: dict[str, str]  # site -> joint (the settings are the run's config.yaml, which the ServerApp writes)
    threads: int = 0
    keep_sent: bool = False
    insecure: bool = False
    policy: str = ""  # every site's privacy policy (a YAML file); "" = the default policy
    app_dir: str = ""  # the Flower app: "" = pedseg's own (`own_app`), or a project that extends it
    app_keys: dict[str, str] = field(default_factory=dict)  # that project's own run-config keys

    def save(self, run_dir: Path) -> None:
        write_json(run_dir / LAUNCH_FILE, asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> LocalLaunch:
        path = Path(run_dir) / LAUNCH_FILE
        if not path.is_file():
            raise PedsegError(f"{path}: not found: {run_dir} is not a run of `pedseg federate --local`")
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as err:
            raise PedsegError(f"{path}: not a pedseg launch record: {err}") from None


def norms_for_policy(cfg: PedsegConfig, policy: Path | None) -> PedsegConfig:
    """The configuration for sites that all run `policy` (checked here, one line if it is bad): under a DP
    policy, group norms (Opacus cannot bound a slice's gradient through BatchNorm), said on stderr; a
    configuration that sets batch norms itself is refused."""
    if load_policy(policy).dp is None or cfg.model.norm == "group":
        return cfg
    if "norm" in cfg.model.model_fields_set:
        raise PedsegError(f"{policy}: asks for DP-SGD, which needs group norms: drop model.norm=batch")
    print("pedseg federate: the sites' policy asks for DP-SGD: they train with group norms (model.norm=group)",
          file=sys.stderr)
    cfg = cfg.model_copy(deep=True)
    cfg.model.norm = "group"
    return cfg


def with_quorum(cfg: PedsegConfig, sites: list[str]) -> PedsegConfig:
    """`cfg` with its quorum (`federation.min_nodes`): the one it sets (`--min-sites`), which must be at most
    the valid `sites`, or every valid site."""
    asked = cfg.federation.min_nodes if "min_nodes" in cfg.federation.model_fields_set else len(sites)
    if asked > len(sites):
        raise PedsegError(f"--min-sites {asked}: only {len(sites)} site(s) have a valid dataset")
    cfg = cfg.model_copy(deep=True)
    cfg.federation.min_nodes = asked
    return cfg


def federate_local(data: dict[str, Path], out: Path, cfg: PedsegConfig,
                   joints: dict[str, str] | None = None, threads: int = 0, keep_sent: bool = False,
                   progress: bool = True, insecure: bool = False, policy: Path | None = None,
                   app_dir: Path | None = None, app_keys: dict[str, str] | None = None) -> dict:
    """Run a loopback federation of the resolved configuration `cfg` with one site per `data` entry (site ->
    dataset; `joints` maps sites to joints, default: the site's name); returns results.json. By default the
    SuperLink runs TLS with a private CA in RUN/pki/ and admits only the sites whose keys it registered;
    `insecure` turns both off. `policy`: every site's privacy policy (default: the safe one). `app_dir`: the
    Flower app to run (a directory with its pyproject.toml), `app_keys` its own run-config keys."""
    sites = valid_sites(data)
    cfg = with_quorum(norms_for_policy(cfg, policy), sites)  # a bad policy is refused before anything starts
    out = prepare_run_dir(out)
    launch = LocalLaunch({site: str(Path(path).resolve()) for site, path in data.items()},
                         {site: (joints or {}).get(site, site) for site in data}, threads, keep_sent,
                         insecure, str(Path(policy).resolve()) if policy else "",
                         str(Path(app_dir).resolve()) if app_dir else "", dict(app_keys or {}))
    launch.save(out)
    pki = None if insecure else make_run_pki(out / "pki", list(data))
    progress_shown = RunProgress(prior_rounds(cfg), cfg.federation.num_rounds(cfg.train), progress)
    return run_local(launch, out, pki, sites, cfg, progress_shown, {"out-dir": str(out)})


def resume_local(run_dir: Path, progress: bool = True) -> dict:
    """Continue the `pedseg federate --local` run in `run_dir` (stopped or killed) from its last completed round:
    the same sites, data, PKI and configuration (its config.yaml, as the ServerApp resolved it), a new
    SuperLink; returns results.json."""
    out = Path(run_dir).resolve()
    launch = LocalLaunch.load(out)
    state = load_run_state(out)  # one clear line when there is nothing to continue from
    cfg = recorded_config(out)
    sites = valid_sites({site: Path(path) for site, path in launch.data.items()})
    with_quorum(cfg, sites)
    rounds = cfg.federation.num_rounds(cfg.train)
    print(f"pedseg federate: resuming {out} after round {state.completed_round} of {rounds}", file=sys.stderr)
    pki = None if launch.insecure else RunPKI(out / "pki")
    prior = 0 if state.prior is not None else prior_rounds(cfg)
    return run_local(launch, out, pki, sites, cfg, RunProgress(prior, rounds, progress), {"resume-from": str(out)})


def prior_rounds(cfg: PedsegConfig) -> int:
    """The rounds of the run's stage 1: the shape prior of the full scheme."""
    return cfg.prior.epochs if cfg.scheme in PRIOR_SCHEMES else 0


def run_local(launch: LocalLaunch, out: Path, pki: RunPKI | None, sites: list[str], cfg: PedsegConfig,
              progress: RunProgress, run_dir_config: dict[str, str]) -> dict:
    """Start the SuperLink and the sites of `launch`, run the app with `cfg` and `run_dir_config` (where the run
    directory is: a new one, or the one to continue), stop them all; returns results.json."""
    if launch.insecure:
        print(f"pedseg federate: {INSECURE_WARNING}", file=sys.stderr)
    fed = LocalFederation(out)
    try:
        port = start_superlink(fed, pki)
        if pki is not None:
            register_sites(fed, pki, list(launch.data))
        with app_folder(launch.app_dir) as app_dir:
            approval = app_approval(launch, app_dir)
            for site, path in launch.data.items():
                security = ["--insecure"] if pki is None else ["--root-certificates", str(pki.ca),
                                                               "--auth-key", str(pki.site_key(site))]
                fed.start(f"site-{site}", [
                    sys.executable, "-m", "client.cli", "--site", site, "--joint", launch.joints[site],
                    "--data", path, "--superlink", f"127.0.0.1:{port}", *security,
                    "--state-dir", str(site_state_dir(out, site)), "--connect-timeout", "30",
                    "--threads", str(launch.threads or max(1, (os.cpu_count() or 1) // len(launch.data))),
                    *(["--keep-sent"] if launch.keep_sent else []),
                    *(["--policy", launch.policy] if launch.policy else []), *approval,
                ], flower_env(site_state_dir(out, site) / "flwr-home"))
            config = run_config_with_document(cfg, {**launch.app_keys, **run_dir_config})
            return submit_and_follow(fed, app_dir, config, sites, progress)
    finally:
        fed.stop_all()


def app_approval(launch: LocalLaunch, app_dir: Path) -> list[str]:
    """The sites' options that approve the app this launcher submits from `app_dir` (`--approve-app` its hash),
    unless their policy lists approved_apps (then that list decides); where Flower runs stock, which cannot keep a
    site to its apps, `--allow-any-app` (said on stderr)."""
    if load_policy(Path(launch.policy) if launch.policy else None).approved_apps is not None:
        return []
    if (stock := stock_flower_reason()) is not None:
        print(f"pedseg federate: stock Flower ({stock}) cannot keep the sites to the app it submits: they run with "
              "--allow-any-app", file=sys.stderr)
        return ["--allow-any-app"]
    return ["--approve-app", app_hash(app_dir)]


def app_folder(app_dir: str) -> AbstractContextManager[Path]:
    """The folder `flwr run` builds the app from: `app_dir`, or "" for pedseg's own (`own_app`: a snapshot made for
    the run, so the app sent is the one its sites were told to approve)."""
    return nullcontext(Path(app_dir)) if app_dir else own_app()


def prepare_run_dir(out: Path) -> Path:
    """The absolute RUN, made; refuses a RUN that holds files, before anything starts."""
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise PedsegError(f"{out}: already exists and is not empty; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def submit_and_follow(fed: LocalFederation, app_dir: Path, config: dict[str, str], sites: list[str],
                      progress: RunProgress) -> dict:
    """`flwr run` the app in `app_dir` with this run config (`run_config_with_document`), follow it to its end
    (Ctrl-C stops the run), keep its status and the ServerApp's log in RUN/logs, and return results.json;
    PedsegError if the run did not complete."""
    run_id = parse_run_id(fed.flwr("run", str(app_dir), fed.connection, "--run-config", run_config(config),
                                   "--format", "json"))
    try:
        status = follow_run(fed, run_id, sites, progress)
    except KeyboardInterrupt:
        fed.flwr("stop", run_id, fed.connection, timeout=30)
        raise
    (fed.log_dir / "run-status.json").write_text(json.dumps(status, indent=2), encoding="utf-8")
    if status["status"] != "finished:completed":
        reason = run_end_reason(fed.run_dir) or status.get("status-details", "")
        raise PedsegError(f"the federated run {run_id} ended as {status['status']}: {reason}; logs in {fed.log_dir}")
    return json.loads((fed.run_dir / "results.json").read_text(encoding="utf-8"))


def run_end_reason(run_dir: Path) -> str | None:
    """Why the ServerApp ended the run early, from the last line of RUN/metrics.jsonl (e.g. no quorum)."""
    lines = read_metrics(run_dir / METRICS_FILE)
    return lines[-1].reason if lines and lines[-1].event == RUN_ENDED else None


def write_connection(cli_home: Path, name: str, port: int, pki: RunPKI | None, extra: str = "") -> None:
    """The `flwr` CLI's connection `name` to the SuperLink on 127.0.0.1:`port`, in `$FLWR_HOME/config.toml`
    (TLS verified with the run's CA, or insecure); `extra`: more TOML lines for it."""
    cli_home.mkdir(parents=True, exist_ok=True)
    security = "insecure = true" if pki is None else f"root-certificates = {json.dumps(str(pki.ca))}"
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
        f'address = "127.0.0.1:{port}"\n{security}\n{extra}', encoding="utf-8")


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


FLOWER_ROUND = re.compile(r"\[ROUND (\d+)/\d+\]")  # what Flower's Strategy.start logs as each round begins


class ServerLog:
    """RUN/logs/serverapp.log as `flwr log --stream` delivers it, without colour codes (the whole log, each time
    a stream starts); remembers the last round that Flower's log says began."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.round_begun = 0

    def copy(self, stream: IO[str]) -> None:
        copy_without_colour(stream, open(self.path, "w", encoding="utf-8"), self._note)

    def _note(self, line: str) -> None:
        if begun := FLOWER_ROUND.search(line):
            self.round_begun = int(begun[1])


class RunProgress:
    """The progress `pedseg federate` shows (a bar on a terminal, a line per round elsewhere): the rounds of
    stage 1 (the full scheme's shape prior, logged in metrics.jsonl only at its end: until then, those that
    Flower's log says ended), then the federated rounds of metrics.jsonl."""

    def __init__(self, prior_rounds: int, rounds: int, enabled: bool) -> None:
        self.prior = StepProgress("stage 1 (shape prior)", prior_rounds, "round", enabled) if prior_rounds else None
        self.rounds = StepProgress("federated training", rounds, "round", enabled)

    def show(self, lines: list[MetricsLine], log: ServerLog) -> None:
        done = sum(line.is_round for line in lines)
        if self.prior is not None:
            stage_ended = done or any(line.is_prior_round for line in lines)
            self.prior.show(self.prior.total if stage_ended else max(0, log.round_begun - 1))
        self.rounds.show(done)

    def close(self) -> None:
        for bar in (self.prior, self.rounds):
            if bar is not None:
                bar.close()


def follow_run(fed: LocalFederation, run_id: str, sites: list[str], progress: RunProgress) -> dict:
    """Follow the run with `flwr log --stream`, whose ServerApp log goes to RUN/logs/serverapp.log (`ServerLog`)
    and which ends when the run does, showing its `progress`; then the run's status (`flwr ls`). A site whose
    process ends is reported once; the run goes on while the quorum holds (the ServerApp decides). A stream that
    ends before the run (a lost connection) is started again."""
    gone: set[str] = set()
    fed.log_dir.mkdir(parents=True, exist_ok=True)
    log = ServerLog(fed.log_dir / "serverapp.log")
    try:
        while True:
            stream = subprocess.Popen(fed.flwr_command("log", run_id, fed.connection, "--stream"),
                                      env=fed.flwr_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      encoding="utf-8", errors="replace")
            copier = threading.Thread(target=log.copy, args=(stream.stdout,), daemon=True)
            copier.start()
            try:
                while stream.poll() is None:
                    progress.show(read_metrics(fed.run_dir / METRICS_FILE), log)
                    report_stopped_sites(fed, sites, gone)
                    time.sleep(POLL_SECONDS)
            finally:
                if stream.poll() is None:
                    stream.terminate()
                stream.wait()
                copier.join()
            progress.show(read_metrics(fed.run_dir / METRICS_FILE), log)
            listing = fed.flwr("ls", fed.connection, "--run-id", run_id, "--format", "json")
            runs = json.loads(listing.stdout or "{}").get("runs", [])
            if runs and str(runs[0].get("status", "")).startswith("finished"):
                return runs[0]
            time.sleep(POLL_SECONDS)
    finally:
        progress.close()


def report_stopped_sites(fed: LocalFederation, sites: list[str], gone: set[str]) -> None:
    """Say once of each site whose process ended (adding it to `gone`)."""
    for site in sites:
        proc = fed.processes[f"site-{site}"]
        if site not in gone and proc.poll() is not None:
            gone.add(site)
            print(f"pedseg federate: site {site} stopped (status {proc.returncode}; see "
                  f"{fed.logs[f'site-{site}']}); the run goes on while the quorum holds", file=sys.stderr)
