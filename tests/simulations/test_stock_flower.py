"""Stock Flower end to end (PEDSEG_STOCK_FLOWER=1): no Flower patch is applied in any process, each site runs
Flower's own flower-superexec (one flwr-clientapp process per message, no warm worker), and a loopback
federation still runs to its end."""

import json

import pytest

from flower_common.flower_patches import STOCK_FLOWER_ENV
from pedseg.cli import main as pedseg

JOINTS = ("ankle", "knee")
STOCK_LINE = f"pedseg: {STOCK_FLOWER_ENV}=1: stock Flower behaviour is used"


@pytest.mark.slow  # a flwr-clientapp process per message imports torch and MONAI each time
def test_a_loopback_federation_runs_to_its_end_on_stock_flower(tmp_path, monkeypatch):
    monkeypatch.setenv(STOCK_FLOWER_ENV, "1")  # the launcher's processes (SuperLink, ServerApp, sites) inherit it
    data, out = tmp_path / "data", tmp_path / "fed"
    assert pedseg(["data", "synth", str(data), "--joints", ",".join(JOINTS), "--train", "2", "--test", "1"]) == 0
    assert pedseg(["federate", "--local", *[a for j in JOINTS for a in ("--data", f"{j}={data / j}")],
                   "--out", str(out), "--preset", "tiny", "--rounds", "1", "--threads", "1", "--insecure"]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results["sites"]) == set(JOINTS) and results["rounds"] == 1
    assert STOCK_LINE in (out / "logs" / "serverapp.log").read_text(encoding="utf-8")
    for joint in JOINTS:
        log = (out / "logs" / f"site-{joint}.log").read_text(encoding="utf-8")
        assert STOCK_LINE in log  # the SuperNode's own line: it applied nothing
        assert "Starting Flower SuperExec" in log  # Flower's own task executor, not pedseg's worker supervisor
