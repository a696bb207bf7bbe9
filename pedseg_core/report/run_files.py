"""A run folder (federated or centralized) read into a typed summary: what the report shows, nothing computed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pedseg_core.errors import PedsegError
from pedseg_core.train.metrics_line import MetricsLine, read_metrics
from pedseg_core.train.run_dir import CONFIG_FILE, LAUNCH_FILE, METRICS_FILE

REPRODUCTION_FILE = "reproduce.json"  # `pedseg reproduce`: the settings, the joints' data among them


@dataclass(frozen=True)
class RunFiles:
    """What a run folder holds: its resolved configuration, its log lines, its results (None: unfinished)."""

    path: Path
    kind: str  # "federated" or "centralized"
    config_text: str
    results: dict | None
    rounds: list[MetricsLine] = field(default_factory=list)  # federated: one per round line of metrics.jsonl
    epochs: list[MetricsLine] = field(default_factory=list)  # centralized: one line per epoch of a stage
    prior_rounds: list[MetricsLine] = field(default_factory=list)  # federated `full`: stage 1's lines
    events: list[MetricsLine] = field(default_factory=list)  # federated: "resumed" | "run-ended" lines
    data: dict[str, Path] = field(default_factory=dict)  # site or joint -> dataset folder, where recorded
    data_source: Path | None = None  # the file the data paths were read from
    launch: dict | None = None  # federation.json
    status: dict | None = None  # logs/run-status.json: Flower's account of the run

    @property
    def sites(self) -> list[str]:
        """Every site the results or any round names, sorted."""
        named = set((self.results or {}).get("sites", {}))
        for record in self.rounds:
            named |= record.named_sites | set(record.site_evaluations)
        return sorted(named)

    @property
    def predictions(self) -> Path:
        return self.path / "predictions"


def read_json(path: Path) -> dict:
    """A JSON object from `path`; PedsegError (one line) when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PedsegError(f"{path}: cannot read as JSON ({error})") from None
    if not isinstance(value, dict):
        raise PedsegError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def read_lines(path: Path) -> list[dict]:
    """A JSON-lines file (cells.jsonl): one JSON object per line; PedsegError naming the first bad line."""
    lines = []
    texts = path.read_text(encoding="utf-8").splitlines()
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            if number == len(texts):  # a line being written when the run was read (or killed): left out
                break
            raise PedsegError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(line, dict):
            raise PedsegError(f"{path}:{number}: expected a JSON object, found {type(line).__name__}")
        lines.append(line)
    return lines


def _recorded_data(run_dir: Path) -> tuple[dict[str, Path], Path | None]:
    """The data paths recorded with the run: its own federation.json, that of the run holding it (the demo's
    `centralized/`), or the reproduce.json of the reproduction whose cell it is (OUT/runs/fold-F/<cell>)."""
    candidates = [run_dir / LAUNCH_FILE, run_dir.parent / LAUNCH_FILE]
    if run_dir.parent.name.startswith("fold-") and run_dir.parent.parent.name == "runs":
        candidates.append(run_dir.parent.parent.parent / REPRODUCTION_FILE)
    for path in candidates:
        if path.is_file():
            data = read_json(path).get("data")
            if isinstance(data, dict) and data:
                return {str(k): Path(v) for k, v in data.items()}, path
    return {}, None


def read_run(run_dir: Path, data: dict[str, Path] | None = None) -> RunFiles:
    """The run in `run_dir` (`data`: dataset folders by site or joint, where the run did not record them);
    PedsegError with one line naming the folder and what is missing when it is not a pedseg run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PedsegError(f"{run_dir}: no such run folder")
    config, results = run_dir / CONFIG_FILE, run_dir / "results.json"
    launch = read_json(run_dir / LAUNCH_FILE) if (run_dir / LAUNCH_FILE).is_file() else None
    if not config.is_file() and launch is None:
        raise PedsegError(f"{run_dir}: not a pedseg run: no config.yaml (nor {LAUNCH_FILE} or {REPRODUCTION_FILE})")
    lines = read_metrics(run_dir / METRICS_FILE)  # none yet: a run stopped before its first round or epoch
    result = read_json(results) if results.is_file() else None
    status_file = run_dir / "logs" / "run-status.json"
    federated = ((result or {}).get("mode") == "federated" or launch is not None
                 or any(x.round is not None for x in lines))
    recorded, source = ({k: Path(v) for k, v in data.items()}, None) if data else _recorded_data(run_dir)
    return RunFiles(
        path=run_dir,
        kind="federated" if federated else "centralized",
        config_text=config.read_text(encoding="utf-8") if config.is_file() else
        f"(no {CONFIG_FILE}: the run stopped before its server started)",
        results=result,
        rounds=[x for x in lines if x.is_round],
        epochs=[x for x in lines if x.is_epoch],
        prior_rounds=[x for x in lines if x.is_prior_round],
        events=[x for x in lines if x.event is not None],
        data=recorded,
        data_source=source,
        launch=launch,
        status=read_json(status_file) if status_file.is_file() else None,
    )
