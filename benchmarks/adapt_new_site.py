"""A hospital that did not take part (issue 15 part 6): `pedseg adapt` on 2 and on 5 of its labelled cases against
the same joint's site inside the federation, all scored on the same held-out test cases.

The held-out phantoms (`simulations.heldout_phantoms --seed 7`: 24 training and 8 test cases per joint) are split
for the knee: the federation's knee site holds the first half of the knee training cases, the left-out hospital
the other half (it never takes part). A federation (`full`, FedAvg, Flower's simulation engine, the `small`
preset) trains over ankle, knee and shoulder; then the left-out hospital adapts the federation's final shared
weights (`global_final.pt`) with its first 2 and first 5 cases (filters frozen, and fine-tuned), and each model is
scored on the 8 knee test cases, as is the federation's own knee site (its results.json entry).

    python benchmarks/adapt_new_site.py [--steps 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from flower_common.run_config import config_from_run_config
from pedseg_core.data.nnunet import DATASET_JSON, read_dataset, read_dataset_json, write_dataset_json
from pedseg_core.train.adapt import adapt_site
from simulations.simulation import federate_simulation

JOINTS = ("ankle", "knee", "shoulder")
LEFT_OUT = "knee"


def split_joint(dataset: Path, inside: Path, outside: Path) -> None:
    """The joint's training cases halved between the federation's site and the left-out hospital; both keep the
    joint's test cases."""
    cases = read_dataset(dataset).train
    half = len(cases) // 2
    for target, part in ((inside, cases[:half]), (outside, cases[half:])):
        if (target / DATASET_JSON).is_file():
            continue
        shutil.copytree(dataset, target, ignore=shutil.ignore_patterns("imagesTr", "labelsTr"))
        for folder in ("imagesTr", "labelsTr"):
            (target / folder).mkdir()
        for case in part:
            shutil.copy2(case.image, target / "imagesTr" / case.image.name)
            shutil.copy2(case.label, target / "labelsTr" / case.label.name)
        write_dataset_json(target, {**read_dataset_json(dataset), "numTraining": len(part)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="adaptation steps")
    parser.add_argument("--out", type=Path, help="keep the data and runs here (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pedseg-bench-"))
    data = out / "data"
    if not (data / "shoulder" / DATASET_JSON).is_file():
        subprocess.run([sys.executable, "-m", "simulations.heldout_phantoms", str(data), "--seed", "7"], check=True,
                       stdout=subprocess.DEVNULL)
    inside, outside = out / f"{LEFT_OUT}-federation", out / f"{LEFT_OUT}-left-out"
    split_joint(data / LEFT_OUT, inside, outside)
    sites = {j: (inside if j == LEFT_OUT else data / j) for j in JOINTS}
    federation = out / "federation"
    if (federation / "results.json").is_file():
        results = json.loads((federation / "results.json").read_text(encoding="utf-8"))
    else:
        results = federate_simulation(sites, federation, config_from_run_config(
            {"preset": "small", "scheme": "full", "strategy": "fedavg"}), progress=False)
    weights = federation / "checkpoints" / "global_final.pt"
    rows = [("federation's own knee site (12 cases, every round)", results["sites"][LEFT_OUT])]
    for cases in (2, 5):
        for tune in (False, True):
            name = f"adapt-{cases}-cases" + ("-fine-tuned" if tune else "")
            run = out / name
            adapted = (
                json.loads((run / "results.json").read_text(encoding="utf-8"))
                if (run / "results.json").is_file()
                else adapt_site(weights, "new-knee", LEFT_OUT, outside, run, args.steps, cases, tune)
            )
            label = f"left-out hospital, {cases} cases, {args.steps} steps, filters " + ("fine-tuned" if tune
                                                                                       else "frozen")
            rows.append((label, adapted["sites"]["new-knee"]))
    inside_dice = rows[0][1]["mean_dice"]
    bones = list(rows[0][1]["dice"])
    print(f"`small` preset, held-out phantoms (seed 7), knee test cases: {rows[0][1]['cases']}\n")
    print("| model | " + " | ".join(bones) + " | mean Dice | / federation's knee site |")
    print("|---" * (len(bones) + 3) + "|")
    for label, site in rows:
        dice = " | ".join(f"{site['dice'][b]:.3f}" for b in bones)
        print(f"| {label} | {dice} | {site['mean_dice']:.3f} | {site['mean_dice'] / inside_dice:.3f} |")
    print(f"\nruns: {out}")


if __name__ == "__main__":
    main()
