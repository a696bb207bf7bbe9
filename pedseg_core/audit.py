"""A site's audit log (`STATE_DIR/audit.jsonl`, 0600, one JSON line per message that left the site, written by
its ClientApp) and reading it back: a summary per run and round, with what deserves a data-protection officer's
look. Flagged (`pedseg audit` exits 1): an image-sized array the site did not receive, per-case metrics, a
request the site's policy refused (its error reply names the policy item: `pedseg_core.train.request_bounds`).
To look at (listed, not flagged): an evaluation over fewer than MIN_CASES cases, a run folder (federation-run)
not seen earlier in the log or returned to after another, arrays beyond the shared weights that the policy
granted (the joint's head, the prototypes), and, for a run that used SecAgg+, what it does not protect against."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from pedseg_core.errors import PedsegError
from pedseg_core.private_dirs import PRIVATE_FILE_MODE
from pedseg_core.protocol import HEAD, PROTOTYPES
from pedseg_core.train.request_bounds import REFUSAL

AUDIT_FILE = "audit.jsonl"
MIN_CASES = 2  # an evaluation over fewer cases is one patient's metrics
GRANTED = {HEAD: "the joint's head", PROTOTYPES: "prototypes"}
SECURE_AGGREGATION_LIMIT = (
    "SecAgg+ hides each site's update from an honest-but-curious server only: the server relays the sites' public "
    "keys unauthenticated, so a server that lies in the key exchange can unmask a site's update")


def append_line(path: Path, line: dict) -> None:
    """One JSON line appended to the audit log `path`, which is created, or kept, readable by its owner only
    (0600)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        os.fchmod(descriptor, PRIVATE_FILE_MODE)
        os.write(descriptor, (json.dumps(line, default=str) + "\n").encode("utf-8"))
    finally:
        os.close(descriptor)


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
    """What in one message needs a look and fails the audit: image-sized arrays, per-case metrics, a refusal."""
    found = [f"image-sized array {a['record']}/{a['key']} {a['shape']}" for a in line.get("arrays", [])
             if a.get("image_sized")]
    if line.get("per_case"):
        found.append("per-case metrics")
    if REFUSAL in str(line.get("error", "")):
        found.append("a request outside the site's policy (refused)")
    return found


def notes(line: dict) -> list[str]:
    """What in one message a reviewer should look at: an evaluation over few cases, granted arrays."""
    found = []
    cases = line.get("cases")
    if isinstance(cases, int) and cases < MIN_CASES:
        found.append(f"an evaluation over {cases} case(s) (fewer than {MIN_CASES}: one patient's metrics)")
    granted = sorted({a["record"] for a in line.get("arrays", []) if a["record"] in GRANTED})
    found.extend(f"granted: {GRANTED[record]} ({record}) left the site" for record in granted)
    return found


def _megabytes(arrays: list[dict]) -> float:
    return sum(int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize for a in arrays) / 1e6


def _request(line: dict) -> str:
    values = line.get("request", {}).get("values")
    if not values:
        return ""
    shown = ("scheme", "train.batch_size", "train.steps_per_epoch", "train.learning_rate", "data.image_size")
    return "; request: " + ", ".join(f"{k}={values[k]}" for k in shown if k in values)


def summarize_audit(lines: list[dict]) -> tuple[list[str], int]:
    """(readable summary lines per run and round, number of flagged messages)."""
    by_run: dict[str, list[dict]] = defaultdict(list)
    for line in lines:
        by_run[str(line.get("federation_run", line.get("run")))].append(line)
    out, flagged, looked = [], 0, 0
    returned, seen, previous = set(), set(), None  # messages of a run folder the log had left for another
    for line in lines:
        run = str(line.get("federation_run", line.get("run")))
        if run in seen and run != previous:
            returned.add(id(line))
        seen.add(run)
        previous = run
    for index, (run, messages) in enumerate(by_run.items()):
        flower_runs = sorted({str(m.get("run")) for m in messages})
        out.append(f"run {run} (Flower run{'s' if len(flower_runs) > 1 else ''} {', '.join(flower_runs)}): "
                   f"{len(messages)} messages left this site")
        if index > 0:
            looked += 1
            out.append(f"  LOOK: a new run folder (federation-run {run}), not seen earlier in this log")
        if any(m.get("secure_aggregation") for m in messages):
            out.append(f"  NOTE: {SECURE_AGGREGATION_LIMIT}")
        for m in messages:
            where = f"  round {m['round'] if m.get('round') is not None else '-':>3} {m['type']:<8}"
            if "error" in m:
                out.append(f"{where} error reply: {m['error']}")
            else:
                records = sorted({a["record"] for a in m["arrays"]})
                metrics = sorted({k for record in m["metrics"].values() for k in record})
                config = sorted({k for record in m["config"].values() for k in record})
                out.append(f"{where} {len(m['arrays'])} arrays ({_megabytes(m['arrays']):.1f} MB"
                           f"{': ' + ', '.join(records) if records else ''}); metrics: {', '.join(metrics) or '-'}; "
                           f"values: {', '.join(config) or '-'}{_request(m)}")
            if found := flags(m):
                flagged += 1
                out.extend(f"{where} FLAG: {f}" for f in found)
            if id(m) in returned:
                looked += 1
                out.append(f"{where} LOOK: back in run folder {run} after another run's messages")
            if found := notes(m):
                looked += 1
                out.extend(f"{where} LOOK: {f}" for f in found)
    out.append(f"{flagged} flagged message(s)" if flagged else "nothing flagged: no image-sized array, no per-case "
               "metrics, no refused request left this site")
    if looked:
        out.append(f"{looked} item(s) to look at (LOOK: few-case evaluations, new or resumed run folders, "
                   "granted arrays)")
    return out, flagged
