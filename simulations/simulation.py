"""`pedseg federate --simulation`: the same ServerApp and ClientApp on Flower's simulation engine (Ray).

Virtual SuperNodes know only their partition id; the run config's `sites-json` table maps each one to a site
(name, joint, dataset, and which share of the joint's training cases it holds when a joint's dataset is split
into several sites). The simulation SuperLink serves on a free port of 127.0.0.1, by default over TLS with the
run's private CA (RUN/pki/): there are no SuperNodes to authenticate, so TLS protects what the `flwr` CLI
exchanges with it (the app, the run config, the logs). Ray is kept on 127.0.0.1 with its usage statistics off,
and every process the run started (the SuperLink, Ray) is stopped afterwards. With `--ray-address`, the sites
run on an existing Ray cluster instead (docs/ray-cluster.md), which is the user's and stays up.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import yaml

from client.approved_app import own_app
from flower_common.run_config import run_config_with_document
from pedseg_core.config import PedsegConfig
from pedseg_core.policy import SitePolicy
from simulations.local import (
    INSECURE_WARNING,
    LocalFederation,
    RunProgress,
    norms_for_policy,
    prepare_run_dir,
    prior_rounds,
    start_superlink,
    submit_and_follow,
    valid_sites,
    with_quorum,
)
from simulations.run_pki import make_run_pki
from simulations.site_dirs import site_state_dir

CONNECTION = "pedseg-simulation"
# Ray treats a machine as a single-node "cluster" on its loopback address when clusters are disabled.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def virtual_sites(data: dict[str, Path], joints: dict[str, str], sites_per_joint: int, out: Path,
                  threads: int, policy: Path) -> list[dict]:
    """The `sites-json` table: one entry per virtual SuperNode (partition id = index)."""
    table = []
    for site, path in data.items():
        for part in range(sites_per_joint):
            name = site if sites_per_joint == 1 else f"{site}-{part + 1}"
            table.append({"site": name, "joint": joints.get(site, site), "data-dir": str(Path(path).resolve()),
                          "state-dir": str(site_state_dir(out, name)), "part": part, "parts": sites_per_joint,
                          "threads": threads, "policy": str(policy)})
    return table


def simulation_options(num_supernodes: int, cpus_per_site: int, cpus: int, gpus: float = 0,
                       on_cluster: bool = False) -> str:
    """The connection's simulation options (TOML lines): this many virtual SuperNodes and their resources. With
    GPUs, the virtual sites share them (Ray hides GPUs from actors that reserve none). On an existing cluster
    (`on_cluster`: the engine finds it through RAY_ADDRESS, as `ray.init` does), the cluster's CPUs and GPUs are
    its own (Ray refuses sizes for it); otherwise the engine starts a private Ray with this machine's `cpus`."""
    gpu_share = f"options.backend.client-resources.num-gpus = {gpus / num_supernodes}\n" if gpus else ""
    cluster = "" if on_cluster else f"options.backend.init-args.num-cpus = {cpus}\n"
    return (f"options.num-supernodes = {num_supernodes}\n"
            f"options.backend.client-resources.num-cpus = {cpus_per_site}\n{gpu_share}{cluster}")


def federate_simulation(data: dict[str, Path], out: Path, cfg: PedsegConfig,
                        joints: dict[str, str] | None = None, sites_per_joint: int = 1,
                        cpus_per_site: int = 1, progress: bool = True, insecure: bool = False,
                        policy: Path | None = None, ray_address: str | None = None,
                        gpus_per_site: float = 0.0) -> dict:
    """Run the federation of the resolved configuration `cfg` on Flower's simulation engine; returns
    results.json (as `pedseg federate --local`). The data is the researcher's own: unless a `policy` is given,
    every virtual site runs the default policy with per-case metrics allowed, and the run asks for them (for the
    reproduction's paired tests).

    `ray_address` (HOST:PORT of a running Ray head): the virtual sites run on that cluster's workers, which
    must see the data, the run directory and this checkout at the same paths (a shared filesystem), each with
    `cpus_per_site` CPUs and `gpus_per_site` GPUs; the cluster is left running. Without it, a private Ray on
    this machine shares its CPUs and GPUs among the sites."""
    good = valid_sites(data)
    cfg = norms_for_policy(cfg, policy)
    out = prepare_run_dir(out)
    if policy is None:
        policy = out / "site-policy.yaml"
        policy.write_text(yaml.safe_dump(SitePolicy(per_case_metrics=True).model_dump()), encoding="utf-8")
        cfg = cfg.model_copy(deep=True)
        cfg.federation.per_case_metrics = True
    if insecure:
        print(f"pedseg federate: {INSECURE_WARNING}", file=sys.stderr)
    cpus = os.cpu_count() or 1
    table = virtual_sites({s: data[s] for s in good}, joints or {}, sites_per_joint, out,
                          threads=cpus_per_site, policy=Path(policy).resolve())
    ray_env = {"RAY_ADDRESS": ray_address or ""}  # "": a private Ray, whatever the user's shell has set
    fed = LocalFederation(out, connection=CONNECTION, extra_env={**RAY_LOOPBACK_ENV, **ray_env})
    cfg = with_quorum(cfg, [site["site"] for site in table])
    config = run_config_with_document(cfg, {"out-dir": str(out), "sites-json": json.dumps(table)})
    try:
        pki = None if insecure else make_run_pki(out / "pki", [])
        gpus = gpus_per_site * len(table) if ray_address else torch.cuda.device_count()
        start_superlink(fed, pki, simulation=True, connection_extra=simulation_options(
            len(table), cpus_per_site, cpus, gpus, on_cluster=bool(ray_address)))
        with own_app() as app_dir:
            return submit_and_follow(fed, app_dir, config, [],
                                     RunProgress(prior_rounds(cfg), cfg.federation.num_rounds(cfg.train), progress))
    finally:
        fed.stop_all()  # the SuperLink's guard also stops Ray's processes, which are re-parented to it
