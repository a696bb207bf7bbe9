"""`pedseg federate --simulation`: the same ServerApp and ClientApp on Flower's simulation engine (Ray).

Virtual SuperNodes know only their partition id; the run config's `sites-json` table maps each one to a site
(name, joint, dataset, and which share of the joint's training cases it holds when a joint's dataset is split
into several sites). Ray is kept on 127.0.0.1 with its usage statistics off, and every process the run started
(the local SuperLink that `flwr run` launches for `:local:`, Ray) is stopped afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import torch

from client.flower_processes import stop_process_tree
from simulations.local import LocalFederation, prepare_run_dir, submit_and_follow, valid_sites

CONNECTION = "pedseg-simulation"
# Ray treats a machine as a single-node "cluster" on its loopback address when clusters are disabled.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def virtual_sites(data: dict[str, Path], joints: dict[str, str], sites_per_joint: int, out: Path,
                  threads: int) -> list[dict]:
    """The `sites-json` table: one entry per virtual SuperNode (partition id = index)."""
    table = []
    for site, path in data.items():
        for part in range(sites_per_joint):
            name = site if sites_per_joint == 1 else f"{site}-{part + 1}"
            table.append({"site": name, "joint": joints.get(site, site), "data-dir": str(Path(path).resolve()),
                          "state-dir": str(out / "sites" / name), "part": part, "parts": sites_per_joint,
                          "threads": threads})
    return table


def write_simulation_connection(cli_home: Path, num_supernodes: int, cpus_per_site: int, cpus: int,
                                gpus: int = 0) -> None:
    """A `:local:` connection: `flwr run` starts a simulation SuperLink with this many virtual SuperNodes. With
    GPUs, the virtual sites share them (Ray hides GPUs from actors that reserve none)."""
    cli_home.mkdir(parents=True, exist_ok=True)
    gpu_share = f"options.backend.client-resources.num-gpus = {gpus / num_supernodes}\n" if gpus else ""
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = ":local:"\n'
        f"options.num-supernodes = {num_supernodes}\n"
        f"options.backend.client-resources.num-cpus = {cpus_per_site}\n{gpu_share}"
        f"options.backend.init-args.num-cpus = {cpus}\n")


def stop_processes_using(flwr_home: Path) -> None:
    """Stop every process started with this FLWR_HOME (the simulation SuperLink, Ray and their children)."""
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLWR_HOME") == str(flwr_home) and proc.pid != os.getpid():
                stop_process_tree(proc)
        except psutil.Error:
            pass


def federate_simulation(data: dict[str, Path], out: Path, app_config: dict[str, object],
                        joints: dict[str, str] | None = None, sites_per_joint: int = 1,
                        cpus_per_site: int = 1, progress: bool = True) -> dict:
    """Run the federation on Flower's simulation engine; returns results.json (as `pedseg federate --local`)."""
    good = valid_sites(data)
    out, rounds = prepare_run_dir(out, app_config)
    cpus = os.cpu_count() or 1
    table = virtual_sites({s: data[s] for s in good}, joints or {}, sites_per_joint, out,
                          threads=cpus_per_site)
    fed = LocalFederation(out, connection=CONNECTION, extra_env=RAY_LOOPBACK_ENV)
    write_simulation_connection(fed.cli_home, len(table), cpus_per_site, cpus, torch.cuda.device_count())
    config = {**app_config, "min-nodes": len(table), "out-dir": str(out), "sites-json": json.dumps(table)}
    try:
        return submit_and_follow(fed, config, [], rounds, progress)
    finally:
        stop_processes_using(fed.cli_home)
