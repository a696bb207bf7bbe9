"""Plain-text tables of results for the terminal."""

from __future__ import annotations


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(results: dict) -> str:
    """One row per site and bone: Dice, HD95 (mm), ASSD (mm); a mean row per site and overall."""
    rows = [f"{'site':<12} {'bone':<12} {'Dice':>6} {'HD95 mm':>8} {'ASSD mm':>8}"]
    for site, r in results["sites"].items():
        for bone, dice in r["dice"].items():
            rows.append(f"{site:<12} {bone:<12} {_fmt(dice, 3):>6} {_fmt(r['hd95'][bone], 2):>8} "
                        f"{_fmt(r['assd'][bone], 2):>8}")
        rows.append(f"{site:<12} {'mean':<12} {_fmt(r['mean_dice'], 3):>6}   ({r['cases']} cases)")
    rows.append(f"{'all sites':<12} {'mean':<12} {_fmt(results.get('mean_dice'), 3):>6}")
    return "\n".join(rows)


def evaluation_table(report: dict) -> str:
    """Per bone mean Dice, HD95, ASSD of a `pedseg evaluate` report."""
    mean = report["mean"]
    rows = [f"{'bone':<12} {'Dice':>6} {'HD95 mm':>8} {'ASSD mm':>8}"]
    for bone in report["labels"]:
        rows.append(f"{bone:<12} {_fmt(mean['dice'][bone], 3):>6} {_fmt(mean['hd95'][bone], 2):>8} "
                    f"{_fmt(mean['assd'][bone], 2):>8}")
    rows.append(f"{'mean':<12} {_fmt(report['mean_dice'], 3):>6}   ({len(report['cases'])} cases)")
    return "\n".join(rows)
