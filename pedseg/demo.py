"""`make demo`: synthetic pediatric joint data -> a real Flower federation on loopback (one SuperLink, one
SuperNode per joint) -> per-bone Dice table per site; then the same data and budget trained centrally, and the
two mean Dice side by side.

Data is generated once into OUT/data and reused; every demo run gets a new run directory OUT/runs/<time>
(the federation in it, the centralized run in its `centralized/`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pedseg.cli import main as pedseg

JOINTS = ("ankle", "knee", "shoulder")


def run(args: list[str]) -> None:
    print("\n$ pedseg " + " ".join(args), flush=True)
    status = pedseg(args)
    if status:
        sys.exit(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo", help="demo folder (data/ and runs/ inside)")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--train", type=int, default=8, help="training cases per joint")
    parser.add_argument("--test", type=int, default=3, help="test cases per joint")
    args = parser.parse_args()

    out = Path(args.out)
    data = out / "data"
    if not all((data / j / "dataset.json").is_file() for j in JOINTS):
        run(["data", "synth", str(data), "--train", str(args.train), "--test", str(args.test), "--seed", "0"])
    run(["data", "check", *(str(data / j) for j in JOINTS)])
    run_dir = out / "runs" / time.strftime("%Y%m%d-%H%M%S")
    sites = [a for j in JOINTS for a in ("--data", f"{j}={data / j}")]
    started = time.perf_counter()
    run(["federate", "--local", *sites, "--scheme", "multi-domain", "--strategy", "fedavg", "--preset", args.preset,
         "--out", str(run_dir)])
    federated_min = (time.perf_counter() - started) / 60
    started = time.perf_counter()
    run(["train", *sites, "--scheme", "multi-domain", "--preset", args.preset, "--out", str(run_dir / "centralized")])
    centralized_min = (time.perf_counter() - started) / 60
    federated = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))["mean_dice"]
    centralized = json.loads((run_dir / "centralized" / "results.json").read_text(encoding="utf-8"))["mean_dice"]
    ratio = f"{federated / centralized:.3f}" if federated is not None and centralized else "n/a"
    print(f"\nmean Dice: federated {_dice(federated)} ({federated_min:.1f} min), centralized on the same data and "
          f"budget {_dice(centralized)} ({centralized_min:.1f} min): federated / centralized = {ratio}")


def _dice(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
