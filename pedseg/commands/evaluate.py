"""`pedseg evaluate`: Dice, HD95 and ASSD of predicted label volumes against reference ones."""

from __future__ import annotations

import argparse
from pathlib import Path


def evaluate(args: argparse.Namespace) -> int:
    from pedseg_core.evaluate.folders import evaluate_folders
    from pedseg_core.evaluate.table import evaluation_table
    from pedseg_core.train.run_dir import write_json

    report = evaluate_folders(Path(args.pred), Path(args.ref), Path(args.labels) if args.labels else None)
    print(evaluation_table(report))
    if args.json:
        write_json(Path(args.json), report)
        print(f"wrote {args.json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="Dice, HD95 and ASSD per case and bone")
    parser.add_argument("--pred", required=True, metavar="DIR", help="the predicted label volumes (pedseg predict "
                        "--out)")
    parser.add_argument("--ref", required=True, metavar="DIR", help="the reference label volumes, e.g. "
                        "DATASET/labelsTs")
    parser.add_argument("--labels", metavar="DATASET_JSON",
                        help="dataset.json naming the labels (default: next to --ref)")
    parser.add_argument("--json", metavar="FILE", help="also write the full report as JSON (replaced)")
    parser.set_defaults(func=evaluate)
