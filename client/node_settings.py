"""A site's own settings as its ClientApp sees them: the SuperNode's node config (set by `pedseg-client`), or in
a Flower simulation, where a virtual node only knows its partition id, its entry in the run config's
`sites-json` table. Keys: site, joint, data-dir, state-dir, threads, keep-sent, policy (a YAML file), part, parts,
and the site's own values that no run config sets (`pedseg_core.train.request_bounds.SiteOwnValues`): folds, fold
(its evaluation split, default: one hold-out or its labelsTs) and device (default auto).
And the run's typed configuration, parsed once per run in a process."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from flwr.app import Context
from pydantic import ValidationError

from flower_common.run_config import config_from_run_config
from pedseg_core.config import DataConfig, PedsegConfig, TrainConfig
from pedseg_core.errors import PedsegError
from pedseg_core.policy import SitePolicy, load_policy
from pedseg_core.train.request_bounds import SiteOwnValues
from pedseg_core.train.site_requests import SiteSettings
from pedseg_core.validation_errors import one_line


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


def site_settings(node: dict) -> SiteSettings:
    """The node's settings as the site algorithm takes them, its policy included."""
    return SiteSettings(str(node["site"]), str(node["joint"]), Path(str(node["data-dir"])), state_dir(node),
                        (int(node.get("part", 0)), int(node.get("parts", 1))), site_policy(node),
                        bool(node.get("keep-sent", False)), own_values(node))


def own_values(node: dict) -> SiteOwnValues:
    """The site's evaluation split and device from its node config (folds, fold, device), checked as the
    configuration checks them; PedsegError naming the node config."""
    default = SiteOwnValues()
    try:
        data = DataConfig(folds=node.get("folds", default.folds), fold=node.get("fold", default.fold))
        device = TrainConfig(device=node.get("device", default.device)).device
    except ValidationError as err:
        raise PedsegError(f"node config: {one_line(err, DataConfig)}") from None
    return SiteOwnValues(folds=data.folds, fold=data.fold, device=device)


def site_config(context: Context) -> PedsegConfig:
    """The run's typed configuration with the node's thread count: parsed once per run, thread count and run
    config in this process (a site's messages all carry the same run config). Shared: read it, never change it."""
    threads = node_settings(context).get("threads")
    return _parsed(context.run_id, tuple(sorted(context.run_config.items())), None if threads is None else int(threads))


@lru_cache(maxsize=8)
def _parsed(run_id: int, run_config: tuple, threads: int | None) -> PedsegConfig:
    cfg = config_from_run_config(dict(run_config))
    if threads is not None:
        cfg.train.num_threads = threads
    return cfg
