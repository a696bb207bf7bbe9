"""`pedseg audit`: what left a site, per run and round, and what a reviewer should look at."""

from __future__ import annotations

import argparse
from pathlib import Path


def audit(args: argparse.Namespace) -> int:
    from pedseg_core.audit import read_audit, summarize_audit

    lines, flagged = summarize_audit(read_audit(Path(args.state_dir)))
    print("\n".join(lines))
    return 1 if flagged else 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("audit", help="what left a site, per run and round, and the request behind it, from "
                            "STATE_DIR/audit.jsonl; exit 1 when an image-sized array or per-case metrics left it or "
                            "its policy refused a request; LOOK lines: evaluations over fewer than 2 cases, new or "
                            "resumed run folders, granted arrays (head, prototypes); NOTE: SecAgg+'s limit")
    parser.add_argument("state_dir", metavar="STATE_DIR", help="a site's state directory (pedseg-client --state-dir)")
    parser.set_defaults(func=audit)
