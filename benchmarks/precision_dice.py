"""Does `train.precision: auto` keep the results of fp32? The `full` scheme on the reproduction data (`small`
preset), centralized and federated (Flower's simulation engine, one site per joint), once in fp32 and once with
auto, one after the other in one process on the same data and splits. Prints what auto chose on this machine
(and why), each run's mean Dice per joint and overall, and its wall time. With several `--seeds` (`train.seed`:
initialization, sampling, augmentation), each pair runs once per seed and the mean difference auto - fp32 is
printed per mode, so that a gap can be told from run-to-run noise.

    python benchmarks/precision_dice.py [--data DIR] [--out DIR] [--preset small] [--modes centralized,federated]
                                        [--seeds 0,1,2]

Without --data, the reproduction data is synthesized (`pedseg data synth DIR --seed 0`, as `make reproduce`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from synthetic_data import synthesized

from flower_common.run_config import config_from_run_config
from pedseg_core.config import build_config
from pedseg_core.precision import resolve_precision
from pedseg_core.train.centralized import train_centralized
from simulations.simulation import federate_simulation

JOINTS = ("ankle", "knee", "shoulder")


def run(mode: str, precision: str, seed: int, data: Path, out: Path, preset: str) -> dict:
    sites = {j: data / j for j in JOINTS}
    run_dir = out / (f"{mode}-{precision}" if seed == 0 else f"{mode}-{precision}-seed{seed}")
    started = time.perf_counter()
    if mode == "centralized":
        cfg = build_config(preset, overrides={"scheme": "full", "train": {"precision": precision, "seed": seed}})
        results = train_centralized(sites, cfg, run_dir, progress=False)
    else:
        config = {"preset": preset, "scheme": "full", "strategy": "fedavg", "rounds": 0,
                  "overrides": f"train.precision={precision} train.seed={seed}"}
        results = federate_simulation(sites, run_dir, config_from_run_config(config), progress=False)
    return {"mode": mode, "precision": precision, "seed": seed, "results": results,
            "wall_s": time.perf_counter() - started}


def differences(runs: list[dict]) -> list[str]:
    """Per mode: auto - fp32 mean Dice for each seed, and their mean (in Dice points, x100)."""
    lines = []
    for mode in dict.fromkeys(r["mode"] for r in runs):
        dice = {(r["precision"], r["seed"]): r["results"]["mean_dice"] for r in runs if r["mode"] == mode}
        gaps = [100 * (dice["auto", seed] - dice["fp32", seed]) for precision, seed in dice if precision == "fp32"]
        each = ", ".join(f"{g:+.1f}" for g in gaps)
        lines.append(f"{mode}: auto - fp32 = {sum(gaps) / len(gaps):+.2f} Dice points on average ({each}; "
                     f"{len(gaps)} seed(s))")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a folder with ankle/, knee/, shoulder/ (default: synthesized)")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--modes", default="centralized,federated", help="comma-separated: centralized, federated")
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values (default: 0)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if not set(modes) <= {"centralized", "federated"}:
        parser.error(f"--modes: choose among centralized, federated, got {args.modes!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    out = args.out or Path(tempfile.mkdtemp(prefix="pedseg-bench-precision-"))
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or synthesized(out / "data")
    chosen = resolve_precision("auto", False, torch.device("cpu"))
    runs = [run(mode, p, seed, data, out, args.preset) for mode in modes for seed in seeds for p in ("fp32", "auto")]
    print(f"full scheme, preset {args.preset}; auto chose {chosen.describe()}; {out}")
    print("| run | seed | " + " | ".join(JOINTS) + " | mean Dice | wall time |")
    print("|---|---|" + "---|" * (len(JOINTS) + 2))
    for r in runs:
        sites = r["results"]["sites"]
        dice = " | ".join(f"{sites[j]['mean_dice']:.3f}" for j in JOINTS)
        print(f"| {r['mode']} {r['precision']} | {r['seed']} | {dice} | **{r['results']['mean_dice']:.3f}** | "
              f"{r['wall_s'] / 60:.1f} min |", flush=True)
    print()
    print("\n\n".join(differences(runs)))


if __name__ == "__main__":
    main()
