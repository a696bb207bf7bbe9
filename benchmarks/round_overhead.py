"""Orchestration overhead and bytes on the wire of a loopback federation (real SuperLink and SuperNodes).

For each round: round time (server side) against the longest site's pure training time (the local loop,
without data loading and process start); and the bytes each site sends per round (Flower's own traffic count
for the run) against the size of the shared parameters. "max client s" is the longest ClientApp handler
(set-up, training, saving private state); the rest of a round is Flower's messaging, polling and process
start. Targets: overhead <= 15% of the round time with the small preset, bytes <= 1.05x the shared parameters.

The network is the paper's ResNet-34 U-Net at 128x128 (95 MB of shared weights) unless --backbone says otherwise.

    python benchmarks/round_overhead.py [--preset small] [--backbone resnet34] [--rounds 3] [--steps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from pedseg_core.config import build_config, parse_overrides
from pedseg_core.data.synth import synthesize
from pedseg_core.model.partition import split_state_dict
from pedseg_core.model.unet import MultiDomainUNet
from simulations.local import federate_local

JOINTS = ("ankle", "knee", "shoulder")


def shared_bytes(preset: str, overrides: list[str]) -> int:
    cfg = build_config(preset, overrides=parse_overrides(overrides))
    shared, _ = split_state_dict(MultiDomainUNet([4], cfg.model))
    return sum(v.numel() * v.element_size() for v in shared.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--backbone", default="resnet34", help="resnet10 | resnet18 | resnet34")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150,
                        help="local steps per round (150: the fixed Flower cost per round stays near 10%%)")
    parser.add_argument("--cases", type=int, default=4, help="training cases per site")
    parser.add_argument("--out", help="keep the data and run here (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pedseg-bench-"))
    data = synthesize(work / "data", JOINTS, args.cases, 1, seed=0)
    steps = args.steps
    overrides = [f"train.steps_per_epoch={steps}", f"model.backbone={args.backbone}", "data.image_size=128",
                 "model.decoder_channels=[256,128,64,32,16]"]
    config = {"preset": args.preset, "num-server-rounds": args.rounds, "evaluate-every": args.rounds,
              "overrides": " ".join(overrides)}
    federate_local(data, work / "run", config)

    lines = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    print(f"{args.preset} preset, {len(JOINTS)} sites, {steps} local steps per round; the last round also "
          "evaluates and is left out of the overhead figures")
    print(f"{'round':>5} {'round s':>8} {'max train s':>11} {'max load s':>10} {'max client s':>12} "
          f"{'overhead':>9}")
    shares = []
    for line in lines:
        train = max(s["train-time-s"] for s in line["sites"].values())
        load = max(s["load-time-s"] for s in line["sites"].values())
        client = max(s.get("client-time-s", float("nan")) for s in line["sites"].values())
        share = 1 - train / line["round_time_s"]
        if line["round"] < args.rounds:
            shares.append(share)
        print(f"{line['round']:>5} {line['round_time_s']:>8.1f} {train:>11.1f} {load:>10.1f} {client:>12.1f} "
              f"{share:>9.1%}")
    if shares:
        print(f"orchestration overhead (median over training-only rounds): {statistics.median(shares):.1%} "
              "of the round time (target <= 15%)")

    status = json.loads((work / "run" / "logs" / "run-status.json").read_text())
    traffic = status["network-traffic"]
    size = shared_bytes(args.preset, overrides)
    per_site_round = traffic["inbound-bytes"] / (args.rounds * len(JOINTS))
    print(f"shared parameters: {size / 1e6:.2f} MB; sent by a site per round (train + evaluate replies, as "
          f"counted by the SuperLink): {per_site_round / 1e6:.2f} MB = {per_site_round / size:.3f}x "
          "(target <= 1.05x)")
    print(f"received by a site per round: {traffic['outbound-bytes'] / (args.rounds * len(JOINTS)) / 1e6:.2f} MB "
          "(train message each round, plus the evaluate message of the last round)")
    print(f"run folder: {work}")


if __name__ == "__main__":
    main()
