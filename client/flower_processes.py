"""Starting Flower's own processes (flower-superlink, flower-supernode) the same way everywhere: telemetry,
update checks and runtime dependency installation off, UTF-8 whatever the host's locale (Flower prints emoji),
a private FLWR_HOME, this Python's scripts on PATH (process_guard.py stops their whole trees)."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

QUIET_FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUTF8": "1",
}


def flower_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower process: quiet, private FLWR_HOME, and this Python's scripts first on PATH
    (Flower starts flower-superexec, flwr-serverapp and flwr-clientapp by name)."""
    env = dict(os.environ, **QUIET_FLOWER_ENV, FLWR_HOME=str(flwr_home))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    Path(flwr_home).mkdir(parents=True, exist_ok=True)
    return env


def flower_tool(name: str) -> str:
    """Path of a Flower console script installed beside this Python."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def split_address(address: str) -> tuple[str, int]:
    """"host:port" -> (host, port); ValueError with a clear message otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"'{address}' is not HOST:PORT")
    return host.strip("[]"), int(port)


def wait_for_port(host: str, port: int, timeout: float, first_delay: float = 0.5, stop: list | None = None) -> bool:
    """Try to open a TCP connection with exponential back-off (capped at 10 s) until `timeout`, or until `stop`
    (a list that a signal handler appends to) is not empty."""
    deadline, delay = time.monotonic() + timeout, first_delay
    while not stop:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)):
                return True
        except OSError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pause_until = time.monotonic() + min(delay, remaining)
            while not stop and time.monotonic() < pause_until:
                time.sleep(0.2)
            delay = min(delay * 2, 10.0)
    return False
