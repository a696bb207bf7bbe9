"""The deployment as a hospital's IT staff run it (deploy/README.md), on 127.0.0.1: the operator's certificates,
`start-superlink.sh` (a SuperLink on 127.0.0.1 behind the Fleet-only gateway, TLS, SuperNode authentication),
key registration, `start-site.sh` sites, `flwr run` with deploy/'s connection file; each refusal a site can meet,
in one line; and a site that cannot use the control plane."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pedseg.cli import main as pedseg
from pedseg_core.processes.flower_env import QUIET_FLOWER_ENV
from pedseg_core.processes.ports import free_port
from simulations.local import wait_for_health
from tests.process_checks import family, wait_gone

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
JOINTS = ("ankle", "knee", "shoulder")


def env_with(flwr_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a shell at a site or at the operator: the venv on PATH, Flower quiet, its own home."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, **QUIET_FLOWER_ENV, FLWR_HOME=str(flwr_home),
                PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra)


def script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["bash", str(DEPLOY / name), *args],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def connection_file(flwr_home: Path, address: str, ca: Path) -> None:
    """deploy/flwr-config.toml with this federation's address and CA, as the guide says to copy and edit it."""
    text = (DEPLOY / "flwr-config.toml").read_text(encoding="utf-8")
    text = text.replace("127.0.0.1:9093", address).replace("/etc/pedseg/certs/ca.crt", str(ca))
    (flwr_home / "config.toml").write_text(text, encoding="utf-8")


class Operator:
    """The federation operator's host: certificates, the SuperLink behind its gateway, the `flwr` CLI."""

    def __init__(self, root: Path):
        self.root = root
        self.certs = root / "certs"
        script("make-certificates.sh", str(self.certs), "IP:127.0.0.1")
        self.port, self.control_port = free_port(), free_port()
        self.home = root / "operator-flwr"
        self.env = env_with(self.home)
        self.proc = subprocess.Popen(
            ["bash", str(DEPLOY / "start-superlink.sh"), str(self.certs), str(self.port)],
            env=env_with(
                root / "superlink-flwr",
                PEDSEG_SUPERLINK_HOME=str(root / "superlink"),
                PEDSEG_SUPERLINK_HOST="127.0.0.1",
                PEDSEG_CONTROL_PORT=str(self.control_port),
            ),
            stdout=(root / "start-superlink.log").open("w", encoding="utf-8"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for port in (self.control_port, self.port):  # the SuperLink, then its gateway
            wait_for_health(port, self.proc, root / "start-superlink.log", self.certs / "ca.crt")
        connection_file(self.home, f"127.0.0.1:{self.control_port}", self.certs / "ca.crt")

    def flwr(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            env=env or self.env,
            timeout=120,
        )

    def register(self, public_key: Path) -> None:
        done = self.flwr("supernode", "register", str(public_key), "pedseg")
        assert done.returncode == 0, done.stdout + done.stderr

    def stop(self) -> None:
        pids = family(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        assert wait_gone(pids) == set()


@pytest.fixture(scope="module")
def operator(tmp_path_factory):
    op = Operator(tmp_path_factory.mktemp("operator"))
    yield op
    op.stop()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    assert pedseg(["data", "synth", str(data), "--train", "2", "--test", "1"]) == 0
    return data


def site_key(root: Path, site: str) -> Path:
    """A site makes its key pair; returns the private key (the public one lies beside it as .pub)."""
    script("make-supernode-key.sh", str(root / "keys"), site)
    return root / "keys" / f"{site}.key"


def site_env_file(root: Path, site: str, joint: str, data: Path, superlink: str, ca: Path, key: Path,
                  policy: Path | None = None) -> Path:
    """deploy/site.env.example filled in, as the guide asks of each hospital; `policy` (default: one written
    here, with the default policy's values) is the site's privacy policy."""
    if policy is None:
        policy = root / f"{site}-policy.yaml"
        policy.write_text("per_case_metrics: false\n", encoding="utf-8")
    values = {"PEDSEG_SITE": site, "PEDSEG_JOINT": joint, "PEDSEG_DATA": str(data), "PEDSEG_SUPERLINK": superlink,
              "PEDSEG_CA": str(ca), "PEDSEG_AUTH_KEY": str(key), "PEDSEG_STATE": str(root / "state" / site),
              "PEDSEG_POLICY": str(policy), "PEDSEG_THREADS": "1"}
    lines = []
    for line in (DEPLOY / "site.env.example").read_text(encoding="utf-8").splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values.pop(name)}" if name in values else line)
    assert values == {}, f"site.env.example lacks {sorted(values)}"
    path = root / f"{site}.env"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def start_site(root: Path, env_file: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(DEPLOY / "start-site.sh"), str(env_file)],
        env=env_with(root / "shell"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )


@pytest.mark.slow
def test_three_sites_complete_a_run(operator, datasets, tmp_path):
    sites = {}
    for joint in JOINTS:
        key = site_key(tmp_path, joint)
        operator.register(key.with_name(f"{joint}.key.pub"))
        env_file = site_env_file(tmp_path, joint, joint, datasets / joint, f"127.0.0.1:{operator.port}",
                                 operator.certs / "ca.crt", key)
        sites[joint] = start_site(tmp_path, env_file)
    out = tmp_path / "run"
    config = (f'preset="tiny" scheme="multi-domain" rounds=1 min-sites=3 out-dir="{out}" '
              'overrides="train.steps_per_epoch=2"')
    submitted = operator.flwr("run", str(ROOT), "pedseg", "--run-config", config, "--format", "json")
    run_id = json.loads(submitted.stdout)["run-id"]
    deadline, status = time.monotonic() + 300, ""
    while not status.startswith("finished") and time.monotonic() < deadline:
        time.sleep(2)
        listing = json.loads(operator.flwr("ls", "pedseg", "--run-id", run_id, "--format", "json").stdout)
        status = listing["runs"][0]["status"]
    assert status == "finished:completed"
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results["sites"]) == set(JOINTS)
    for joint, proc in sites.items():
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and f"pedseg-client: site {joint} stopped" in stdout


def test_a_site_can_neither_register_a_key_nor_list_runs(operator, tmp_path):
    """A machine with what a site holds (the CA certificate, its own key) dials the address the sites dial."""
    site_home = tmp_path / "site-flwr"
    site_env = env_with(site_home)
    connection_file(site_home, f"127.0.0.1:{operator.port}", operator.certs / "ca.crt")
    key = site_key(tmp_path, "intruder")
    for command in (["supernode", "register", str(key.with_name("intruder.key.pub")), "pedseg"],
                    ["ls", "pedseg"], ["supernode", "ls", "pedseg"]):
        done = operator.flwr(*command, env=site_env)
        assert done.returncode != 0 and "404" in done.stdout + done.stderr, command
    listed = json.loads(operator.flwr("supernode", "ls", "pedseg", "--format", "json").stdout)
    assert "intruder" not in json.dumps(listed)
    # the SuperLink itself (Control, Fleet and Runtime APIs) listens on 127.0.0.1 only
    superlink = next(p for p in psutil.Process(operator.proc.pid).children(recursive=True)
                     if "flower-superlink" in " ".join(p.cmdline()))
    listening = {c.laddr for c in superlink.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}


def client(args: list[str], data: Path, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(BIN / "pedseg-client"),
            "--site",
            "h1",
            "--joint",
            "knee",
            "--data",
            str(data),
            "--state-dir",
            str(state),
            "--connect-timeout",
            "4",
            *args,
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        env=env_with(state / "shell"),
        timeout=120,
    )


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory):
    other = tmp_path_factory.mktemp("other-ca")
    script("make-certificates.sh", str(other), "IP:127.0.0.1")
    return other / "ca.crt"


@pytest.mark.parametrize("case, cause", [
    ("unregistered key", "does not know this site's key"),
    ("no key", "admits only registered sites: give --auth-key"),
    ("wrong CA", "is not signed by the CA of --root-certificates"),
    ("hostname mismatch", "not valid for the address dialled (localhost:"),
    ("insecure", "it speaks TLS, use --root-certificates instead of --insecure"),
])
def test_each_refusal_ends_the_site_with_one_line_naming_the_cause(operator, datasets, wrong_ca, tmp_path,
                                                                    case, cause):
    ca, key = operator.certs / "ca.crt", site_key(tmp_path, "h1")
    address = f"127.0.0.1:{operator.port}"
    args = {"unregistered key": ["--root-certificates", str(ca), "--auth-key", str(key)],
            "no key": ["--root-certificates", str(ca)],
            "wrong CA": ["--root-certificates", str(wrong_ca), "--auth-key", str(key)],
            "hostname mismatch": ["--root-certificates", str(ca), "--auth-key", str(key)],
            "insecure": ["--insecure"]}[case]
    if case == "hostname mismatch":
        address = f"localhost:{operator.port}"
    done = client(["--superlink", address, *args], datasets / "knee", tmp_path / "state")
    errors = [line for line in done.stderr.splitlines() if line.startswith("pedseg-client: error:")]
    assert done.returncode == 2 and len(errors) == 1 and cause in errors[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def started_site(operator: Operator, datasets: Path, root: Path, site: str) -> tuple[subprocess.Popen, set[int]]:
    """A registered site started with start-site.sh, once its SuperNode is admitted; its process tree."""
    key = site_key(root, site)
    operator.register(key.with_name(f"{site}.key.pub"))
    env_file = site_env_file(root, site, "knee", datasets / "knee", f"127.0.0.1:{operator.port}",
                             operator.certs / "ca.crt", key)
    proc = start_site(root, env_file)
    deadline, pids = time.monotonic() + 60, set()
    # bash (start-site.sh exec's pedseg-client), the guard, the SuperNode, its SuperExec
    while len(pids) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
        pids = family(proc.pid)
    assert len(pids) >= 4, pids
    return proc, pids


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_site_stops_cleanly_on_sigterm_and_sigint(operator, datasets, tmp_path, signum):
    proc, pids = started_site(operator, datasets, tmp_path, f"stopped-{signum.name.lower()}")
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and f"pedseg-client: site stopped-{signum.name.lower()} stopped" in stdout
    assert "Traceback" not in stdout + stderr
    assert wait_gone(pids) == set()


def test_a_killed_site_takes_its_supernode_and_workers_with_it(operator, datasets, tmp_path):
    proc, pids = started_site(operator, datasets, tmp_path, "killed")
    proc.kill()
    proc.wait()
    assert wait_gone(pids) == set()
