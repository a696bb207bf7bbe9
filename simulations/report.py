"""The reproduction's evidence from its cells' results.json files: per-bone mean ± std of Dice, HD95 and ASSD,
paired Wilcoxon signed-rank tests of `full` against every other cell, federated / centralized ratios, written
as results.md, results.csv (the summary), cases.csv (every test case and bone) and results.json."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import wilcoxon

METRICS = ("dice", "hd95", "assd")
REFERENCES = ("centralized-full", "federated-full-fedavg")  # the cells `full` is tested from
ACCEPTANCE_RATIO = 0.97  # issue 5: federated full reaches at least this share of centralized full's Dice


@dataclass(frozen=True)
class CaseScore:
    """One bone of one test case as one cell segmented it."""

    cell: str
    fold: int
    joint: str
    case: str
    bone: str
    dice: float | None
    hd95: float | None
    assd: float | None


def case_scores(cell: str, fold: int, results: dict) -> list[CaseScore]:
    """A results.json (centralized or federated; sites named by joint or split into `<joint>-k`) -> rows."""
    rows = []
    for site in results["sites"].values():
        for case, metrics in site.get("per_case", {}).items():
            for bone in metrics["dice"]:
                rows.append(CaseScore(cell, fold, site["joint"], case, bone,
                                      *(metrics[m].get(bone) for m in METRICS)))
    return rows


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return None, None, 0
    return float(np.mean(kept)), float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0, len(kept)


def case_means(rows: Sequence[CaseScore], cell: str) -> dict[tuple[int, str, str], float]:
    """(fold, joint, case) -> the case's Dice averaged over its bones, for one cell."""
    by_case: dict[tuple[int, str, str], list[float]] = {}
    for r in rows:
        if r.cell == cell and r.dice is not None:
            by_case.setdefault((r.fold, r.joint, r.case), []).append(r.dice)
    return {k: float(np.mean(v)) for k, v in by_case.items()}


def joint_means(rows: Sequence[CaseScore], cell: str) -> dict[str, float]:
    """joint -> a cell's mean over the joint's test cases (all folds) of the case's Dice over its bones."""
    per_joint: dict[str, list[float]] = {}
    for (_, joint, _), value in case_means(rows, cell).items():
        per_joint.setdefault(joint, []).append(value)
    return {joint: float(np.mean(v)) for joint, v in per_joint.items()}


def mean_dice(rows: Sequence[CaseScore], cell: str) -> float | None:
    """A cell's mean Dice: per joint the mean over its test cases (all folds), then the mean over joints."""
    per_joint = joint_means(rows, cell)
    return float(np.mean(list(per_joint.values()))) if per_joint else None


def summary(rows: Sequence[CaseScore], cells: Sequence[str]) -> list[dict]:
    """Per cell and bone: n and mean/std of every metric over the test cases (HD95/ASSD where defined)."""
    bones = sorted({(r.joint, r.bone) for r in rows}, key=lambda jb: (jb[0], _first_index(rows, jb)))
    table = []
    for cell in cells:
        for joint, bone in bones:
            picked = [r for r in rows if r.cell == cell and r.joint == joint and r.bone == bone]
            if not picked:
                continue
            entry = {"cell": cell, "joint": joint, "bone": bone, "n": len(picked)}
            for metric in METRICS:
                mean, std, _ = _mean_std([getattr(r, metric) for r in picked])
                entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean, std
            table.append(entry)
    return table


def _first_index(rows: Sequence[CaseScore], joint_bone: tuple[str, str]) -> int:
    """Bones keep their dataset.json order within a joint."""
    return next(i for i, r in enumerate(rows) if (r.joint, r.bone) == joint_bone)


def paired_tests(rows: Sequence[CaseScore], cells: Sequence[str]) -> list[dict]:
    """Two-sided paired Wilcoxon signed-rank test of each reference cell against every other cell, over the
    test cases both segmented (per case: Dice averaged over its bones). p = 1 when every difference is 0."""
    tests = []
    for reference in (r for r in REFERENCES if r in cells):
        ref = case_means(rows, reference)
        for other in cells:
            if other == reference:
                continue
            theirs = case_means(rows, other)
            keys = sorted(set(ref) & set(theirs))
            if not keys:
                continue
            diff = np.array([ref[k] - theirs[k] for k in keys])
            if np.allclose(diff, 0.0):
                statistic, p = 0.0, 1.0
            else:
                result = wilcoxon([ref[k] for k in keys], [theirs[k] for k in keys])
                statistic, p = float(result.statistic), float(result.pvalue)
            tests.append({"reference": reference, "other": other, "n": len(keys),
                          "mean_difference": float(diff.mean()), "statistic": statistic, "p_value": p})
    return tests


def centralized_counterpart(cell: str) -> str:
    """"federated-full-fedprox" -> "centralized-full"."""
    return "centralized-" + cell.removeprefix("federated-").rsplit("-", 1)[0]


def federated_ratios(rows: Sequence[CaseScore], cells: Sequence[str]) -> list[dict]:
    """Each federated cell's mean Dice over the centralized cell of the same scheme."""
    ratios = []
    for cell in cells:
        if not cell.startswith("federated-"):
            continue
        central = centralized_counterpart(cell)
        fed, ref = mean_dice(rows, cell), mean_dice(rows, central) if central in cells else None
        ratios.append({"cell": cell, "centralized": central, "federated_dice": fed, "centralized_dice": ref,
                       "ratio": fed / ref if fed is not None and ref else None})
    return ratios


def acceptance(rows: Sequence[CaseScore], cells: Sequence[str]) -> list[dict]:
    """The issue's two claims, each with the figures it rests on."""
    checks = []
    central = mean_dice(rows, "centralized-full") if "centralized-full" in cells else None
    for cell in ("federated-full-fedavg", "federated-full-fedprox"):
        if cell in cells and central:
            fed = mean_dice(rows, cell)
            checks.append({"claim": f"{cell} >= {ACCEPTANCE_RATIO} x centralized-full",
                           "value": fed / central if fed is not None else None,
                           "met": fed is not None and fed >= ACCEPTANCE_RATIO * central})
    for mode in ("centralized", "federated"):
        full, individual = f"{mode}-full" + ("-fedavg" if mode == "federated" else ""), "centralized-individual"
        if full in cells and individual in cells:
            a, b = mean_dice(rows, full), mean_dice(rows, individual)
            checks.append({"claim": f"{full} >= {individual}", "value": None if a is None or b is None else a - b,
                           "met": a is not None and b is not None and a >= b})
    return checks


def build_report(rows: Sequence[CaseScore], cells: Sequence[str]) -> dict:
    return {"mean_dice": {c: mean_dice(rows, c) for c in cells}, "summary": summary(rows, cells),
            "wilcoxon": paired_tests(rows, cells), "federated_over_centralized": federated_ratios(rows, cells),
            "acceptance": acceptance(rows, cells), "cases": [asdict(r) for r in rows]}


def write_csv(path, records: Sequence[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else [])
        writer.writeheader()
        writer.writerows(records)


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    return "–" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(report: dict, cells: Sequence[str], header: str) -> str:
    """results.md: the command and settings, one table per metric (cells x bones), the tests and ratios."""
    entries = report["summary"]
    bones = list(dict.fromkeys((e["joint"], e["bone"]) for e in entries))
    lines = [header, ""]
    for metric, title, digits in (("dice", "Dice", 3), ("hd95", "HD95 (mm)", 1), ("assd", "ASSD (mm)", 2)):
        lines += [f"### {title}, mean ± std over test cases", "",
                  "| cell | " + " | ".join(f"{j}/{b}" for j, b in bones) + (" | mean Dice |" if metric == "dice"
                                                                                 else " |"),
                  "|---" * (len(bones) + 1 + (metric == "dice")) + "|"]
        for cell in cells:
            by_bone = {(e["joint"], e["bone"]): e for e in entries if e["cell"] == cell}
            values = [_fmt(by_bone[b][f"{metric}_mean"], by_bone[b][f"{metric}_std"], digits) if b in by_bone
                      else "–" for b in bones]
            if metric == "dice":
                mean = report["mean_dice"][cell]
                values.append("–" if mean is None else f"**{mean:.3f}**")
            lines.append(f"| {cell} | " + " | ".join(values) + " |")
        lines.append("")
    lines += ["### Paired Wilcoxon signed-rank tests (two-sided; per test case, Dice averaged over its bones)", "",
              "| reference | other | n | mean Dice difference | p-value |", "|---|---|---|---|---|"]
    lines += [f"| {t['reference']} | {t['other']} | {t['n']} | {t['mean_difference']:+.4f} | {t['p_value']:.3g} |"
              for t in report["wilcoxon"]]
    lines += ["", "### Federated / centralized mean Dice", "", "| federated cell | centralized cell | ratio |",
              "|---|---|---|"]
    lines += [f"| {r['cell']} | {r['centralized']} | " + ("–" if r["ratio"] is None else f"{r['ratio']:.3f}") + " |"
              for r in report["federated_over_centralized"]]
    lines += ["", "### Claims", "", "| claim | value | met |", "|---|---|---|"]
    lines += [f"| {c['claim']} | " + ("–" if c["value"] is None else f"{c['value']:.3f}") +
              f" | {'yes' if c['met'] else 'no'} |" for c in report["acceptance"]]
    return "\n".join(lines) + "\n"
