"""Mirror a run's log (metrics.jsonl records, results.json) to experiment trackers: TensorBoard in
RUN/tensorboard/ and, when `tracking.mlflow_uri` is set, MLflow.

Scalar tags (step: the epoch, the round, or for results the run's rounds):
  federated round   train_loss (example-weighted), train/loss/<site>, train/<metric>/<site> (the site's other
                    numeric metrics: seg-loss, train-time-s, epsilon, ...), lr, round_time_s,
                    and on evaluated rounds mean_dice, dice/<site>/mean, dice/<site>/<bone>
  stage line        train/<key>/<stage> (loss, seg_loss, time_s, ...; federated prior: its round), lr/<stage>
  results           results/mean_dice, results/dice/<site>/mean, results/dice/<site>/<bone>
No tag is also the prefix of another (MLflow's file store keeps "a/b" as a file in a folder "a").
Non-finite values (a DP site's missing loss, an undefined Dice) are left out. The learning rate is the one the
records carry: the last step's of the epoch (centralized) or what the sites report (federated, the same
run-wide schedule on every site).

A tracker that fails (an unreachable MLflow server, a full disk) warns one line on stderr and is switched off;
the run and its run directory go on.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from pedseg_core.config import PedsegConfig

Scalars = dict[str, float]


def _name(value: Any) -> str:
    """A tag component both trackers accept (MLflow: letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(value))


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _put(scalars: Scalars, tag: str, value: Any) -> None:
    number = _number(value)
    if number is not None:
        scalars[tag] = number


def _dice(scalars: Scalars, prefix: str, sites: dict[str, dict]) -> None:
    for site, result in sites.items():
        _put(scalars, f"{prefix}/{_name(site)}/mean", result.get("mean_dice"))
        for bone, value in (result.get("dice") or {}).items():
            _put(scalars, f"{prefix}/{_name(site)}/{_name(bone)}", value)


def record_scalars(record: dict[str, Any]) -> tuple[int, Scalars] | None:
    """The step and scalars of one metrics.jsonl record; None for lines without any (events)."""
    scalars: Scalars = {}
    if "stage" in record:  # centralized epochs, the prior's stage, adaptation
        stage = _name(record["stage"])
        for key, value in record.items():
            if key not in ("stage", "epoch", "round"):
                _put(scalars, f"lr/{stage}" if key == "lr" else f"train/{_name(key)}/{stage}", value)
        step = record.get("epoch", record.get("round", 0))
    elif "round" in record and "sites" in record:  # a federated round
        _put(scalars, "train_loss", record.get("train_loss"))
        _put(scalars, "round_time_s", record.get("round_time_s"))
        for site, metrics in record["sites"].items():
            for key, value in metrics.items():
                if key == "lr":  # the same schedule on every site: the first one's
                    _put(scalars, "lr", scalars.get("lr", value))
                elif key != "joint":
                    _put(scalars, f"train/{'loss' if key == 'train-loss' else _name(key)}/{_name(site)}", value)
        evaluation = record.get("evaluation") or {}
        _put(scalars, "mean_dice", evaluation.get("mean_dice"))
        _dice(scalars, "dice", evaluation.get("sites") or {})
        step = record["round"]
    else:
        return None
    return (int(step), scalars) if scalars else None


def results_scalars(results: dict[str, Any]) -> tuple[int, Scalars]:
    """The final Dice of results.json, at the step of the run's last round (or epoch)."""
    scalars: Scalars = {}
    _put(scalars, "results/mean_dice", results.get("mean_dice"))
    _dice(scalars, "results/dice", results.get("sites") or {})
    return int(results.get("rounds") or 0), scalars


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved config as MLflow params: {"train.epochs": "2", ...}."""
    params = {}
    for key, value in values.items():
        if isinstance(value, dict):
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = str(list(value) if isinstance(value, tuple) else value)
    return params


class _TensorBoard:
    name = "TensorBoard"

    def __init__(self, path: Path, cfg: PedsegConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(path / "tensorboard"))
        config = yaml.safe_dump(flat_params(cfg.to_dict()), sort_keys=False)
        self.writer.add_text("config", "\n".join("    " + line for line in config.splitlines()))
        self.writer.flush()

    def log(self, step: int, scalars: Scalars) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # every record on disk at once: a crashed run keeps its curves

    def results(self, step: int, scalars: Scalars, path: Path) -> None:
        self.log(step, scalars)

    def close(self, finished: bool) -> None:
        self.writer.close()


class _MLflow:
    name = "MLflow"

    def __init__(self, path: Path, cfg: PedsegConfig, resumed: bool) -> None:
        uri = cfg.tracking.mlflow_uri
        if uri.startswith("file:"):  # MLflow 3 refuses the file store unless asked; the user asked for it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # an unreachable server: warn soon, not
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")  # after minutes of retries
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(cfg.tracking.mlflow_experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(cfg.tracking.mlflow_experiment))
        run_dir = str(path.resolve())
        found = self.client.search_runs([experiment_id], f"tags.`pedseg.run_dir` = '{run_dir}'",
                                        max_results=1) if resumed and "'" not in run_dir else []
        if found:  # a resumed run continues its MLflow run
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(experiment_id, run_name=path.name,
                                     tags={"pedseg.run_dir": run_dir, "pedseg.scheme": cfg.scheme})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flat_params(cfg.to_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, step: int, scalars: Scalars) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, value in scalars.items()]
        for start in range(0, len(metrics), 1000):  # and at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def results(self, step: int, scalars: Scalars, path: Path) -> None:
        self.log(step, scalars)
        try:  # a server may take metrics but not artifacts: the run is still closed as FINISHED
            self.client.log_artifact(self.run_id, str(path))
        except Exception as err:  # noqa: BLE001 - tracking must never end a run
            print(f"pedseg: warning: MLflow did not take results.json as an artifact: {_first_line(err)}",
                  file=sys.stderr, flush=True)

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "FAILED")


class Tracker:
    """The trackers of one run: TensorBoard (unless tracking.tensorboard is off) and MLflow (when
    tracking.mlflow_uri is set). Every call is safe: a tracker that fails warns once and is dropped."""

    def __init__(self, path: Path, cfg: PedsegConfig, resumed: bool = False) -> None:
        self.backends: list[Any] = []
        self.finished = False
        if cfg.tracking.tensorboard:
            self._open(_TensorBoard, path, cfg)
        if cfg.tracking.mlflow_uri:
            self._open(_MLflow, path, cfg, resumed)
        atexit.register(self.close)  # a run that ends without results: MLflow marks it FAILED

    def _open(self, backend: type, *args: Any) -> None:
        try:
            self.backends.append(backend(*args))
        except Exception as err:  # noqa: BLE001 - tracking must never end a run
            self._warn(backend.name, err)

    @staticmethod
    def _warn(name: str, err: Exception) -> None:
        print(f"pedseg: warning: {name} tracking is off for this run: {_first_line(err)}", file=sys.stderr, flush=True)

    def _each(self, method: str, *args: Any) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as err:  # noqa: BLE001 - tracking must never end a run
                self.backends.remove(backend)
                self._warn(backend.name, err)

    def log(self, record: dict[str, Any]) -> None:
        scalars = record_scalars(record)
        if scalars is not None:
            self._each("log", *scalars)

    def results(self, results: dict[str, Any], path: Path) -> None:
        self._each("results", *results_scalars(results), path)
        self.finished = True

    def close(self) -> None:
        atexit.unregister(self.close)
        self._each("close", self.finished)
        self.backends = []
