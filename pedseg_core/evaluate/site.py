"""Evaluation of one domain's model on its labeled evaluation cases -> a `results.json` site entry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from pedseg_core.config import PedsegConfig
from pedseg_core.data.loading import read_case
from pedseg_core.data.nnunet import FILE_ENDING, Case, label_file
from pedseg_core.evaluate.metrics import case_metrics, summarize
from pedseg_core.evaluate.predict import predict_volume
from pedseg_core.model.unet import MultiDomainUNet


def evaluate_site(model: MultiDomainUNet, domain: int, joint: str, cases: Sequence[Case],
                  bones: dict[str, int], cfg: PedsegConfig, pred_dir: Path | None = None,
                  label_lut: np.ndarray | None = None) -> dict:
    """{"joint", "cases": K, "dice": {bone: v}, "hd95": {...}, "assd": {...}, "mean_dice": v,
    "per_case": {case: {metric: {bone: v}}}}; writes the predicted NIfTIs into `pred_dir` when given.
    `label_lut` maps the model's classes to the joint's label values (the shared scheme's union head)."""
    per_case = {}
    for case in cases:
        image, label, spacing, affine = read_case(case)
        pred = predict_volume(model, domain, image, spacing, cfg.data, cfg.eval.batch_size,
                              cfg.eval.largest_component, cfg.eval.component_min_fraction)
        if label_lut is not None:
            pred = label_lut[pred]
        per_case[case.case_id] = case_metrics(pred, label, bones, spacing)
        if pred_dir is not None:
            pred_dir.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(pred.astype(np.uint8), affine),
                     str(pred_dir / label_file(case.case_id, FILE_ENDING)))
    summary = summarize(per_case, bones)
    return {"joint": joint, "cases": len(cases), "dice": summary["dice"], "hd95": summary["hd95"],
            "assd": summary["assd"], "mean_dice": summary["mean_dice"], "per_case": per_case}
