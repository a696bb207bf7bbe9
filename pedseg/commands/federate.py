"""`pedseg federate`: federated training on Flower, on loopback (--local) or in Flower's simulation engine."""

from __future__ import annotations

import argparse
from pathlib import Path

from pedseg.options import mlflow_settings, parse_site_args, run_options, whole_number
from pedseg_core.config import (
    DEFAULT_PRESET,
    FEDERATED_SCHEMES,
    FederationConfig,
    PedsegConfig,
    build_config,
    parse_overrides,
)
from pedseg_core.errors import PedsegError


def federate(args: argparse.Namespace) -> int:
    if not (args.local or args.simulation or args.resume):
        raise PedsegError("choose --local (a SuperLink and one SuperNode per site on 127.0.0.1) or --simulation "
                          "(Flower's simulation engine); for a deployment across hosts see deploy/README.md")
    refuse_other_mode(args)
    if args.resume:
        if args.simulation:
            raise PedsegError("--resume RUN continues a --local run: drop --simulation")
        if given := [name for name, default in resume_refuses().items() if getattr(args, name) != default]:
            raise PedsegError(f"--resume RUN continues with the run's own sites, directory, policy and settings: "
                              f"drop --{given[0].replace('_', '-')}")
        from simulations.local import resume_local

        results = resume_local(Path(args.resume))
        return _report_federation(results, Path(args.resume))
    if not (args.data and args.out):
        raise PedsegError("federate needs --data (one per site) and --out RUN")
    options = {"scheme": args.scheme, "federation": {"strategy": args.strategy, "rounds": args.rounds or 0}}
    if args.min_sites is not None:
        options["federation"]["min_nodes"] = args.min_sites
    if args.secure_aggregation:
        options["federation"]["secure_aggregation"] = True
    cfg = build_config(args.preset, Path(args.config) if args.config else None,
                       parse_overrides([*args.set, *mlflow_settings(args.mlflow)]), options)
    sites, joints = parse_site_args(args.data)
    if args.simulation:
        from simulations.simulation import federate_simulation

        results = federate_simulation(sites, Path(args.out), cfg, joints=joints,
                                      sites_per_joint=args.sites_per_joint,
                                      cpus_per_site=args.cpus_per_site, insecure=args.insecure,
                                      policy=Path(args.policy) if args.policy else None,
                                      ray_address=args.ray_address, gpus_per_site=args.gpus_per_site)
    else:
        from simulations.local import federate_local

        results = federate_local(sites, Path(args.out), cfg, joints=joints, threads=args.threads,
                                 insecure=args.insecure, policy=Path(args.policy) if args.policy else None)
    return _report_federation(results, Path(args.out))


def resume_refuses() -> dict[str, object]:
    """The options a resumed run takes from its own records (RUN/config.yaml, RUN/federation.json), with the
    value each has when not given."""
    return {"data": None, "out": None, "policy": None, "config": None, "set": [], "mlflow": None, "rounds": None,
            "min_sites": None, "secure_aggregation": False, "insecure": False, "preset": DEFAULT_PRESET,
            "scheme": PedsegConfig.model_fields["scheme"].default,
            "strategy": FederationConfig.model_fields["strategy"].default}


SIMULATION_OPTIONS = {"sites_per_joint": 1, "cpus_per_site": 1, "ray_address": None, "gpus_per_site": 0.0}
LOCAL_OPTIONS = {"threads": 0}


def refuse_other_mode(args: argparse.Namespace) -> None:
    """Refuses an option of another mode than the one chosen (naming it as typed), then gives the options left
    unset their defaults."""
    mode, others = ("--simulation", LOCAL_OPTIONS) if args.simulation else \
        ("--resume", {**LOCAL_OPTIONS, **SIMULATION_OPTIONS}) if args.resume else ("--local", SIMULATION_OPTIONS)
    given = [name for name in others if getattr(args, name) is not None]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise PedsegError(f"{option} is not an option of {mode}: drop it (it belongs to "
                          f"{'--local' if given[0] in LOCAL_OPTIONS else '--simulation'})")
    for name, default in {**SIMULATION_OPTIONS, **LOCAL_OPTIONS}.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _report_federation(results: dict, out: Path) -> int:
    from pedseg_core.evaluate.table import results_table
    from simulations.site_dirs import personalized_models

    print(results_table(results))
    for site, model in personalized_models(out).items():
        print(f"personalized model of {site}: {model}")
    print(f"run directory: {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("federate", parents=[run_options(federated=True)], help="federated training on "
                            "Flower; --data takes JOINT=DIR or SITE:JOINT=DIR (several sites may hold one joint)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="SuperLink and SuperNodes on 127.0.0.1")
    mode.add_argument("--simulation", action="store_true", help="Flower's simulation engine (Ray, 127.0.0.1)")
    parser.add_argument("--resume", metavar="RUN", help="continue a stopped or killed --local run from its last "
                      "completed round, with its own sites, data and settings")
    parser.add_argument("--sites-per-joint", type=whole_number(1), metavar="K",
                        help="--simulation only: split each joint's training cases into K sites (default: 1)")
    parser.add_argument("--cpus-per-site", type=whole_number(1), metavar="N",
                        help="--simulation only: CPU cores Ray reserves for each virtual site (default: 1)")
    parser.add_argument("--ray-address", metavar="HOST:PORT",
                        help="--simulation only: run the virtual sites on this existing Ray cluster (its head's "
                             "address) instead of a private Ray on this machine; see docs/ray-cluster.md")
    parser.add_argument("--gpus-per-site", type=float, metavar="G",
                        help="--simulation on a Ray cluster only: GPUs Ray reserves for each virtual site, e.g. 0.25 "
                             "(default: 0)")
    parser.add_argument("--rounds", type=whole_number(0), metavar="N",
                        help="federated rounds (default: 0, which means the preset's train.epochs: one local epoch "
                             "per round)")
    parser.add_argument("--strategy", choices=("fedavg", "fedprox"),
                        default=FederationConfig.model_fields["strategy"].default,
                        help="fedprox adds FedProx's proximal term to each site's loss")
    parser.add_argument("--threads", type=whole_number(0), metavar="N",
                        help="--local only: torch threads per site (default: 0, which means this machine's cores "
                             "divided by the sites, at least 1)")
    parser.add_argument("--scheme", default=PedsegConfig.model_fields["scheme"].default, choices=FEDERATED_SCHEMES,
                        help="which layers the sites share (docs/user-guide.md#schemes)")
    parser.add_argument("--min-sites", type=whole_number(1), metavar="K",
                        help="the quorum: a round starts once K sites are connected, and the run goes on while "
                             "K remain (default: every site with a valid dataset)")
    parser.add_argument("--secure-aggregation", action="store_true",
                        help="SecAgg+: the server learns only the mean of the sites' shared weights (at least 3 "
                             "sites; per-site update checks and robust aggregation are off)")
    parser.add_argument("--policy", metavar="POLICY.yaml",
                        help="every site's privacy policy (default: the safe one: no per-case metrics leave; "
                             "a simulation, on your own data, allows them)")
    parser.add_argument("--insecure", action="store_true",
                        help="no TLS and no SuperNode authentication (default: both, with a private CA and one "
                             "key per site in RUN/pki/)")
    parser.set_defaults(func=federate)
