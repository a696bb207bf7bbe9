"""Per-bone Dice, HD95 and ASSD (mm) of a 3D label volume, via monai.metrics.

Conventions: a bone absent from both prediction and reference is not scored (None); a bone present in only
one of them has Dice 0 and no surface distance (None). Means skip None values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

METRICS = ("dice", "hd95", "assd")


def _finite_or_none(value: torch.Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def case_metrics(pred: np.ndarray, ref: np.ndarray, bones: dict[str, int],
                 spacing: tuple[float, ...]) -> dict[str, dict[str, float | None]]:
    """pred, ref: [X, Y, Z] integer label volumes; bones: name -> label value; spacing: mm per axis.

    Returns {"dice": {bone: v}, "hd95": {bone: mm}, "assd": {bone: mm}}.
    """
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        return _case_metrics(pred, ref, bones, spacing)


def _case_metrics(pred: np.ndarray, ref: np.ndarray, bones: dict[str, int],
                  spacing: tuple[float, ...]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {m: {} for m in METRICS}
    spacing = tuple(float(s) for s in spacing[: pred.ndim])
    for bone, value in bones.items():
        p = torch.from_numpy(np.asarray(pred) == value)[None, None]
        r = torch.from_numpy(np.asarray(ref) == value)[None, None]
        p_any, r_any = bool(p.any()), bool(r.any())
        if not p_any and not r_any:
            out["dice"][bone] = out["hd95"][bone] = out["assd"][bone] = None
            continue
        out["dice"][bone] = float(compute_dice(p, r, include_background=True))
        if p_any and r_any:
            out["hd95"][bone] = _finite_or_none(
                compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing))
            out["assd"][bone] = _finite_or_none(
                compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                 spacing=spacing))
        else:
            out["hd95"][bone] = out["assd"][bone] = None
    return out


def mean_or_none(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarize(cases: dict[str, dict[str, dict[str, float | None]]], bones: Iterable[str]) -> dict:
    """Per-bone means over cases of each metric, plus "mean_dice" (mean over bones of the per-bone Dice)."""
    bones = list(bones)
    summary = {m: {b: mean_or_none(c[m][b] for c in cases.values()) for b in bones} for m in METRICS}
    summary["mean_dice"] = mean_or_none(summary["dice"].values())
    return summary
