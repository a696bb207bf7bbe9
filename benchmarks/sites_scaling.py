"""How a federation's cost grows with the number of sites: Flower simulation rounds with 3, 12 and 30 virtual
sites (each joint's synthetic dataset split into sites).

Reports, per site count: median round time, the server's aggregation time per round, the peak resident memory
of the whole simulation (all processes started for it: SuperLink, Ray and its workers, and `flwr-simulation`,
which runs the ServerApp and drives the simulation) and of `flwr-simulation` alone, sampled every 0.5 s.
Aim: cost linear in the number of sites.

    python benchmarks/sites_scaling.py [--sites 3 12 30] [--preset tiny] [--rounds 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from flower_common.run_config import config_from_run_config
from pedseg_core.data.synth import synthesize
from pedseg_core.train.metrics_line import read_metrics
from simulations.simulation import federate_simulation

JOINTS = ("ankle", "knee", "shoulder")
# the process that runs the ServerApp: flwr-simulation in the simulation engine, flwr-serverapp in deployments
SERVER_PROCESSES = ("flwr-simulation", "flwr-serverapp")


class MemorySampler(threading.Thread):
    """Peak summed RSS of the processes whose FLWR_HOME lies under `root`, and of the server process among
    them."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.stop, self.peak_total, self.peak_server = str(root), threading.Event(), 0, 0

    def run(self) -> None:
        while not self.stop.wait(0.5):
            total = server = 0
            for proc in psutil.process_iter():
                try:
                    if self.root in proc.environ().get("FLWR_HOME", ""):
                        rss = proc.memory_info().rss
                        total += rss
                        if any(name in part for part in proc.cmdline() for name in SERVER_PROCESSES):
                            server += rss
                except psutil.Error:
                    continue
            self.peak_total, self.peak_server = max(self.peak_total, total), max(self.peak_server, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 12, 30])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="local steps per round")
    parser.add_argument("--out", help="keep data and runs here (default: a temporary folder)")
    args = parser.parse_args()
    if any(n % len(JOINTS) for n in args.sites):
        parser.error(f"site counts must be multiples of {len(JOINTS)}")

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pedseg-scaling-"))
    per_joint = max(args.sites) // len(JOINTS)
    data = synthesize(work / "data", JOINTS, per_joint, 1, seed=0)
    rows = []
    for n in args.sites:
        run = work / f"run-{n}"
        sampler = MemorySampler(run)
        sampler.start()
        start = time.perf_counter()
        federate_simulation(data, run, config_from_run_config({
            "preset": args.preset, "scheme": "multi-domain", "rounds": args.rounds,
            "evaluate-every": args.rounds, "overrides": f"train.steps_per_epoch={args.steps}"}),
                            sites_per_joint=n // len(JOINTS), progress=False)
        wall = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
        lines = [line for line in read_metrics(run / "metrics.jsonl") if line.is_round]
        rows.append((n, statistics.median(x.round_time_s for x in lines),
                     statistics.median(x.aggregation_s for x in lines), sampler.peak_total / 2**30,
                     sampler.peak_server / 2**30, wall))
    print(f"{args.preset} preset, {args.rounds} rounds of {args.steps} local steps; simulation on "
          f"{psutil.cpu_count()} cores")
    print(f"{'sites':>5} {'round s':>8} {'per site s':>10} {'aggregation s':>13} {'peak sim GiB':>12} "
          f"{'peak server GiB':>15} {'wall s':>7}")
    for n, round_s, agg_s, total_gib, server_gib, wall in rows:
        print(f"{n:>5} {round_s:>8.1f} {round_s / n:>10.2f} {agg_s:>13.3f} {total_gib:>12.2f} {server_gib:>15.2f} "
              f"{wall:>7.0f}")
    print(f"run folder: {work}")


if __name__ == "__main__":
    main()
