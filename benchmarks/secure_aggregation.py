"""What secure aggregation (SecAgg+) costs per round: the same loopback federation (`pedseg federate --local`,
TLS, SuperNode keys, three sites) without and with `--secure-aggregation`, one after the other in one process,
on the same data. Prints per run: the mean round time (rounds 2 on: round 1 pays the first imports), the time
the SecAgg+ stages took, the bytes that crossed the SuperLink per round (Flower's own count, `flwr ls`), the
mean Dice, and the largest difference between the two runs' final global weights.

    python benchmarks/secure_aggregation.py [--preset demo] [--rounds 3] [--scheme multi-domain] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from synthetic_data import synthesized

from flower_common.run_config import config_from_run_config
from pedseg_core.train.metrics_line import read_metrics
from simulations.local import federate_local

JOINTS = ("ankle", "knee", "shoulder")


def run(name: str, data: Path, out: Path, args: argparse.Namespace, secure: bool) -> dict:
    config = {"preset": args.preset, "scheme": args.scheme, "rounds": args.rounds,
              "secure-aggregation": secure}
    started = time.perf_counter()
    results = federate_local({j: data / j for j in JOINTS}, out / name, config_from_run_config(config), progress=False)
    wall = time.perf_counter() - started
    rounds = [line for line in read_metrics(out / name / "metrics.jsonl") if line.is_round]
    status = json.loads((out / name / "logs" / "run-status.json").read_text(encoding="utf-8"))
    return {"name": name, "dice": results["mean_dice"], "wall_s": wall,
            "round_s": statistics.mean(r.round_time_s for r in rounds[1:] or rounds),
            "secagg_s": statistics.mean(r.secure_aggregation["seconds"] for r in rounds) if secure else 0.0,
            "mb_per_round": status["network-traffic"]["total-bytes"] / len(rounds) / 1e6,
            "final": torch.load(out / name / "checkpoints" / "global_final.pt",
                                weights_only=True)["shared_state_dict"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scheme", default="multi-domain")
    parser.add_argument("--out", type=Path, help="keep the data and runs here (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pedseg-bench-secagg-"))
    data = synthesized(out / "data", "--train", "8", "--test", "3")
    plain, secure = run("plain", data, out, args, False), run("secagg", data, out, args, True)
    gap = max(float((plain["final"][k].double() - secure["final"][k].double()).abs().max()) for k in plain["final"])
    print(f"{args.scheme}, preset {args.preset}, 3 sites, {args.rounds} rounds, `pedseg federate --local`; {out}")
    print("| run | round time | of which SecAgg+ stages | MB per round (all sites, both ways) | mean Dice |")
    print("|---|---|---|---|---|")
    for r in (plain, secure):
        print(f"| {r['name']} | {r['round_s']:.1f} s ({r['round_s'] / plain['round_s']:.2f}x) | "
              f"{r['secagg_s']:.1f} s | {r['mb_per_round']:.0f} ({r['mb_per_round'] / plain['mb_per_round']:.2f}x) | "
              f"{r['dice']:.3f} |")
    print(f"largest difference between the two runs' final global weights: {gap:.2e} (training noise included: "
          "the runs are not bit-identical)")


if __name__ == "__main__":
    main()
