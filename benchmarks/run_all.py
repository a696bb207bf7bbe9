"""`make bench`: run every benchmark in one go and write benchmarks/RESULTS.md, the one place every figure the
documents quote comes from.

Each benchmark runs as its own process and prints its figures as markdown; RESULTS.md gets one section per
benchmark: the command, when and on what it ran (date, commit, CPU model, whether bf16 is native there, cores,
torch threads), its wall time, and what it printed. `--only NAME ...` re-runs some and keeps the other sections
as they were (each says when it was measured).

    python benchmarks/run_all.py [--only NAME ...] [--results benchmarks/RESULTS.md] [--list]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from pedseg_core.precision import native_bf16

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
# name -> what it measures (each with its own defaults), in the order they run: the short ones first
BENCHMARKS = {
    "train_step": "pedseg's training step against a bare PyTorch loop",
    "train_step_avx2": "the same, oneDNN and ATen capped to AVX2 (an AVX2-only CPU's kernels)",
    "tls_round": "TLS + SuperNode keys against --insecure, round time",
    "round_overhead": "a loopback round's fixed cost and bytes",
    "secure_aggregation": "SecAgg+ against plain aggregation, per round",
    "message_dtype": "fp16 against fp32 messages: bytes and Dice",
    "sites_scaling": "cost with 3, 12 and 30 simulated sites",
    "fault_runs": "resumed and site-killed runs against an uninterrupted one",
    "precision_dice": "train.precision auto against fp32: Dice",
    "dp_dice": "DP-SGD at epsilon 8 and 1 against no DP: Dice and time",
    "postprocess_heldout": "held-out HD95 and Dice before and after post-processing",
    "adapt_new_site": "a left-out hospital adapted with 2 and 5 cases against the federation's site",
}
ARGUMENTS = {"round_overhead": ["--unpacked"]}  # beyond each benchmark's defaults: the side-by-side comparison
# name -> (the script it runs, the environment it runs in): a CPU with AVX-512 or AMX stands in for an AVX2-only
# one by capping the instruction sets oneDNN (convolutions, matmuls) and ATen (the rest) may use
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
VARIANTS = {"train_step_avx2": ("train_step", dict(zip(ISA_CAPS, ("AVX2", "avx2"))))}
SECTION = re.compile(r"<!-- bench:(\w+) -->\n.*?<!-- /bench:\1 -->\n", re.DOTALL)


def machine() -> str:
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
                if line.startswith("model name")
            ),
            "unknown CPU",
        )
        if Path("/proc/cpuinfo").exists()
        else "unknown"
    )
    reason = native_bf16(torch.device("cpu"))
    bf16 = f"bf16 native ({reason})" if reason else "no native bf16 (it would be emulated)"
    caps = [f"{name}={os.environ[name]}" for name in ISA_CAPS if name in os.environ]
    capped = f", capped to {' '.join(caps)}" if caps else ""
    return f"{model}{capped}; {bf16}; {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, encoding="utf-8", errors="replace"
        ).stdout.strip()

    # the files this script rewrites after each benchmark do not make the next one's code "uncommitted"
    written = (f":!{RESULTS.relative_to(ROOT)}",)
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no", "--", ".",
                                                  *written) else ""
    return (git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def spaced(output: str) -> str:
    """A benchmark's printout with a blank line around each markdown table, so that tables render."""
    lines = output.splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        table, before = line.startswith("|"), i > 0 and lines[i - 1].startswith("|")
        if i > 0 and table != before and out[-1] != "":
            out.append("")
        out.append(line)
    return "\n".join(out)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set for the duration (the benchmark and `machine()` both see them)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def run(name: str) -> str:
    what = BENCHMARKS[name]
    script, env = VARIANTS.get(name, (name, {}))
    command = [*(f"{k}={v}" for k, v in env.items()), "python", f"benchmarks/{script}.py", *ARGUMENTS.get(name, [])]
    started = time.perf_counter()
    with environment(env):
        done = subprocess.run(
            [sys.executable, f"benchmarks/{script}.py", *ARGUMENTS.get(name, [])],
            cwd=ROOT,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        where = machine()
    minutes = (time.perf_counter() - started) / 60
    output = spaced(done.stdout.strip()) if done.returncode == 0 else \
        f"**failed** (exit {done.returncode}):\n\n```\n{done.stderr.strip()[-3000:]}\n```"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!-- bench:{name} -->\n## {name}: {what}\n\n`{' '.join(command)}`: {stamp}, commit {commit()}, "
            f"{where}; {minutes:.1f} min\n\n{output}\n<!-- /bench:{name} -->\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="name the benchmarks and stop")
    args = parser.parse_args()
    if args.list:
        print("\n".join(f"{name}: {what}" for name, what in BENCHMARKS.items()))
        return
    kept = {m.group(1): m.group(0) for m in SECTION.finditer(args.results.read_text(encoding="utf-8"))} \
        if args.results.exists() else {}
    for name in args.only or list(BENCHMARKS):
        print(f"benchmark {name} ...", file=sys.stderr, flush=True)
        kept[name] = run(name)
        write(args.results, kept)
    print(f"wrote {args.results}")


def write(path: Path, sections: dict[str, str]) -> None:
    """RESULTS.md: a header, then the sections in BENCHMARKS' order (written after each benchmark)."""
    body = "\n".join(sections[name] for name in BENCHMARKS if name in sections)
    missing = [name for name in BENCHMARKS if name not in sections]
    note = f"Not run yet: {', '.join(missing)}.\n\n" if missing else ""
    path.write_text("# Benchmark results\n\nWritten by `make bench` (`python benchmarks/run_all.py`); every figure "
                    "is a ratio or a count measured side by side in one run of its benchmark. Each section says "
                    "when, at which commit and on which CPU it ran.\n\n" + note + body, encoding="utf-8")


if __name__ == "__main__":
    main()
