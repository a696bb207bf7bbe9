"""The reproduction's PNG figures: Dice per round per site of the federated cells, box plots per bone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pedseg_core.train.metrics_line import read_metrics  # noqa: E402
from simulations.report import CaseScore  # noqa: E402


def dice_per_round(metrics_files: list[Path]) -> dict[str, dict[int, list[float]]]:
    """site -> round -> the site's mean Dice in each given metrics.jsonl (one per fold) that evaluated it."""
    curves: dict[str, dict[int, list[float]]] = {}
    for path in metrics_files:
        for line in read_metrics(path):
            for site, result in line.site_evaluations.items():
                if result.get("mean_dice") is not None:
                    curves.setdefault(site, {}).setdefault(line.round, []).append(result["mean_dice"])
    return curves


def plot_rounds(runs: dict[str, list[Path]], references: dict[str, dict[str, float]], out: Path) -> None:
    """One panel per federated cell: each site's mean Dice against the round (averaged over folds), and as a
    dashed line of the same colour its joint's mean Dice under the centralized scheme (`references`: cell ->
    joint -> Dice)."""
    cells = [c for c in runs if dice_per_round(runs[c])]
    if not cells:
        return
    cols = min(3, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, cell in zip(axes.flat, cells):
        for site, by_round in sorted(dice_per_round(runs[cell]).items()):
            rounds = sorted(by_round)
            line, = ax.plot(rounds, [sum(by_round[r]) / len(by_round[r]) for r in rounds], marker="o", label=site)
            if site in references.get(cell, {}):
                ax.axhline(references[cell][site], color=line.get_color(), linestyle="--", linewidth=1)
        ax.set_title(cell, fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean Dice (dashed: centralized)")
    axes[0][0].legend(fontsize=8)
    for ax in axes.flat[len(cells):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_boxes(rows: Sequence[CaseScore], cells: Sequence[str], out: Path) -> None:
    """One panel per bone: the Dice of its test cases under each cell (blue: centralized, orange: federated)."""
    bones = list(dict.fromkeys((r.joint, r.bone) for r in rows))
    if not bones:
        return
    cols = min(3, len(bones))
    nrows = -(-len(bones) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(0.55 * len(cells) * cols + 1, 3.6 * nrows), squeeze=False)
    for ax, (joint, bone) in zip(axes.flat, bones):
        values = [[r.dice for r in rows if r.cell == c and r.joint == joint and r.bone == bone and r.dice is not None]
                  for c in cells]
        boxes = ax.boxplot(values, tick_labels=list(cells), patch_artist=True)
        for box, cell in zip(boxes["boxes"], cells):
            box.set_facecolor("#9ecae1" if cell.startswith("centralized-") else "#fdae6b")
        ax.set_title(f"{joint} / {bone}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(bones):]:
        ax.axis("off")
    axes[0][0].set_ylabel("Dice")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
