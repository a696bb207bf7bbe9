"""`pedseg-client`: one hospital site. Validates the site's data, then runs a Flower SuperNode for it, whose
messages one warm worker process runs (client/site_worker.py) after checking that the app is one the site
approved (client/approved_app.py): by default only its own installed pedseg's.

    pedseg-client [run] --site NAME --joint J --data DIR --superlink HOST:PORT
                  (--root-certificates CA.pem [--auth-key KEY] | --insecure) [--state-dir DIR] [--policy POLICY.yaml]
                  [--approve-app SHA256 ... | --allow-any-app]
    pedseg-client app-hash [APP_DIR]     the sha256 of the app (FAB) Flower builds from APP_DIR, for approved_apps

`run` is the default: `pedseg-client --site ...` runs the site.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from client.approved_app import app_hash, default_approvals, launcher_env, own_app
from client.supernode_log import SupernodeLog
from client.worker_supervisor import install_launcher
from pedseg_core.data.validate import check_dataset
from pedseg_core.errors import EXIT_USER_ERROR, PedsegError, report_error
from pedseg_core.names import check_name
from pedseg_core.policy import describe_policy, load_policy
from pedseg_core.private_dirs import make_private_dir
from pedseg_core.processes.flower_env import flower_env
from pedseg_core.processes.guard import start_guarded, stop_guarded
from pedseg_core.processes.ports import free_port, split_address, wait_for_port

PROG = "pedseg-client"
POLL_SECONDS = 0.2


class ClientParser(argparse.ArgumentParser):
    """A usage error as one line (exit 2)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ClientParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,app-hash}")
    site = commands.add_parser("run", help="run this site (the default command)",
                               description="Validate the site's data, then run its Flower SuperNode until stopped.")
    site.add_argument("--site", required=True, help="this site's name (unique in the federation; letters, digits, "
                      "'.', '_', '-')")
    site.add_argument("--joint", required=True, help="the joint of this site's dataset, e.g. knee")
    site.add_argument("--data", required=True, metavar="DIR", help="this site's nnU-Net v2 raw dataset")
    site.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the federation's SuperLink")
    security = site.add_mutually_exclusive_group(required=True)
    security.add_argument("--root-certificates", metavar="CA.pem", help="CA certificate of the SuperLink's TLS")
    security.add_argument("--insecure", action="store_true", help="no TLS (loopback tests only)")
    site.add_argument("--auth-key", metavar="KEY", help="this SuperNode's private EC key (SuperNode authentication)")
    site.add_argument("--state-dir", metavar="DIR",
                      help="where the site keeps its private layers, its personalized model (run-ID/model.pt) and "
                           "Flower state (default: DATA/../.pedseg-SITE)")
    site.add_argument("--port", type=int, default=0,
                      help="local port of the SuperNode's runtime API (default: 0, a free port)")
    site.add_argument("--threads", type=int, default=0,
                      help="torch threads for training (default: 0, torch's own choice: one per core)")
    site.add_argument("--policy", metavar="POLICY.yaml",
                      help="this site's privacy policy: what may leave it (default: the safe one; see docs/privacy.md)")
    apps = site.add_mutually_exclusive_group()
    apps.add_argument("--approve-app", action="append", default=[], metavar="SHA256",
                      help="also run this app (`pedseg-client app-hash APP_DIR`), where the policy lists no "
                           "approved_apps; repeatable (default: only this pedseg's own app)")
    apps.add_argument("--allow-any-app", action="store_true",
                      help="run any app the federation sends (no approved_apps in the policy): the operator's code "
                           "then decides what leaves this site (warned at start)")
    site.add_argument("--keep-sent", action="store_true",
                      help="keep an audit copy of the arrays sent each round in STATE_DIR/run-<id>/sent/")
    site.add_argument("--connect-timeout", type=float, default=120.0,
                      help="seconds to keep retrying an unreachable SuperLink before giving up (default: %(default)s)")
    site.set_defaults(func=run)
    hashing = commands.add_parser("app-hash", help="the sha256 of the app (FAB) that `flwr run APP_DIR` sends",
                                  description="The sha256 of the app (FAB) that "
                                  "`flwr run APP_DIR` sends: list it under approved_apps in the site's policy.")
    hashing.add_argument("app_dir", nargs="?", metavar="APP_DIR",
                         help="a Flower app folder (default: this pedseg's own)")
    hashing.set_defaults(func=print_app_hash)
    return parser


def with_command(argv: list[str]) -> list[str]:
    """The site run is the default command: `pedseg-client --site ...` is `pedseg-client run --site ...`."""
    return ["run", *argv] if argv[:1] and argv[0].startswith("--") and argv[0] != "--help" else argv


def node_config(values: dict[str, str | int]) -> str:
    """Flower's --node-config syntax: space-separated TOML key=value pairs (strings quoted)."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def check_arguments(args: argparse.Namespace) -> tuple[str, int]:
    if args.auth_key and args.insecure:
        raise PedsegError("--auth-key needs TLS: use --root-certificates instead of --insecure")
    for option, path in (("--root-certificates", args.root_certificates), ("--auth-key", args.auth_key)):
        if path and not Path(path).is_file():
            raise PedsegError(f"{path}: {option} file not found")
    try:
        return split_address(args.superlink)
    except ValueError as err:
        raise PedsegError(f"--superlink: {err}") from None


def supernode_command(args: argparse.Namespace, state_dir: Path) -> list[str]:
    config = {"site": args.site, "joint": args.joint, "data-dir": str(Path(args.data).resolve()),
              "state-dir": str(state_dir), "threads": args.threads, "keep-sent": args.keep_sent,
              "policy": str(Path(args.policy).resolve()) if args.policy else ""}
    cmd = [sys.executable, "-m", "client.supernode",  # flower-supernode with its Flower patches (or stock)
           "--superlink", args.superlink, "--node-config", node_config(config),
           "--port", str(args.port or free_port()), "--max-wait-time", str(args.connect_timeout)]
    if args.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(Path(args.root_certificates).resolve())]
    if args.auth_key:
        cmd += ["--auth-supernode-private-key", str(Path(args.auth_key).resolve())]
    return cmd


def run(args: argparse.Namespace) -> int:
    check_name(args.site, "site", "--site")
    check_name(args.joint, "joint", "--joint")
    host, port = check_arguments(args)
    report = check_dataset(Path(args.data))
    if not report.ok:
        raise PedsegError("\n".join(f"site {args.site}: {p}" for p in report.problems))
    policy_path = Path(args.policy).resolve() if args.policy else None
    policy = load_policy(policy_path)
    approved = default_approvals(policy, policy_path, args.approve_app, args.allow_any_app)
    print(f"{PROG}: site {args.site} ({args.joint}): {report.n_train} training cases, data OK", flush=True)
    print(f"{PROG}: policy: {policy_path or 'the default policy'}: {describe_policy(policy)}", flush=True)
    if approved is None:
        print(f"{PROG}: warning: --allow-any-app: this site runs any app its federation sends, so the operator's "
              "code decides what leaves it", file=sys.stderr, flush=True)
    elif policy.approved_apps is None:
        print(f"{PROG}: apps: runs only {' and '.join(sorted(approved))} (its own pedseg's app"
              f"{' and --approve-app' if args.approve_app else ''})", flush=True)
    if args.insecure:
        print(f"{PROG}: warning: --insecure: no TLS; the SuperLink is not verified and the traffic can be read",
              flush=True)
    state_dir = Path(args.state_dir or Path(args.data).resolve().parent / f".pedseg-{args.site}").resolve()
    make_private_dir(state_dir)  # 0700: the site account's alone
    stop: list[str] = []  # signal names; a plain list, since a handler must not take locks
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, _frame: stop.append(signal.Signals(signum).name))
    print(f"{PROG}: waiting for the SuperLink at {args.superlink} to accept connections (up to "
          f"{args.connect_timeout:.0f} s, --connect-timeout)", flush=True)
    if not wait_for_port(host, port, args.connect_timeout, stop=stop):
        if stop:
            return stopped(args.site)
        raise PedsegError(f"cannot reach the SuperLink at {args.superlink} (retried for {args.connect_timeout:.0f} s);"
                          " check the address, the firewall and that flower-superlink is running")
    # The SuperNode and everything it starts run under a guard: they end with this process, however it ends.
    command = supernode_command(args, state_dir)
    print(f"{PROG}: $ {shlex.join(command)}", flush=True)
    env = launcher_env(flower_env(state_dir / "flwr-home"), install_launcher(state_dir / "bin"), args.site,
                       policy_path, state_dir, approved)
    supernode = start_guarded(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    )
    log = SupernodeLog(supernode.stdout, args.superlink)
    while supernode.poll() is None and not stop and not log.fatal.is_set():
        time.sleep(POLL_SECONDS)
    code = stop_guarded(supernode)
    log.join()
    if stop:
        return stopped(args.site)
    if log.cause is not None:
        raise PedsegError(f"site {args.site}: {log.cause}")
    if code != 0:
        raise PedsegError(f"site {args.site}: its SuperNode exited with status {code}; see the lines above")
    return 0


def stopped(site: str) -> int:
    print(f"{PROG}: site {site} stopped", flush=True)
    return 0


def print_app_hash(args: argparse.Namespace) -> int:
    if args.app_dir is None:
        with own_app() as app_dir:
            print(app_hash(app_dir))
        return 0
    app_dir = Path(args.app_dir)
    if not (app_dir / "pyproject.toml").is_file():
        raise PedsegError(f"{app_dir}: not a Flower app (no pyproject.toml)")
    print(app_hash(app_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(with_command(sys.argv[1:] if argv is None else list(argv)))
    try:
        return args.func(args)
    except PedsegError as err:
        report_error(err, PROG)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
