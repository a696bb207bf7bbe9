"""`pedseg audit`: what left a site, per run and round."""

from __future__ import annotations

import argparse
from pathlib import Path


def audit(args: argparse.Namespace) -> int:
    from pedseg_core.audit import read_audit, summarize_audit

    lines, flagged = summarize_audit(read_audit(Path(args.state_dir)))
    print("\n".join(lines))
    return 1 if flagged else 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("audit", help="what left a site, per run and round, from STATE_DIR/audit.jsonl; exit 1 "
                            "when an image-sized array or per-case metrics left it")
    parser.add_argument("state_dir", metavar="STATE_DIR", help="a site's state directory (pedseg-client --state-dir)")
    parser.set_defaults(func=audit)
