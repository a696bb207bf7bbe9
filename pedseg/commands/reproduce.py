"""`pedseg reproduce`: the paper's ablation table, centralized and federated, on identical splits."""

from __future__ import annotations

import argparse
from pathlib import Path

from pedseg.options import parse_data_args, whole_number
from pedseg_core.config import DEFAULT_PRESET, PRESETS


def reproduce(args: argparse.Namespace) -> int:
    from simulations.reproduce import reproduce as run_reproduction

    cells = [c.strip() for c in args.cells.split(",") if c.strip()] if args.cells else None
    content = run_reproduction(parse_data_args(args.data), Path(args.out), args.preset, args.folds,
                               args.set, cells, Path(args.config) if args.config else None)
    print("\n" + (Path(args.out) / "results.md").read_text(encoding="utf-8"))
    failed = [c["claim"] for c in content["acceptance"] if not c["met"]]
    print(f"reproduction folder: {args.out}" + (f"  (claims not met: {'; '.join(failed)})" if failed else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("reproduce", help="the paper's ablation table, centralized and federated (Flower "
                            "simulation), on identical splits, with paired tests and plots; a re-run resumes")
    parser.add_argument("--data", action="append", required=True, metavar="JOINT=DIR",
                        help="a joint's nnU-Net dataset; repeat for each joint")
    parser.add_argument("--out", required=True, metavar="DIR", help="reproduction folder (a re-run resumes it)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                        help="the configuration to start from")
    parser.add_argument("--folds", type=whole_number(1), default=1, metavar="K",
                        help="K > 1: K-fold cross-validation over the training cases; 1: the labelsTs split")
    parser.add_argument("--cells", help="comma-separated subset of cells, e.g. centralized-full,"
                        "federated-full-fedavg (default: all 13)")
    parser.add_argument("--config", metavar="YAML", help="YAML file overriding the preset")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one option in every cell, e.g. --set train.epochs=5")
    parser.set_defaults(func=reproduce)
