"""The run directory of the contract: config.yaml, metrics.jsonl, checkpoints/, results.json (and tensorboard/:
every record and the results mirrored to the trackers of `pedseg_core.tracking`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pedseg_core.atomic_files import write_atomically
from pedseg_core.config import PedsegConfig, config_from_dict, load_yaml, save_yaml
from pedseg_core.errors import PedsegError
from pedseg_core.tracking import Tracker
from pedseg_core.train.metrics_line import MetricsLine, json_safe, metrics_line

CONFIG_FILE = "config.yaml"  # the run's resolved configuration
METRICS_FILE = "metrics.jsonl"  # one `MetricsLine` per round, epoch or event
LAUNCH_FILE = "federation.json"  # `pedseg federate --local`: its sites, their data and how they ran


def write_json(path: Path, value: Any) -> None:
    """Atomic write (temporary file, then rename) of strict JSON."""
    text = json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def recorded_config(run_dir: Path) -> PedsegConfig:
    """The resolved configuration a run keeps in its config.yaml (a resumed run continues with it)."""
    return config_from_dict(load_yaml(Path(run_dir) / CONFIG_FILE))


class RunDir:
    """A new run directory; refuses one that already holds a run's files, so no result is overwritten."""

    CONTRACT_FILES = (CONFIG_FILE, METRICS_FILE, "results.json", "checkpoints")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tracker: Tracker | None = None  # opened by create and reopen

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def create(self, cfg: PedsegConfig) -> RunDir:
        if self.path.exists() and (not self.path.is_dir() or any((self.path / f).exists()
                                                                 for f in self.CONTRACT_FILES)):
            raise PedsegError(f"{self.path}: already holds a run; choose a new --out")
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, self.path / CONFIG_FILE)
        self.tracker = Tracker(self.path, cfg)
        return self

    def reopen(self, cfg: PedsegConfig, metrics_bytes: int) -> RunDir:
        """The run directory of a run that continues: its config.yaml must be `cfg` (the same settings), and
        metrics.jsonl is cut back to its first `metrics_bytes` bytes (the rounds that completed). The tracking
        settings may differ (they change no result)."""
        recorded = recorded_config(self.path).to_dict()
        differ = sorted(f"{section}.{key}" for section, values in cfg.to_dict().items() if section != "tracking"
                        for key, value in (values.items() if isinstance(values, dict) else [("", values)])
                        if (recorded[section].get(key) if key else recorded[section]) != value)
        if differ:
            raise PedsegError(f"{self.path / CONFIG_FILE}: the run to continue was started with other settings "
                              f"({', '.join(differ)}); resume it with its own run config")
        if self.metrics_path.exists():
            with self.metrics_path.open("r+b") as f:
                f.truncate(metrics_bytes)
        self.tracker = Tracker(self.path, cfg, resumed=True)
        return self

    def log(self, record: MetricsLine | dict[str, Any]) -> None:
        """Append one line to metrics.jsonl, typed by `MetricsLine` (flushed at once, so progress survives a
        crash)."""
        line = metrics_line(record)
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(line.to_json() + "\n")
        if self.tracker is not None:
            self.tracker.log(line.values())

    def metrics_bytes(self) -> int:
        """The length of metrics.jsonl so far (a resumed run continues after it)."""
        return self.metrics_path.stat().st_size if self.metrics_path.exists() else 0

    def write_results(self, results: dict[str, Any]) -> None:
        """results.json, the end of a run: the trackers get the results, then close."""
        write_json(self.path / "results.json", results)
        if self.tracker is not None:
            self.tracker.results(results, self.path / "results.json")
        self.close()

    def close(self) -> None:
        """Close the trackers (at the latest at exit: a run without results counts as failed in MLflow)."""
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
