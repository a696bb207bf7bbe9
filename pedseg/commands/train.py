"""`pedseg train`: centralized training on every joint's dataset at once."""

from __future__ import annotations

import argparse
from pathlib import Path

from pedseg.options import mlflow_settings, parse_data_args, run_options
from pedseg_core.config import SCHEMES, PedsegConfig, parse_overrides


def train(args: argparse.Namespace) -> int:
    from pedseg_core.config import build_config
    from pedseg_core.evaluate.table import results_table
    from pedseg_core.train.centralized import train_centralized

    overrides = parse_overrides([*args.set, *mlflow_settings(args.mlflow)])
    cfg = build_config(args.preset, Path(args.config) if args.config else None, overrides,
                       {"scheme": args.scheme})  # as in `federate`: the YAML file and --set win over the flag
    results = train_centralized(parse_data_args(args.data), cfg, Path(args.out))
    print(results_table(results))
    print(f"run directory: {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", parents=[run_options(federated=False)], help="centralized training")
    parser.add_argument("--scheme", default=PedsegConfig.model_fields["scheme"].default, choices=SCHEMES,
                        help="which layers the joints share (docs/user-guide.md#schemes)")
    parser.set_defaults(func=train)
