"""Reading a site's audit log (`STATE_DIR/audit.jsonl`, written by the site's ClientApp for every message
that left it): a summary per run and round, with what deserves a data-protection officer's look flagged: an
image-sized array the site did not receive, per-case metrics, and a request the site's policy refused (its error
reply names the policy item: `pedseg_core.train.request_bounds`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from pedseg_core.errors import PedsegError
from pedseg_core.train.request_bounds import REFUSAL

AUDIT_FILE = "audit.jsonl"


def read_audit(state_dir: Path) -> list[dict]:
    """The audit log's lines, in order; PedsegError naming the file when it is missing or not JSON lines."""
    path = Path(state_dir) / AUDIT_FILE
    if not path.is_file():
        raise PedsegError(f"{path}: no audit log (is {state_dir} a site's state directory?)")
    lines = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            lines.append(json.loads(text))
        except ValueError:
            raise PedsegError(f"{path}: line {number} is not JSON") from None
    return lines


def flags(line: dict) -> list[str]:
    """What in one message needs a look: image-sized arrays, per-case metrics."""
    found = [f"image-sized array {a['record']}/{a['key']} {a['shape']}" for a in line.get("arrays", [])
             if a.get("image_sized")]
    if line.get("per_case"):
        found.append("per-case metrics")
    return found


def _megabytes(arrays: list[dict]) -> float:
    return sum(int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize for a in arrays) / 1e6


def summarize_audit(lines: list[dict]) -> tuple[list[str], int]:
    """(readable summary lines per run and round, number of flagged messages)."""
    by_run: dict[str, list[dict]] = defaultdict(list)
    for line in lines:
        by_run[str(line.get("federation_run", line.get("run")))].append(line)
    out, flagged = [], 0
    for run, messages in by_run.items():
        flower_runs = sorted({str(m.get("run")) for m in messages})
        out.append(f"run {run} (Flower run{'s' if len(flower_runs) > 1 else ''} {', '.join(flower_runs)}): "
                   f"{len(messages)} messages left this site")
        for m in messages:
            where = f"  round {m['round'] if m.get('round') is not None else '-':>3} {m['type']:<8}"
            if "error" in m:
                out.append(f"{where} error reply: {m['error']}")
                if REFUSAL in str(m["error"]):
                    flagged += 1
                    out.append(f"{where} FLAG: a request outside the site's policy (refused)")
                continue
            records = sorted({a["record"] for a in m["arrays"]})
            metrics = sorted({k for record in m["metrics"].values() for k in record})
            config = sorted({k for record in m["config"].values() for k in record})
            out.append(f"{where} {len(m['arrays'])} arrays ({_megabytes(m['arrays']):.1f} MB"
                       f"{': ' + ', '.join(records) if records else ''}); metrics: {', '.join(metrics) or '-'}; "
                       f"values: {', '.join(config) or '-'}")
            if found := flags(m):
                flagged += 1
                out.extend(f"{where} FLAG: {f}" for f in found)
    out.append(f"{flagged} flagged message(s)" if flagged else "nothing flagged: no image-sized array, no per-case "
               "metrics left this site")
    return out, flagged
