"""A site started as deploy/README.md says (`start-site.sh site.env`) runs the policy its site.env names: its start
lines name the file and what it allows, and the app it runs; start-site.sh without a policy refuses to start
unless PEDSEG_NO_POLICY=1. No SuperLink is needed: the site says all this before it connects, and is stopped
while it waits."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from client.approved_app import own_app_hash
from pedseg.cli import main as pedseg
from pedseg_core.policy import describe_policy, load_policy
from pedseg_core.processes.ports import free_port
from tests.deploy.test_deploy_path import DEPLOY, site_env_file, start_site

WAITING = "waiting for the SuperLink"


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    assert pedseg(["data", "synth", str(data), "--joints", "knee", "--train", "2", "--test", "1"]) == 0
    return data / "knee"


def env_file(root, knee, policy=None):
    """site.env for a site whose SuperLink (a free port, nothing listening) it never reaches."""
    for held in ("ca.crt", "knee-site.key"):  # never read: the site stops before it connects
        (root / held).write_text("", encoding="utf-8")
    return site_env_file(root, "knee-site", "knee", knee, f"127.0.0.1:{free_port()}", root / "ca.crt",
                         root / "knee-site.key", policy)


def start_lines(root: Path, env: Path) -> tuple[int, str, str]:
    """Start the site, read its start lines until it waits for the SuperLink, stop it: (status, stdout, stderr)."""
    proc = start_site(root, env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if WAITING in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=60)
    return proc.returncode, "".join(lines) + out, err


def test_a_deployed_site_runs_the_policy_its_site_env_names(tmp_path, knee):
    policy = tmp_path / "policy.yaml"
    policy.write_text("share_head: false\nshare_prototypes: false\n", encoding="utf-8")
    status, out, err = start_lines(tmp_path, env_file(tmp_path, knee, policy))
    assert status == 0 and "pedseg-client: site knee-site stopped" in out, out + err
    assert f"pedseg-client: policy: {policy}: {describe_policy(load_policy(policy))}" in out
    assert "head never pooled" in out and "no prototypes" in out
    assert f"pedseg-client: apps: runs only {own_app_hash()} (its own pedseg's app)" in out


def test_start_site_refuses_to_start_without_a_policy_unless_told(tmp_path, knee):
    env = env_file(tmp_path, knee)
    text = env.read_text(encoding="utf-8")
    env.write_text("\n".join(line for line in text.splitlines() if not line.startswith("PEDSEG_POLICY=")) + "\n",
                   encoding="utf-8")
    refused = subprocess.run(["bash", str(DEPLOY / "start-site.sh"), str(env)], capture_output=True,
                             encoding="utf-8", timeout=60)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (f"start-site.sh: {env} sets no PEDSEG_POLICY (this site's privacy policy, "
                              "deploy/README.md): set it, or PEDSEG_NO_POLICY=1 to run the default policy\n")
    with env.open("a", encoding="utf-8") as f:
        f.write("PEDSEG_NO_POLICY=1\n")
    status, out, err = start_lines(tmp_path, env)
    assert status == 0 and "pedseg-client: policy: the default policy: " in out, out + err
