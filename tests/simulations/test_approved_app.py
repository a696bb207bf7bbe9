"""The site runs only code it approved: a real loopback federation (TLS, SuperNode keys) whose sites approve
pedseg's app by its FAB hash is sent a modified copy of it. Every site refuses it before any of its code runs,
with one clear line in the site's log, an error in the run's metrics.jsonl and ServerApp log, and a line in
the site's audit log; no training happens."""

from __future__ import annotations

import json
import shutil

from client.approved_app import APP_PACKAGES, app_hash
from flower_common.run_config import config_from_run_config
from pedseg.cli import main as pedseg
from pedseg_core.audit import read_audit
from simulations.local import federate_local
from tests.app_folder import APP_DIR


def modified_app(root):
    """pedseg's app with one line added to its ClientApp after the sites approved it."""
    app = root / "modified-app"
    app.mkdir()
    shutil.copy(APP_DIR / "pyproject.toml", app / "pyproject.toml")
    for part in APP_PACKAGES:
        shutil.copytree(APP_DIR / part, app / part, ignore=shutil.ignore_patterns("__pycache__"))
    with (app / "client" / "app.py").open("a", encoding="utf-8") as f:
        f.write("\nSENT_ELSEWHERE = True  # a change the sites never reviewed\n")
    return app


def test_a_modified_app_is_refused_by_every_site_before_it_runs(tmp_path, capsys):
    data = tmp_path / "data"
    assert pedseg(["data", "synth", str(data), "--joints", "ankle,knee", "--train", "2", "--test", "1"]) == 0
    approved = app_hash(APP_DIR)
    app = modified_app(tmp_path)
    refused = app_hash(app)
    assert refused != approved
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"approved_apps:\n  - {approved}\n", encoding="utf-8")
    out = tmp_path / "run"
    config = config_from_run_config({"preset": "tiny", "rounds": 1, "overrides": "train.steps_per_epoch=2"})
    results = federate_local({"ankle": data / "ankle", "knee": data / "knee"}, out, config, threads=1,
                             progress=False, policy=policy, app_dir=app)
    assert results["sites"] == {}
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert record["sites"] == {} and len({e["site"] for e in record["errors"]}) == 2
    assert len(record["errors"]) == 4  # each site refused round 1's training and the final evaluation
    assert all(f"refused the app {refused}: it is not among the approved_apps" in e["reason"]
               for e in record["errors"])
    assert "not among the approved_apps" in (out / "logs" / "serverapp.log").read_text(encoding="utf-8")
    for site in ("ankle", "knee"):
        log = (out / "logs" / f"site-{site}.log").read_text(encoding="utf-8")
        assert f"pedseg-client: site {site}: refused the app {refused}" in log
        assert not list((out / "sites" / site).glob("run-*"))  # no private state: nothing trained
        lines = read_audit(out / "sites" / site)
        assert lines and all(line["fab_sha256"] == refused and "refused" in line["error"] for line in lines)
