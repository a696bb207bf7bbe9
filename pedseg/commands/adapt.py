"""`pedseg adapt`: a model for a hospital that did not take part in the federation."""

from __future__ import annotations

import argparse
from pathlib import Path

from pedseg.options import whole_number
from pedseg_core.names import check_name


def adapt(args: argparse.Namespace) -> int:
    from pedseg_core.evaluate.table import results_table
    from pedseg_core.train.adapt import MODEL_FILE, adapt_site

    joint = check_name(args.joint, "joint", "--joint")
    site = check_name(args.site, "site", "--site") if args.site else joint
    results = adapt_site(Path(args.checkpoint), site, joint, Path(args.data), Path(args.out), args.steps, args.cases,
                         args.fine_tune_shared)
    print(results_table(results))
    print(f"model for pedseg predict: {Path(args.out) / 'checkpoints' / MODEL_FILE}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("adapt", help="a model for a hospital that did not take part: the federation's shared "
                            "filters plus a few labelled cases of its joint train its own norms and head")
    parser.add_argument("--checkpoint", required=True, metavar="GLOBAL_FINAL.pt",
                        help="the federation's shared weights (a federated RUN/checkpoints/global_final.pt)")
    parser.add_argument("--joint", required=True, help="the new site's joint, e.g. knee or spine")
    parser.add_argument("--data", required=True, metavar="DIR", help="the new site's nnU-Net dataset (its labelled "
                        "training cases train; its labelsTs, or a held-out part of its training cases, evaluate)")
    parser.add_argument("--out", required=True, metavar="RUN", help="a new run folder, never overwritten: "
                        "config.yaml, metrics.jsonl, results.json, checkpoints/final.pt")
    parser.add_argument("--site", help="the new domain's name in the checkpoint (default: the joint)")
    parser.add_argument("--cases", type=whole_number(1), metavar="N",
                        help="train on the first N training cases only (default: all)")
    parser.add_argument("--steps", type=whole_number(1), default=200, help="training steps")
    parser.add_argument("--fine-tune-shared", action="store_true",
                        help="also fine-tune the shared filters (default: frozen; only the norms and head train)")
    parser.set_defaults(func=adapt)
