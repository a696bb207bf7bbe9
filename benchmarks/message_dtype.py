"""What fp16 messages (`federation.message_dtype: fp16`) save and what they cost in Dice.

Bytes: the same loopback federation (`pedseg federate --local`, TLS, three sites, `demo` preset,
`multi-domain`) with fp32 and with fp16 messages, one after the other; Flower's own count of the bytes that
crossed the SuperLink each way (`flwr ls`), per site and round (the last round's separate evaluation included),
against the size of the fp32 shared weights. Dice: the federated `full` scheme on the reproduction data
(`small` preset, Flower's simulation engine, one site per joint) with fp32 and with fp16 messages.

    python benchmarks/message_dtype.py [--data DIR] [--out DIR] [--rounds 3] [--skip-dice]

Without --data, the reproduction data is synthesized (`pedseg data synth DIR --seed 0`, as `make reproduce`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from synthetic_data import synthesized

from flower_common.run_config import config_from_run_config
from simulations.local import federate_local
from simulations.simulation import federate_simulation

JOINTS = ("ankle", "knee", "shoulder")
DTYPES = ("fp32", "fp16")


def traffic(out: Path, rounds: int, dtype: str) -> dict:
    """MB per site and round, each way, of a loopback federation, and the fp32 shared weights' MB."""
    data = synthesized(out / "bytes-data", "--train", "8", "--test", "3")
    run = out / f"bytes-{dtype}"
    federate_local({j: data / j for j in JOINTS}, run,
                   config_from_run_config({"preset": "demo", "scheme": "multi-domain", "rounds": rounds,
                                           "message-dtype": dtype}), progress=False)
    count = json.loads((run / "logs" / "run-status.json").read_text(encoding="utf-8"))["network-traffic"]
    shared = torch.load(run / "checkpoints" / "global_final.pt", weights_only=True)["shared_state_dict"]
    per = len(JOINTS) * rounds * 1e6
    # Flower counts from the SuperLink's side: inbound = what the sites sent, outbound = what they received
    return {"up": count["inbound-bytes"] / per, "down": count["outbound-bytes"] / per,
            "shared": sum(v.numel() * 4 for v in shared.values()) / 1e6}


def dice(data: Path, out: Path, dtype: str) -> dict:
    config = {"preset": "small", "scheme": "full", "strategy": "fedavg", "rounds": 0,
              "per-case-metrics": True, "message-dtype": dtype}
    return federate_simulation({j: data / j for j in JOINTS}, out / f"dice-{dtype}", config_from_run_config(config),
                               progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a folder with ankle/, knee/, shoulder/ (default: synthesized)")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-dice", action="store_true", help="measure the bytes only")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pedseg-bench-messages-"))
    out.mkdir(parents=True, exist_ok=True)
    sizes = {d: traffic(out, args.rounds, d) for d in DTYPES}
    shared = sizes["fp32"]["shared"]
    print(f"bytes: multi-domain, preset demo, 3 sites, {args.rounds} rounds, `pedseg federate --local`; "
          f"fp32 shared weights {shared:.1f} MB; {out}")
    print("| messages | MB per site and round, site -> server (x fp32 shared) | server -> site (x fp32 shared) |")
    print("|---|---|---|")
    for d, s in sizes.items():
        print(f"| {d} | {s['up']:.1f} ({s['up'] / shared:.2f}x) | {s['down']:.1f} ({s['down'] / shared:.2f}x) |")
    if args.skip_dice:
        return
    data = args.data or synthesized(out / "data")
    runs = {d: dice(data, out, d) for d in DTYPES}
    print("\nDice: federated full (FedAvg), preset small, reproduction data")
    print("| messages | " + " | ".join(JOINTS) + " | mean Dice |")
    print("|---|" + "---|" * (len(JOINTS) + 1))
    for d, r in runs.items():
        print(f"| {d} | " + " | ".join(f"{r['sites'][j]['mean_dice']:.3f}" for j in JOINTS) +
              f" | **{r['mean_dice']:.3f}** |", flush=True)


if __name__ == "__main__":
    main()
