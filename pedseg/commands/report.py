"""`pedseg report`: one self-contained HTML page of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from pedseg.options import parse_data_args


def report(args: argparse.Namespace) -> int:
    from pedseg_core.report import write_report

    path = write_report(Path(args.run), Path(args.out) if args.out else None, parse_data_args(args.data) or None)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="one self-contained HTML page of a federated, centralized or "
                            "reproduction run: Dice per round, box plots, overlays, timeline, configuration")
    parser.add_argument("run", metavar="RUN", help="a run or reproduction folder")
    parser.add_argument("--out", metavar="FILE", help="the HTML file to write (default: RUN/report.html, replaced)")
    parser.add_argument("--data", action="append", default=[], metavar="JOINT=DIR",
                        help="where the test images are, for the overlays of a run that did not record it "
                             "(`pedseg train`); repeat for each joint")
    parser.set_defaults(func=report)
