"""The install of a hospital without internet access (README, "A built package"): `make wheelhouse` on a connected
machine (here: from the index pip is configured with), then a fresh virtual environment that installs pedseg
from that folder alone (`pip install --no-index --find-links`, no pip configuration), runs its commands and
builds its own Flower app, which a wheel install has no project folder for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP_PACKAGES = {"pedseg", "pedseg_core", "server", "client", "flower_common", "simulations"}


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=1200, **kwargs)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_pedseg_installs_from_a_wheelhouse_without_an_index(tmp_path: Path) -> None:
    wheelhouse, venv = tmp_path / "wheelhouse", tmp_path / "venv"
    started = time.perf_counter()
    run(["make", "--no-print-directory", "wheelhouse", f"WHEELHOUSE={wheelhouse}"], cwd=ROOT)
    built = time.perf_counter()

    (wheel,) = wheelhouse.glob("pedseg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = {name.rsplit("/", 1)[0] for name in archive.namelist() if name.endswith("/__init__.py")}
    in_tree = {init.parent.relative_to(ROOT).as_posix() for package in APP_PACKAGES
               for init in (ROOT / package).rglob("__init__.py")}
    assert in_tree <= packed, f"left out of the wheel: {sorted(in_tree - packed)}"

    offline = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "PYTHON"))}
    offline["PIP_CONFIG_FILE"] = os.devnull  # no configured index or find-links: the wheelhouse alone
    run([sys.executable, "-m", "venv", str(venv)], env=offline)
    run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-index", "--find-links", str(wheelhouse), "pedseg"],
        env=offline, cwd=tmp_path)
    installed = time.perf_counter()

    for command in ("pedseg", "pedseg-client"):  # run from tmp_path: nothing of the clone is on sys.path
        shown = run([str(venv / "bin" / command), "--help"], env=offline, cwd=tmp_path)
        assert shown.stdout.startswith(f"usage: {command}")
    # the site's app check and `flwr run` find pedseg's own Flower app without a project folder
    own = run([str(venv / "bin" / "python"), "-c", "from client.approved_app import app_hash, own_app\n"
               "with own_app() as app: print(app_hash(app))"], env=offline, cwd=tmp_path)
    assert len(own.stdout.strip()) == 64
    torch = run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"], env=offline,
                cwd=tmp_path)
    print(f"wheelhouse {built - started:.0f} s, offline install {installed - built:.0f} s, torch {torch.stdout}")
