"""The environment of Flower's own processes (flower-superlink, flower-supernode, flwr), the same everywhere
(this module only sets variables; pedseg_core imports no Flower code): telemetry,
update checks and runtime dependency installation off, UTF-8 whatever the host's locale (Flower prints emoji),
a private FLWR_HOME, this Python's scripts on PATH (processes/guard.py stops their whole trees)."""

from __future__ import annotations

import os
import sys
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
