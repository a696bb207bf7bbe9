"""Largest-component post-processing on the held-out data of `make reproduce-heldout`: HD95, ASSD and Dice per
bone before and after, for centralized `full` and federated `full` (FedAvg, Flower's simulation engine).

Trains the two cells with `pedseg reproduce` (the `small` preset, the held-out phantoms of
`simulations.heldout_phantoms --seed 7`), then loads each joint's model (centralized: the run's final.pt; federated:
the site's personalized model.pt) and predicts every test case once, scoring the raw prediction and the same
prediction post-processed by the largest-component rule and by pedseg's default (islands under a tenth of the bone
removed, `evaluate/postprocess.py`). Targets (issue 15): federated `full` mean HD95 within 1.5x of centralized
`full` after post-processing, and no bone's Dice lower after than before.

    python benchmarks/postprocess_heldout.py [--data DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pedseg_core.data.loading import read_case
from pedseg_core.data.nnunet import read_dataset
from pedseg_core.evaluate.metrics import case_metrics, mean_or_none
from pedseg_core.evaluate.postprocess import MIN_FRACTION, keep_largest_components
from pedseg_core.evaluate.predict import predict_volume
from pedseg_core.model.checkpoint import find_domain, load_checkpoint
from simulations.reproduce import reproduce

JOINTS = ("ankle", "knee", "shoulder")
CELLS = ("centralized-full", "federated-full-fedavg")


def heldout_data(data: Path) -> Path:
    if not (data / "shoulder" / "dataset.json").is_file():
        subprocess.run([sys.executable, "-m", "simulations.heldout_phantoms", str(data), "--seed", "7"], check=True,
                       stdout=subprocess.DEVNULL)
    return data


def model_of(cell_dir: Path, joint: str) -> Path:
    if cell_dir.name.startswith("centralized"):
        return cell_dir / "checkpoints" / "final.pt"
    (path,) = sorted((cell_dir / "sites").glob(f"{joint}*/run-*/model.pt"))
    return path


RULES = {"raw": None, "largest only": 1.0, f"default ({MIN_FRACTION})": MIN_FRACTION}  # rule -> min_fraction
METRICS = ("dice", "hd95", "assd")


def score(cell_dir: Path, data: Path) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{rule: {metric: {"joint bone": [per case values]}}} for one cell's models on the test cases."""
    scores = {rule: {m: {} for m in METRICS} for rule in RULES}
    for joint in JOINTS:
        model, cfg, domains = load_checkpoint(model_of(cell_dir, joint))
        domain = find_domain(domains, joint, cell_dir)
        dataset = read_dataset(data / joint)
        bones = {b: v for b, v in dataset.labels.items() if v != 0}
        for case in dataset.test:
            image, label, spacing, _ = read_case(case)
            raw = predict_volume(model, domain, image, spacing, cfg.data, cfg.eval.batch_size, largest_component=False)
            for rule, fraction in RULES.items():
                pred = raw if fraction is None else keep_largest_components(raw, bones.values(), fraction)
                for metric, values in case_metrics(pred, label, bones, spacing).items():
                    for bone, value in values.items():
                        if value is not None:
                            scores[rule][metric].setdefault(f"{joint} {bone}", []).append(value)
    return scores


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="held-out phantoms (default: generated into OUT/data)")
    parser.add_argument("--out", type=Path, help="keep the data and runs here (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pedseg-bench-"))
    data = heldout_data(args.data or out / "data")
    training = io.StringIO()  # the epochs' progress stays out of RESULTS.md; each cell's summary line does not
    try:
        with contextlib.redirect_stdout(training):
            reproduce({j: data / j for j in JOINTS}, out / "reproduce", preset="small", cells=CELLS)
    finally:
        print("\n".join(line for line in training.getvalue().splitlines() if line.startswith("[")), "\n")

    scores = {cell: score(out / "reproduce" / "runs" / "fold-0" / cell, data) for cell in CELLS}
    print(f"`small` preset, held-out phantoms (seed 7), {len(JOINTS)} joints; per bone the mean over test cases "
          "(HD95 and ASSD over cases where both prediction and reference hold the bone), Dice / HD95 mm per rule\n")
    lower = []
    for cell in CELLS:
        print(f"{cell}:\n\n| bone | " + " | ".join(RULES) + " |\n" + "|---" * (1 + len(RULES)) + "|")
        for bone in scores[cell]["raw"]["dice"]:
            by_rule = {rule: {m: mean(scores[cell][rule][m].get(bone, [])) for m in METRICS} for rule in RULES}
            print(f"| {bone} | " + " | ".join(f"{v['dice']:.3f} / {v['hd95']:.2f}" for v in by_rule.values()) + " |")
            lower += [f"{cell} {bone} ({rule})" for rule in list(RULES)[1:]
                      if by_rule[rule]["dice"] < by_rule["raw"]["dice"] - 1e-9]
        print()
    summary = {cell: {rule: {m: mean_or_none(mean(v) for v in scores[cell][rule][m].values()) for m in METRICS}
                      for rule in RULES} for cell in CELLS}
    for cell in CELLS:
        print(f"{cell}: " + "; ".join(f"{rule}: mean Dice {v['dice']:.3f}, HD95 {v['hd95']:.2f} mm, ASSD "
                                      f"{v['assd']:.2f} mm" for rule, v in summary[cell].items()))
    for rule in RULES:
        central, federated = (summary[c][rule]["hd95"] for c in CELLS)
        print(f"federated / centralized mean HD95, {rule}: {federated / central:.2f}x (target <= 1.5x after)")
    print(f"bones whose Dice is lower after: {', '.join(lower) if lower else 'none'} (target: none for the default)")
    print(f"runs: {out}")


if __name__ == "__main__":
    main()
