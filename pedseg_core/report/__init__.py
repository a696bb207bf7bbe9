"""`pedseg report RUN`: one self-contained HTML page (figures as data: URIs, no script, no external file) for a
federated, centralized or reproduction run folder, read from the files the run wrote."""

from __future__ import annotations

from pathlib import Path

from pedseg_core.report.html import page
from pedseg_core.report.reproduction import is_reproduction, read_reproduction
from pedseg_core.report.run_files import read_run
from pedseg_core.report.sections import reproduction_sections, run_sections

REPORT_FILE = "report.html"


def write_report(run_dir: Path, out: Path | None = None, data: dict[str, Path] | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default RUN/report.html, replaced: a report is derived) and
    return its path. `data` (site or joint -> dataset folder) finds the test images of a run that recorded no
    data paths. PedsegError (one line) when `run_dir` is not a pedseg run."""
    run_dir = Path(run_dir)
    if is_reproduction(run_dir):
        html = page(f"pedseg reproduction {run_dir.name}", reproduction_sections(read_reproduction(run_dir)))
    else:
        run = read_run(run_dir, data)
        html = page(f"pedseg {run.kind} run {run_dir.name}", run_sections(run))
    out = Path(out) if out is not None else run_dir / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
