"""A loopback round's fixed cost and bytes on the wire (real SuperLink and SuperNodes, TLS, each site's warm worker).

For each round: round time (server side, from its start to the next round's) against the longest site's pure
training time (the local loop), and against the longest ClientApp handler ("max client s": set-up, the
piggy-backed evaluation, training, saving private state); the rest of a round is Flower's messaging and polling
and the server's work between the replies and the next round (aggregation, its state save). Also the bytes each
site sends per round (Flower's own traffic count) against the size of the shared parameters. Issue 14's setting
by default: the demo network, 3 sites on this machine's cores, 50 local steps; target: the fixed cost <= 10% of a
round.

    python benchmarks/round_overhead.py [--preset demo] [--rounds 10] [--steps 50] [--cases 8] [--message-dtype fp16]
                                          [--unpacked] [--out DIR]

--unpacked runs the same federation a second time with one Flower object per tensor (federation.pack_arrays
off), for the side-by-side figure of what packing saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from flower_common.run_config import config_from_run_config
from pedseg_core.config import build_config, parse_overrides
from pedseg_core.data.synth import synthesize
from pedseg_core.model.partition import split_state_dict
from pedseg_core.model.unet import MultiDomainUNet
from pedseg_core.train.metrics_line import MetricsLine, read_metrics
from simulations.local import federate_local

JOINTS = ("ankle", "knee", "shoulder")


def shared_bytes(preset: str, overrides: list[str]) -> int:
    cfg = build_config(preset, overrides=parse_overrides(overrides))
    shared, _ = split_state_dict(MultiDomainUNet([4], cfg.model))
    return sum(v.numel() * v.element_size() for v in shared.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--rounds", type=int, default=10, help="the median is over rounds 2 to the last but one")
    parser.add_argument("--steps", type=int, default=50, help="local steps per round")
    parser.add_argument("--cases", type=int, default=8, help="training cases per site")
    parser.add_argument("--message-dtype", default="fp16", choices=("fp32", "fp16"),
                        help="the shared weights on the wire (default: fp16, as federation.message_dtype)")
    parser.add_argument("--unpacked", action="store_true",
                        help="also run with federation.pack_arrays=false (one Flower object per tensor), after")
    parser.add_argument("--out", help="keep the data and run here (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pedseg-bench-"))
    data = synthesize(work / "data", JOINTS, args.cases, 1, seed=0)
    print(f"{args.preset} preset, {len(JOINTS)} sites, {args.steps} local steps per round, {args.message_dtype} "
          "messages; the first round (install, import) and the last (evaluation) are left out of the median")
    for pack in (True, False) if args.unpacked else (True,):
        measure(data, work / ("run" if pack else "run-unpacked"), args, pack)


def round_periods(lines: list[MetricsLine]) -> list[float]:
    """Each round's seconds from its start to the next round's (the server's state save between them
    included); the last round's own `round_time_s`."""
    starts = [line.started_at for line in lines]
    return [b - a for a, b in zip(starts, starts[1:])] + [lines[-1].round_time_s]


def measure(data: dict, run: Path, args: argparse.Namespace, pack: bool) -> None:
    """One federation's rounds (its table and medians) and its bytes."""
    overrides = [f"train.steps_per_epoch={args.steps}", f"federation.pack_arrays={str(pack).lower()}"]
    config = {"preset": args.preset, "scheme": "multi-domain", "strategy": "fedavg",
              "message-dtype": args.message_dtype, "rounds": args.rounds, "evaluate-every": args.rounds,
              "overrides": " ".join(overrides)}
    federate_local(data, run, config_from_run_config(config))

    lines = [line for line in read_metrics(run / "metrics.jsonl") if line.is_round]
    print(f"\n{'packed arrays (one Array per record)' if pack else 'unpacked (one Flower object per tensor)'}:")
    print(f"{'round':>5} {'round s':>8} {'max train s':>11} {'max load s':>10} {'max client s':>12} "
          f"{'overhead':>9} {'outside handlers':>16}")
    shares, outside = [], []
    for line, period in zip(lines, round_periods(lines)):
        train = max(s["train-time-s"] for s in line.sites.values())
        load = max(s["load-time-s"] for s in line.sites.values())
        client = max(s.get("client-time-s", float("nan")) for s in line.sites.values())
        share, messaging = 1 - train / period, 1 - client / period
        if 1 < line.round < args.rounds:  # round 1 also installs and imports the app; the last one evaluates
            shares.append(share)
            outside.append(messaging)
        print(f"{line.round:>5} {period:>8.1f} {train:>11.1f} {load:>10.1f} {client:>12.1f} "
              f"{share:>9.1%} {messaging:>16.1%}")
    if shares:
        print(f"fixed cost (median over rounds 2..{args.rounds - 1}): {statistics.median(shares):.1%} of the round "
              f"time beside the training loop, {statistics.median(outside):.1%} outside the sites' handlers "
              "(target <= 10%)")

    status = json.loads((run / "logs" / "run-status.json").read_text(encoding="utf-8"))
    traffic = status["network-traffic"]
    size = shared_bytes(args.preset, overrides)
    per_site_round = traffic["inbound-bytes"] / (args.rounds * len(JOINTS))
    print(f"shared parameters: {size / 1e6:.2f} MB; sent by a site per round (train + evaluate replies, as "
          f"counted by the SuperLink): {per_site_round / 1e6:.2f} MB = {per_site_round / size:.3f}x "
          "(target <= 1.05x)")
    print(f"received by a site per round: {traffic['outbound-bytes'] / (args.rounds * len(JOINTS)) / 1e6:.2f} MB "
          "(train message each round, plus the evaluate message of the last round)")
    print(f"run folder: {run}")


if __name__ == "__main__":
    main()
