"""Differential privacy's price on the reproduction data: the federated `full` scheme (FedAvg, `small` preset,
one site per joint, Flower's simulation engine) without DP, with epsilon 8 and with epsilon 1, one after the
other in one process, on the same data and splits. All three runs use group norms (DP needs them) and fp32
(DP-SGD trains in fp32), so the only difference is the sites' policy. Prints, per run: mean Dice per joint and
overall, each site's epsilon spent, the sites' local training time per round (and its ratio to the run without
DP) and the run's wall time.

    python benchmarks/dp_dice.py [--data DIR] [--out DIR] [--preset small] [--epsilons 8 1]

Without --data, the reproduction data is synthesized (`pedseg data synth DIR --seed 0`, as `make reproduce`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from synthetic_data import synthesized

from flower_common.run_config import config_from_run_config
from pedseg_core.train.metrics_line import read_metrics
from simulations.simulation import federate_simulation

JOINTS = ("ankle", "knee", "shoulder")
DELTA, CLIP = 1e-5, 1.0


def site_train_seconds(run: Path) -> float:
    """Mean over rounds and sites of the sites' own training time (train-time-s) in one round."""
    lines = read_metrics(run / "metrics.jsonl")
    return statistics.mean(s["train-time-s"] for line in lines if line.is_round for s in line.sites.values())


def run(name: str, data: Path, out: Path, preset: str, epsilon: float | None) -> dict:
    config = config_from_run_config({"preset": preset, "scheme": "full", "strategy": "fedavg", "rounds": 0,
                                     "overrides": "model.norm=group train.precision=fp32", "per-case-metrics": True})
    # the sites plan to spend their lifetime epsilon over this one run's private steps (prior and rounds)
    planned = config.prior.epochs * config.prior.steps_per_epoch + \
        config.federation.num_rounds(config.train) * config.train.steps_per_epoch
    policy = out / f"{name}.yaml"
    dp = (f"dp:\n  epsilon: {epsilon}\n  delta: {DELTA}\n  max_grad_norm: {CLIP}\n  planned_steps: {planned}\n"
          if epsilon else "dp: null\n")
    policy.write_text(dp + "per_case_metrics: true\n", encoding="utf-8")
    started = time.perf_counter()
    results = federate_simulation({j: data / j for j in JOINTS}, out / name, config, progress=False, policy=policy)
    return {"name": name, "results": results, "wall_s": time.perf_counter() - started,
            "train_s": site_train_seconds(out / name)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a folder with ankle/, knee/, shoulder/ (default: synthesized)")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 1.0])
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pedseg-bench-dp-"))
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or synthesized(out / "data")
    runs = [run("no-dp", data, out, args.preset, None)]
    runs += [run(f"epsilon-{e:g}", data, out, args.preset, e) for e in args.epsilons]
    base = runs[0]["train_s"]
    print(f"federated full (FedAvg), preset {args.preset}, group norms, fp32, delta {DELTA:g}, clip {CLIP:g}; {out}")
    print("| run | " + " | ".join(JOINTS) + " | mean Dice | epsilon spent per site | site training s/round "
          "(x no DP) | wall time |")
    print("|---|" + "---|" * (len(JOINTS) + 4))
    for r in runs:
        sites = r["results"]["sites"]
        eps = ", ".join(f"{s} {v['epsilon']:.2f}" for s, v in sites.items() if "epsilon" in v) or "-"
        dice = " | ".join(f"{sites[j]['mean_dice']:.3f}" for j in JOINTS)
        print(f"| {r['name']} | {dice} | **{r['results']['mean_dice']:.3f}** | {eps} | "
              f"{r['train_s']:.1f} ({r['train_s'] / base:.2f}x) | {r['wall_s'] / 60:.1f} min |", flush=True)


if __name__ == "__main__":
    main()
