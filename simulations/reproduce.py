"""`pedseg reproduce`: the paper's ablation, centralized and federated, on identical splits, with statistics.

Cells: the six centralized schemes; the federated `multi-domain`, `contrastive` and `full` schemes with FedAvg
and FedProx (Flower's simulation engine, one virtual SuperNode per joint); the federated `shared` scheme with
plain FedAvg (the peer baseline: what a stock Flower or NVIDIA FLARE MONAI example does). Every cell of a fold
trains with the same preset and the same train/test split (`data.folds`/`data.fold`; with one fold, the
datasets' labelsTs). A federated cell's sites keep their own evaluation split, which no run config sets
(`pedseg_core.train.request_bounds`): a reproduction with federated cells runs one fold and the default split.
Its virtual sites run the reproduction's own policy (the data is the researcher's): per-case metrics, every
federated scheme and the researcher's training settings allowed. Layout of OUT:

    reproduce.json            the settings (a re-run with other settings is refused)
    site-policy.yaml          the federated cells' site policy
    runs/fold-F/<cell>/       each cell's run directory (config.yaml, metrics.jsonl, checkpoints/, results.json)
    cells.jsonl               one line per finished cell: seconds and mean Dice
    results.md / .csv / .json, cases.csv, dice_per_round.png, dice_boxplots.png

A re-run resumes: finished cells (results.json present) are read, not recomputed; an interrupted cell's
directory is removed and the cell runs again. The cells behind the issue's claims (individual, full, federated
full) run first.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from pedseg_core.config import (
    DEFAULT_PRESET,
    FEDERATED_SCHEMES,
    SCHEMES,
    DataConfig,
    PedsegConfig,
    build_config,
    laid_over,
    parse_overrides,
)
from pedseg_core.data.validate import check_dataset
from pedseg_core.errors import DatasetError, PedsegError
from pedseg_core.policy import SitePolicy
from pedseg_core.train.centralized import train_centralized
from pedseg_core.train.run_dir import write_json
from simulations import plots, report
from simulations.simulation import federate_simulation


@dataclass(frozen=True)
class Cell:
    """One training run of the table: a scheme, centralized or federated (with a strategy)."""

    scheme: str
    strategy: str | None = None  # None: centralized

    @property
    def name(self) -> str:
        return f"centralized-{self.scheme}" if self.strategy is None else f"federated-{self.scheme}-{self.strategy}"


CELLS = ([Cell(s) for s in SCHEMES]
         + [Cell(s, strategy) for s in ("multi-domain", "contrastive", "full") for strategy in ("fedavg", "fedprox")]
         + [Cell("shared", "fedavg")])


# Run first, so the claims (full vs individual, federated vs centralized full) show early.
FIRST = ("centralized-individual", "centralized-full", "federated-full-fedavg")


def select_cells(names: Sequence[str] | None) -> list[Cell]:
    """All cells, or the named ones (in table order); unknown names are refused."""
    if not names:
        return list(CELLS)
    known = {c.name: c for c in CELLS}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise PedsegError(f"unknown cell(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return [c for c in CELLS if c.name in names]


def _settings_guard(out: Path, settings: dict) -> None:
    """Write OUT/reproduce.json, or check that an existing one holds the same settings."""
    path = out / "reproduce.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise PedsegError(f"{path}: this folder holds a reproduction with other settings "
                              f"({', '.join(changed)} differ); choose a new --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def fold_config(preset: str, config_file: Path | None, overrides: dict, folds: int, fold: int,
                cell: Cell | None = None) -> PedsegConfig:
    """The configuration of a fold (and of one of its cells: its scheme and strategy), resolved from the
    reproduction's preset, YAML file and overrides."""
    values = laid_over(overrides, {"data": {"folds": folds, "fold": fold}})
    if cell is not None:
        values = laid_over(values, {"scheme": cell.scheme, **({"federation": {"strategy": cell.strategy}}
                                                               if cell.strategy else {})})
    return build_config(preset, config_file, overrides=values)


# The researcher's own data: per-case metrics (the paired tests), every federated scheme, any training settings
RESEARCH_POLICY = SitePolicy(per_case_metrics=True, allowed_schemes=FEDERATED_SCHEMES, min_batch_size=1,
                             min_local_steps=1, max_learning_rate=1.0, require_augmentation=False)


def require_sites_split(configs: list[PedsegConfig], plan: list[Cell]) -> None:
    """A reproduction with federated cells evaluates every cell on the split its sites keep (one fold, the
    default hold-out or labelsTs): a run config cannot give sites another one, so other splits are refused."""
    own = DataConfig()
    if any(c.strategy for c in plan) and any((c.data.folds, c.data.validation_fraction)
                                             != (own.folds, own.validation_fraction) for c in configs):
        raise PedsegError("--folds and data.validation_fraction: federated cells evaluate on each site's own split, "
                          "which a federation's run config never sets; run them with --folds 1 and the default "
                          "split, or choose centralized cells only with --cells")


def _run_cell(cell: Cell, data: dict[str, Path], run_dir: Path, cfg: PedsegConfig, policy: Path) -> dict:
    if cell.strategy is None:
        return train_centralized(data, cfg, run_dir)
    cfg = cfg.model_copy(deep=True)
    cfg.federation.per_case_metrics = True
    return federate_simulation(data, run_dir, cfg, policy=policy)


def reproduce(data: dict[str, Path], out: Path, preset: str = DEFAULT_PRESET, folds: int = 1,
              overrides: Sequence[str] = (), cells: Sequence[str] | None = None,
              config_file: Path | None = None) -> dict:
    """Run (or resume) every cell of every fold, each configured from `preset`, the YAML `config_file` and the
    `overrides` ("section.key=value"), then write the report; returns results.json's content."""
    problems = [p for path in data.values() for p in check_dataset(Path(path)).problems]
    if problems:
        raise DatasetError(list(data.values()), problems)
    plan = select_cells(cells)
    asked = parse_overrides(list(overrides))
    configs = [fold_config(preset, config_file, asked, folds, fold) for fold in range(folds)]  # checked first
    require_sites_split(configs, plan)
    # The resolved configuration (what the preset and options mean in this version of pedseg) is part of the
    # settings: a folder trained with another version's preset is refused, not resumed into a mixed table.
    resolved = {k: v for k, v in configs[0].to_dict().items() if k not in ("scheme", "tracking")}
    resolved["data"] = {k: v for k, v in resolved["data"].items() if k != "fold"}
    settings = {"data": {j: str(Path(p).resolve()) for j, p in data.items()}, "preset": preset, "folds": folds,
                "overrides": list(overrides), "cells": [c.name for c in plan],
                "config": json.loads(json.dumps(resolved))}  # as reproduce.json holds it (tuples as lists)
    if config_file is not None:
        settings["config_file"] = str(Path(config_file).resolve())
    _settings_guard(out, settings)
    policy = out / "site-policy.yaml"
    policy.write_text(yaml.safe_dump(RESEARCH_POLICY.model_dump(mode="json")), encoding="utf-8")

    total, started = folds * len(plan), time.perf_counter()
    order = sorted(plan, key=lambda c: c.name not in FIRST)  # stable: otherwise the table's order
    for fold in range(folds):
        for index, cell in enumerate(order):
            step = fold * len(plan) + index + 1
            run_dir = out / "runs" / f"fold-{fold}" / cell.name
            label = f"[{step}/{total}] fold {fold + 1}/{folds} {cell.name}"
            if (run_dir / "results.json").is_file():
                print(f"{label}: finished earlier, kept", flush=True)
                continue
            if run_dir.exists():  # interrupted earlier: its partial files are this reproduction's own
                shutil.rmtree(run_dir)
            print(f"\n{label} (elapsed {_minutes(time.perf_counter() - started)})", flush=True)
            cell_start = time.perf_counter()
            results = _run_cell(cell, data, run_dir, fold_config(preset, config_file, asked, folds, fold, cell),
                                policy)
            seconds = time.perf_counter() - cell_start
            with (out / "cells.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"fold": fold, "cell": cell.name, "seconds": round(seconds, 1),
                                    "mean_dice": results["mean_dice"]}) + "\n")
            dice = "–" if results["mean_dice"] is None else f"{results['mean_dice']:.3f}"
            print(f"{label}: mean Dice {dice} in {_minutes(seconds)}", flush=True)
    return write_report(out, settings, plan)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def command_line(settings: dict) -> str:
    data = " ".join(f"--data {j}={p}" for j, p in settings["data"].items())
    sets = " ".join([*([f"--config {settings['config_file']}"] if "config_file" in settings else []),
                     *(f"--set {o}" for o in settings["overrides"])])
    return f"pedseg reproduce {data} --out OUT --preset {settings['preset']} --folds {settings['folds']} {sets}".strip()


def write_report(out: Path, settings: dict, plan: list[Cell]) -> dict:
    """results.md/.csv/.json, cases.csv and the two figures, from the cells' results.json files."""
    names = [c.name for c in plan]
    rows = []
    for fold in range(settings["folds"]):
        for name in names:
            results = json.loads((out / "runs" / f"fold-{fold}" / name / "results.json").read_text(encoding="utf-8"))
            rows += report.case_scores(name, fold, results)
    content = report.build_report(rows, names)
    lines = (out / "cells.jsonl").read_text(encoding="utf-8").splitlines() if (out / "cells.jsonl").is_file() else []
    seconds = {(t["fold"], t["cell"]): t["seconds"] for t in map(json.loads, lines)}  # a re-run cell: its last
    compute = sum(seconds.get((fold, name), 0.0) for fold in range(settings["folds"]) for name in names)
    content["settings"], content["compute_seconds"] = settings, compute
    write_json(out / "results.json", content)
    report.write_csv(out / "results.csv", content["summary"])
    report.write_csv(out / "cases.csv", content["cases"])
    n_cases = len({(r.fold, r.joint, r.case) for r in rows})
    header = (f"## Reproduction: preset `{settings['preset']}`, {settings['folds']} fold(s), {n_cases} test cases\n\n"
              f"`{command_line(settings)}`\n\nTraining and evaluation time of the cells: {_minutes(compute)}.")
    (out / "results.md").write_text(report.markdown(content, names, header), encoding="utf-8")
    federated = {n: [out / "runs" / f"fold-{f}" / n / "metrics.jsonl" for f in range(settings["folds"])]
                 for n in names if n.startswith("federated-")}
    references = {n: report.joint_means(rows, report.centralized_counterpart(n)) for n in federated}
    plots.plot_rounds(federated, references, out / "dice_per_round.png")
    plots.plot_boxes(rows, names, out / "dice_boxplots.png")
    return content
