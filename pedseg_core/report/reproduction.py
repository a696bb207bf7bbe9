"""A `pedseg reproduce` folder read into a typed summary: its settings, its results, its figures and cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pedseg_core.errors import PedsegError
from pedseg_core.report.run_files import REPRODUCTION_FILE, RunFiles, read_json, read_lines, read_run

FIGURES = ("dice_per_round.png", "dice_boxplots.png")  # written by the reproduction with its results
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ReproductionFiles:
    """reproduce.json, results.json (None until every cell has finished), the figures and each cell's run."""

    path: Path
    settings: dict
    results: dict | None
    figures: dict[str, bytes]  # file name -> PNG
    cells: dict[str, RunFiles]  # "fold-F/<cell>" -> its run
    seconds: dict[str, float]  # cell -> training and evaluation time, summed over folds (cells.jsonl)
    notes: list[str]  # cells that could not be read, and why


def is_reproduction(path: Path) -> bool:
    return (Path(path) / REPRODUCTION_FILE).is_file()


def read_reproduction(path: Path) -> ReproductionFiles:
    path = Path(path)
    settings = read_json(path / REPRODUCTION_FILE)
    results = read_json(path / "results.json") if (path / "results.json").is_file() else None
    figures = {name: (path / name).read_bytes() for name in FIGURES if (path / name).is_file()}
    figures = {name: png for name, png in figures.items() if png.startswith(PNG_SIGNATURE)}
    cells, notes = {}, []
    for fold in range(int(settings.get("folds", 1))):
        for cell in settings.get("cells", []):
            run_dir = path / "runs" / f"fold-{fold}" / cell
            if not run_dir.is_dir():
                notes.append(f"fold {fold}, {cell}: not run yet ({run_dir} does not exist)")
                continue
            try:
                cells[f"fold-{fold}/{cell}"] = read_run(run_dir)
            except PedsegError as error:
                notes.append(str(error))
    seconds: dict[str, float] = {}
    if (path / "cells.jsonl").is_file():
        last = {(x["fold"], x["cell"]): x["seconds"] for x in read_lines(path / "cells.jsonl")}  # a re-run: its last
        for (_, cell), value in last.items():
            seconds[cell] = seconds.get(cell, 0.0) + float(value)
    return ReproductionFiles(path, settings, results, figures, cells, seconds, notes)
