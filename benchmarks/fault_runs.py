"""Faults on held-out data, each measured against the same run without it (real loopback federations, TLS,
three sites, `full` scheme):

- uninterrupted: `pedseg federate --local` for N rounds;
- resumed: the same run, every process SIGKILLed once the server's state holds round K, then
  `pedseg federate --resume RUN`;
- site killed: the same run with `--min-sites 2`, one site's pedseg-client and SuperNode SIGKILLed after round K.

Prints each run's final mean Dice per site, which rounds named the killed site as missing, and the wall time.

    python benchmarks/fault_runs.py [--preset demo] [--rounds 6] [--kill-after 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from pedseg_core.train.metrics_line import read_metrics

JOINTS = ("ankle", "knee", "shoulder")


def completed_round(run: Path) -> int:
    path = run / "checkpoints" / "server_state.pt"
    return torch.load(path, weights_only=True)["completed_round"] if path.exists() else -1


def kill_tree(root: psutil.Process) -> None:
    processes = [root, *root.children(recursive=True)]
    for proc in processes:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)


def federate(data: Path, out: Path, args: argparse.Namespace, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pedseg", "federate", "--local",
                             *(f"--data={j}={data / j}" for j in JOINTS), "--out", str(out), "--preset", args.preset,
                             "--rounds", str(args.rounds), "--scheme", "full", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")


def wait_for_round(run: Path, proc: subprocess.Popen, round_: int) -> None:
    while completed_round(run) < round_:
        if proc.poll() is not None:
            raise SystemExit(f"{run}: the run ended before round {round_}: {proc.stderr.read()[-500:]}")
        time.sleep(1)


def summary(name: str, run: Path, seconds: float) -> dict:
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    lines = read_metrics(run / "metrics.jsonl")
    missing = {m.site: [] for line in lines for m in line.missing}
    for line in lines:
        for m in line.missing:
            missing[m.site].append(line.round)
    sites = {s: round(r["mean_dice"], 4) for s, r in results["sites"].items()}
    print(f"{name:>13}: mean Dice {results['mean_dice']:.4f}  per site {sites}  missing {missing or '-'}  "
          f"{seconds:.0f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--kill-after", type=int, default=2, help="the round after which the fault strikes")
    parser.add_argument("--train", type=int, default=8, help="held-out training cases per joint")
    parser.add_argument("--out", help="keep the data and runs here (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pedseg-bench-faults-"))
    data = work / "data"
    if not (data / "shoulder" / "dataset.json").exists():
        subprocess.run([sys.executable, "-m", "simulations.heldout_phantoms", str(data), "--train", str(args.train),
                        "--test", "4", "--seed", "7"], check=True, stdout=subprocess.DEVNULL)
    print(f"held-out data ({args.train} training cases per joint), {args.preset} preset, {args.rounds} rounds, "
          f"full scheme, 3 sites; faults after round {args.kill_after}", flush=True)

    start = time.monotonic()
    run = federate(data, work / "uninterrupted", args)
    run.wait()
    summary("uninterrupted", work / "uninterrupted", time.monotonic() - start)

    start = time.monotonic()
    run = federate(data, work / "resumed", args)
    wait_for_round(work / "resumed", run, args.kill_after)
    kill_tree(psutil.Process(run.pid))
    resumed = subprocess.run([sys.executable, "-m", "pedseg", "federate", "--resume", str(work / "resumed")],
                             capture_output=True, encoding="utf-8", errors="replace")
    if resumed.returncode != 0:
        raise SystemExit(f"resume failed: {resumed.stderr[-800:]}")
    summary("resumed", work / "resumed", time.monotonic() - start)

    start = time.monotonic()
    run = federate(data, work / "site-killed", args, "--min-sites", "2")
    wait_for_round(work / "site-killed", run, args.kill_after)
    shoulder = next(p for p in psutil.Process(run.pid).children(recursive=True)
                    if "client.cli" in p.cmdline() and "shoulder" in p.cmdline())
    kill_tree(shoulder)
    _, stderr = run.communicate()
    if run.returncode != 0:
        raise SystemExit(f"the run with a killed site failed: {stderr[-800:]}")
    summary("site killed", work / "site-killed", time.monotonic() - start)


if __name__ == "__main__":
    main()
