"""Does `train.precision: auto` keep the results of fp32? The `full` scheme on the reproduction data (`small`
preset), centralized and federated (Flower's simulation engine, one site per joint), once in fp32 and once with
auto, one after the other in one process on the same data and splits. Prints what auto chose on this machine
(and why), each run's mean Dice per joint and overall, and its wall time.

    python benchmarks/precision_dice.py [--data DIR] [--out DIR] [--preset small]

Without --data, the reproduction data is synthesized (`pedseg data synth DIR --seed 0`, as `make reproduce`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from synthetic_data import synthesized

from pedseg_core.config import build_config
from pedseg_core.precision import resolve_precision
from pedseg_core.train.centralized import train_centralized
from simulations.simulation import federate_simulation

JOINTS = ("ankle", "knee", "shoulder")


def run(mode: str, precision: str, data: Path, out: Path, preset: str) -> dict:
    sites = {j: data / j for j in JOINTS}
    started = time.perf_counter()
    if mode == "centralized":
        cfg = build_config(preset, overrides={"scheme": "full", "train": {"precision": precision}})
        results = train_centralized(sites, cfg, out / f"{mode}-{precision}", progress=False)
    else:
        config = {"preset": preset, "scheme": "full", "strategy": "fedavg", "num-server-rounds": 0,
                  "overrides": f"train.precision={precision}"}
        results = federate_simulation(sites, out / f"{mode}-{precision}", config, progress=False)
    return {"name": f"{mode} {precision}", "results": results, "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a folder with ankle/, knee/, shoulder/ (default: synthesized)")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pedseg-bench-precision-"))
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or synthesized(out / "data")
    chosen = resolve_precision("auto", False, torch.device("cpu"))
    runs = [run(mode, p, data, out, args.preset) for mode in ("centralized", "federated") for p in ("fp32", "auto")]
    print(f"full scheme, preset {args.preset}; auto chose {chosen.describe()}; {out}")
    print("| run | " + " | ".join(JOINTS) + " | mean Dice | wall time |")
    print("|---|" + "---|" * (len(JOINTS) + 2))
    for r in runs:
        sites = r["results"]["sites"]
        dice = " | ".join(f"{sites[j]['mean_dice']:.3f}" for j in JOINTS)
        print(f"| {r['name']} | {dice} | **{r['results']['mean_dice']:.3f}** | {r['wall_s'] / 60:.1f} min |",
              flush=True)


if __name__ == "__main__":
    main()
