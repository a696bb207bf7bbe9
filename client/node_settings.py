"""A site's own settings as its ClientApp sees them: the SuperNode's node config (set by `pedseg-client`), or in
a Flower simulation, where a virtual node only knows its partition id, its entry in the run config's
`sites-json` table. Keys: site, joint, data-dir, state-dir, threads, keep-sent, policy (a YAML file)."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context

from pedseg_core.policy import SitePolicy, load_policy


def node_settings(context: Context) -> dict:
    if "site" in context.node_config:
        return dict(context.node_config)
    return json.loads(str(context.run_config["sites-json"]))[int(context.node_config["partition-id"])]


def state_dir(node: dict) -> Path:
    """Where the site keeps its private layers, models and audit log (default: beside its dataset)."""
    return Path(str(node.get("state-dir") or Path(str(node["data-dir"])).parent / f".pedseg-{node['site']}"))


def site_policy(node: dict) -> SitePolicy:
    """The site's privacy policy: its `policy` file, or the default (safe) one."""
    return load_policy(Path(str(node["policy"])) if node.get("policy") else None)
