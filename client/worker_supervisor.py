"""What a pedseg site's SuperNode starts as its `flower-superexec`: a supervisor of the site's warm worker.

Flower 1.41's SuperNode starts `flower-superexec` (found on PATH) once, and that SuperExec starts a new
`flwr-clientapp` process per message: torch, MONAI and Flower imported, the model built and the site's data
loaded again every round (docs/decisions/0002-warm-site-worker.md). `pedseg-client` puts this module's launcher
first on its SuperNode's PATH under that name (not where Flower runs stock: `client.approved_app.launcher_env`), so
the SuperNode starts this supervisor instead; it keeps one `client.site_worker` running (the process that runs
every message) and starts a new one whenever it ends while the SuperNode lives: the task the dead one was running
fails after Flower's token expiry, as a dead `flwr-clientapp`'s does. Imports nothing heavy (psutil only); ends
when the SuperNode does.

    flower-superexec (--insecure | --root-certificates CA) --runtime-api-address HOST:PORT --parent-pid PID
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

LAUNCHER = "flower-superexec"
RESTART_PAUSE_SECONDS = 1.0
POLL_SECONDS = 0.2


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """SuperExec's arguments as Flower's SuperNode passes them, plus the worker's own `--token`."""
    p = argparse.ArgumentParser(prog=LAUNCHER, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime-api-address", required=True)
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--root-certificates")
    p.add_argument("--parent-pid", type=int)
    p.add_argument("--allow-runtime-dependency-installation", action="store_true")  # accepted; pedseg never installs
    p.add_argument("--token", help="a task already claimed (by the worker this one replaced): run it first")
    return p.parse_args(list(argv))


def supervise(argv: Sequence[str] | None = None) -> int:
    """Keep one worker running while the SuperNode (`--parent-pid`) lives; the worker's parent is this process."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    forwarded = [*worker_args(args), "--parent-pid", str(os.getpid())]
    while args.parent_pid is None or psutil.pid_exists(args.parent_pid):
        worker = subprocess.Popen([sys.executable, "-m", "client.site_worker", *forwarded])
        try:
            while (code := worker.poll()) is None and (args.parent_pid is None or psutil.pid_exists(args.parent_pid)):
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            code = None
        if code is None:  # the SuperNode is gone (or this was interrupted): the worker goes too
            worker.terminate()
            worker.wait()
            return 0
        # a worker that ended while the SuperNode lives, whatever its status: the site needs one to go on
        print(f"pedseg-client: the site's worker exited with status {code}; starting a new one", file=sys.stderr,
              flush=True)
        time.sleep(RESTART_PAUSE_SECONDS)
    return 0


def worker_args(args: argparse.Namespace) -> list[str]:
    """The Runtime API address and its TLS, as the worker takes them."""
    tls = ["--root-certificates", args.root_certificates] if args.root_certificates else ["--insecure"]
    return ["--runtime-api-address", args.runtime_api_address, *tls]


def install_launcher(bin_dir: Path) -> Path:
    """Write `bin_dir/flower-superexec`, which runs this supervisor with this Python; returns bin_dir (for PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    launcher = bin_dir / LAUNCHER
    launcher.write_text(f"#!{sys.executable}\nimport sys\nfrom client.worker_supervisor import supervise\n"
                        "sys.exit(supervise())\n", encoding="utf-8")
    launcher.chmod(0o755)
    return bin_dir


if __name__ == "__main__":
    sys.exit(supervise())
