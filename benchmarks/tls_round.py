"""What TLS and SuperNode authentication cost a round: the same loopback federation (real SuperLink and
SuperNodes, three sites) with `pedseg federate --local`'s default (TLS, registered site keys) and with
`--insecure`, alternated in one process so both see the same machine load.

Few local steps per round, so that Flower's messaging (the shared weights, each way, each round) weighs as much
as it can in the round time: the ratio is an upper bound for rounds that train longer.

    python benchmarks/tls_round.py [--preset small] [--rounds 3] [--steps 5] [--pairs 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from flower_common.run_config import config_from_run_config
from pedseg_core.data.synth import synthesize
from pedseg_core.train.metrics_line import read_metrics
from simulations.local import federate_local

JOINTS = ("ankle", "knee", "shoulder")


def round_times(run: Path) -> list[float]:
    """Round times (server side) of a run, leaving out the last round, which also evaluates."""
    lines = [line for line in read_metrics(run / "metrics.jsonl") if line.is_round]
    return [line.round_time_s for line in lines[:-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="local steps per round")
    parser.add_argument("--pairs", type=int, default=2, help="TLS / insecure runs, alternated")
    parser.add_argument("--out", help="keep the data and runs here (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pedseg-bench-tls-"))
    data = synthesize(work / "data", JOINTS, 4, 1, seed=0)
    config = {"preset": args.preset, "rounds": args.rounds, "evaluate-every": args.rounds,
              "overrides": f"train.steps_per_epoch={args.steps}"}
    rounds: dict[str, list[float]] = {"tls": [], "insecure": []}
    totals: dict[str, list[float]] = {"tls": [], "insecure": []}
    for pair in range(args.pairs):
        for mode in ("tls", "insecure"):
            start = time.monotonic()
            federate_local(data, work / f"{mode}-{pair}", config_from_run_config(config), progress=False,
                           insecure=mode == "insecure")
            totals[mode].append(time.monotonic() - start)
            rounds[mode] += round_times(work / f"{mode}-{pair}")
    print(f"{args.preset} preset, {len(JOINTS)} sites, {args.steps} local steps per round, {args.rounds} rounds, "
          f"{args.pairs} runs each, alternated")
    for mode in ("tls", "insecure"):
        print(f"{mode:>9}: median round {statistics.median(rounds[mode]):.2f} s over {len(rounds[mode])} rounds; "
              f"whole run (start, PKI, registration, rounds, stop) median {statistics.median(totals[mode]):.1f} s")
    ratio = statistics.median(rounds["tls"]) / statistics.median(rounds["insecure"])
    whole = statistics.median(totals["tls"]) / statistics.median(totals["insecure"])
    print(f"TLS + SuperNode authentication / insecure: round time {ratio:.3f}x, whole run {whole:.3f}x")


if __name__ == "__main__":
    main()
