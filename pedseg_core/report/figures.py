"""The report's figures as PNG bytes: matplotlib on the Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from pedseg_core.data.montage import LABEL_COLOURS, OVERLAY_ALPHA
from pedseg_core.report.overlays import Overlay
from pedseg_core.train.metrics_line import MetricsLine

DPI = 90
STATUS_COLOURS = {"trained": "#4daf4a", "missing": "#bdbdbd", "rejected": "#ff7f00", "error": "#e41a1c"}


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _panels(count: int, width: float = 4.0, height: float = 3.0, cols: int = 3) -> tuple[Figure, list]:
    cols = min(cols, count)
    rows = -(-count // cols)
    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = list(figure.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[count:]:
        ax.set_axis_off()
    return figure, axes[:count]


def _round_axis(ax, ylabel: str) -> None:
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def dice_per_round(rounds: Sequence[MetricsLine]) -> bytes | None:
    """First panel: each site's mean Dice per evaluated round; then one panel per site with its bones."""
    evaluated = [r for r in rounds if r.site_evaluations]
    if not evaluated:
        return None
    sites = sorted({s for r in evaluated for s in r.site_evaluations})
    figure, axes = _panels(len(sites) + 1)
    for site in sites:
        points = [(r.round, r.site_evaluations[site].get("mean_dice")) for r in evaluated
                  if site in r.site_evaluations]
        axes[0].plot(*zip(*[(x, np.nan if y is None else y) for x, y in points]), marker="o", label=site)
    axes[0].set_title("mean Dice per site", fontsize=9)
    for ax, site in zip(axes[1:], sites):
        bones = list(dict.fromkeys(b for r in evaluated for b in (r.site_evaluations.get(site, {}).get("dice") or {})))
        for bone in bones:
            points = [(r.round, (r.site_evaluations[site].get("dice") or {}).get(bone)) for r in evaluated
                      if site in r.site_evaluations]
            ax.plot(*zip(*[(x, np.nan if y is None else y) for x, y in points]), marker=".", label=bone)
        ax.set_title(f"{site}: Dice per bone", fontsize=9)
    for ax in axes:
        _round_axis(ax, "Dice")
        ax.set_ylim(0, 1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(figure)


def training_per_round(rounds: Sequence[MetricsLine]) -> bytes | None:
    """Each site's training loss per round (DP sites send none), and where DP is on, the epsilon each site had
    spent; None when the rounds carry neither."""
    losses = {s: [(r.round, float(r.sites[s]["train-loss"])) for r in rounds
                  if r.sites.get(s, {}).get("train-loss") is not None]
              for s in sorted({s for r in rounds for s in r.sites})}
    losses = {s: points for s, points in losses.items() if points}
    spent = {s: [(r.round, r.epsilon[s]) for r in rounds if s in r.epsilon]
             for s in sorted({s for r in rounds for s in r.epsilon})}
    panels = [(title, ylabel, series) for title, ylabel, series in
              (("training loss per site", "loss", losses), ("epsilon spent per site (DP)", "epsilon", spent)) if series]
    if not panels:
        return None
    figure, axes = _panels(len(panels), width=5.0)
    for ax, (title, ylabel, series) in zip(axes, panels):
        for site, points in series.items():
            ax.plot(*zip(*points), marker=".", label=site)
        ax.set_title(title, fontsize=9)
        _round_axis(ax, ylabel)
        ax.legend(fontsize=7)
    return _png(figure)


def _status(record: MetricsLine, site: str) -> str | None:
    if site in record.sites:
        return "trained"
    for status, events in (("error", record.errors), ("rejected", record.rejected), ("missing", record.missing)):
        if any(e.site == site for e in events):
            return status
    return None


def timeline(rounds: Sequence[MetricsLine], sites: Sequence[str]) -> bytes | None:
    """Rounds along the run's time (their logged seconds, end to end): one row per site, coloured by what the
    site did in each round; evaluated rounds marked above."""
    if not rounds:
        return None
    timed = all(r.round_time_s is not None for r in rounds)  # else (a line without round_time_s) one unit per round
    figure = Figure(figsize=(10, 0.45 * len(sites) + 1.6), layout="constrained")
    ax = figure.subplots()
    start = 0.0
    for record in rounds:
        width = float(record.round_time_s) if timed else 1.0
        for row, site in enumerate(sites):
            status = _status(record, site)
            if status:
                ax.barh(row, width, left=start, color=STATUS_COLOURS[status], edgecolor="white", linewidth=0.8)
        if record.site_evaluations:
            ax.plot(start + width, len(sites) - 0.4, marker="v", color="#377eb8")
        start += width
    ax.set_yticks(range(len(sites)), list(sites))
    ax.set_ylim(-0.6, len(sites) - 0.1)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first round (round_time_s, summed)" if timed else "rounds")
    handles = [Patch(color=c, label=s) for s, c in STATUS_COLOURS.items()]
    handles.append(Line2D([], [], marker="v", color="#377eb8", linestyle="", label="evaluated"))
    figure.legend(handles=handles, fontsize=7, ncol=5, loc="outside lower center")
    return _png(figure)


def loss_per_epoch(epochs: Sequence[MetricsLine]) -> bytes | None:
    """A centralized run's training loss per epoch, one line per stage."""
    stages: dict[str, list[tuple[int, float]]] = {}
    for line in epochs:
        loss = (line.model_extra or {}).get("loss")
        if line.epoch is not None and loss is not None:
            stages.setdefault(str(line.stage or ""), []).append((line.epoch, float(loss)))
    if not stages:
        return None
    figure, (ax,) = _panels(1, width=6.0)
    for stage, points in stages.items():
        ax.plot(*zip(*points), marker=".", label=stage)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(figure)


def bone_boxes(sites: dict[str, dict]) -> bytes | None:
    """One panel per site: per bone, a box plot of its test cases' Dice (with the cases as dots); a site without
    per-case metrics shows its per-bone means as diamonds."""
    shown = {s: r for s, r in sites.items() if r.get("dice")}
    if not shown:
        return None
    figure, axes = _panels(len(shown), width=3.6)
    for ax, (site, result) in zip(axes, shown.items()):
        bones = list(result["dice"])
        per_case = result.get("per_case") or {}
        if per_case:
            values = [[c["dice"][b] for c in per_case.values() if c.get("dice", {}).get(b) is not None] for b in bones]
            ax.boxplot(values, tick_labels=bones)
            for x, column in enumerate(values, start=1):
                ax.plot(np.full(len(column), x) + np.linspace(-0.08, 0.08, len(column)), column, ".",
                        color="#555555", alpha=0.7)
            ax.set_title(f"{site}: {len(per_case)} cases", fontsize=9)
        else:
            means = [np.nan if result["dice"][b] is None else result["dice"][b] for b in bones]
            ax.plot(range(1, len(bones) + 1), means, "D", color="#d62728")
            ax.set_xticks(range(1, len(bones) + 1), bones)
            ax.set_xlim(0.5, len(bones) + 0.5)
            ax.set_title(f"{site}: per-bone means only", fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def overlays(items: Sequence[Overlay]) -> bytes:
    """One row per case: the image, the reference label over it (where there is one), the prediction over it;
    a prediction whose image was not found is shown alone, on black."""
    figure = Figure(figsize=(9, 3.2 * len(items)), layout="constrained")
    axes = figure.subplots(len(items), 3, squeeze=False)
    for (raw, truth_ax, pred_ax), item in zip(axes, items):
        image = item.image if item.image is not None else np.zeros(item.prediction.shape, np.float32)
        low, high = np.percentile(image, (1.0, 99.5)) if item.image is not None else (0.0, 1.0)
        top = max([*item.bones, int(item.prediction.max()), 1])
        colours = ListedColormap([LABEL_COLOURS[(v - 1) % len(LABEL_COLOURS)] for v in range(1, top + 1)])
        panels = [(raw, None, f"{item.site} {item.case}: {item.where}" if item.image is not None
                   else f"{item.site} {item.case}: image not found"),
                  (truth_ax, item.truth, "reference" if item.truth is not None else "no reference"),
                  (pred_ax, item.prediction, "prediction")]
        for ax, label, title in panels:
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=item.aspect, interpolation="nearest")
            if label is not None:
                ax.imshow(np.ma.masked_where(label == 0, label), cmap=colours, vmin=0.5, vmax=top + 0.5,
                          alpha=OVERLAY_ALPHA if item.image is not None else 1.0, aspect=item.aspect,
                          interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
        names = item.bones or {v: f"label {v}" for v in np.unique(item.prediction) if v != 0}
        handles = [Patch(color=colours.colors[int(v) - 1], label=name) for v, name in sorted(names.items())]
        if handles:
            pred_ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.7)
    return _png(figure)
