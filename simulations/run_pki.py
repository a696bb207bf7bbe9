"""The private PKI of one local federation, in RUN/pki/: a CA, the SuperLink's certificate for 127.0.0.1 and one
SuperNode key pair per site, made by the same `deploy/` scripts that a hospital's IT staff run."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from pedseg_core.errors import PedsegError

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy"
LOOPBACK_SAN = "IP:127.0.0.1"


@dataclass(frozen=True)
class RunPKI:
    """Where the files of a run's PKI lie (RUN/pki/ca.crt, server.{crt,key}, sites/SITE.key{,.pub})."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def site_key(self, site: str) -> Path:
        return self.root / "sites" / f"{site}.key"

    def site_public_key(self, site: str) -> Path:
        return self.root / "sites" / f"{site}.key.pub"

    def superlink_tls_args(self) -> list[str]:
        """flower-superlink's TLS options for this PKI."""
        return ["--ssl-ca-certfile", str(self.ca), "--ssl-certfile", str(self.server_cert),
                "--ssl-keyfile", str(self.server_key)]


def run_deploy_script(name: str, *args: str) -> None:
    """Run one deploy/ script; PedsegError with its own last line when it fails."""
    try:
        done = subprocess.run(
            ["bash", str(DEPLOY_DIR / name), *args], capture_output=True, encoding="utf-8", errors="replace", timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PedsegError(f"deploy/{name}: {err}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
        raise PedsegError(f"deploy/{name} failed: {detail[-1]} (it needs openssl and ssh-keygen)")


def make_run_pki(root: Path, sites: list[str]) -> RunPKI:
    """A fresh CA, a SuperLink certificate with SAN 127.0.0.1, and an EC key pair for each site."""
    pki = RunPKI(Path(root).resolve())
    run_deploy_script("make-certificates.sh", str(pki.root), LOOPBACK_SAN)
    for site in sites:
        run_deploy_script("make-supernode-key.sh", str(pki.root / "sites"), site)
    return pki
