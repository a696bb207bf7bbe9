"""Flower's simulation engine (Ray on 127.0.0.1) runs the same ServerApp and ClientApp, mapping virtual
SuperNodes to sites through the run config; a joint's dataset splits into several sites."""

import json

import psutil
import torch

from flower_common.run_config import config_from_run_config
from pedseg.cli import main as pedseg
from simulations.simulation import federate_simulation, simulation_options, virtual_sites


def test_virtual_sites_split_each_joint(tmp_path):
    table = virtual_sites({"knee": tmp_path / "k"}, {}, 3, tmp_path / "run", threads=1, policy=tmp_path / "p.yaml")
    assert [(s["site"], s["joint"], s["part"], s["parts"]) for s in table] == [
        ("knee-1", "knee", 0, 3), ("knee-2", "knee", 1, 3), ("knee-3", "knee", 2, 3)]
    assert {s["policy"] for s in table} == {str(tmp_path / "p.yaml")}


def test_simulation_matches_the_local_contract_with_fp16_messages(tmp_path):
    data = tmp_path / "data"
    assert pedseg(["data", "synth", str(data), "--joints", "ankle,knee", "--train", "4", "--test", "1"]) == 0
    config = config_from_run_config({"preset": "tiny", "scheme": "multi-domain", "rounds": 2,
                                     "message-dtype": "fp16", "overrides": "train.steps_per_epoch=2"})
    out = tmp_path / "run"
    results = federate_simulation({j: data / j for j in ("ankle", "knee")}, out, config, sites_per_joint=2,
                                  progress=False)
    assert results["mode"] == "federated" and results["rounds"] == 2
    assert {s: r["joint"] for s, r in results["sites"].items()} == {
        "ankle-1": "ankle", "ankle-2": "ankle", "knee-1": "knee", "knee-2": "knee"}
    # on the researcher's own data the simulation opts in to per-case metrics (for the paired tests)
    assert all(len(r["per_case"]) == r["cases"] for r in results["sites"].values())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    assert all(line["sites"][s]["num-examples"] == 2 * 4 for line in lines for s in results["sites"])
    assert lines[1]["pooled_heads"] == ["ankle", "knee"]  # split sites of one joint pool their heads
    assert [p.pid for p in psutil.process_iter() if started_here(p, out)] == []
    for site in results["sites"]:  # the shared weights left every site as fp16 updates; the server kept fp32
        audit = [json.loads(x) for x in (out / "sites" / site / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
        shared = [a for line in audit if line["type"] == "train" for a in line["arrays"] if a["record"] == "arrays"]
        assert shared and {a["dtype"] for a in shared} == {"float16"}
    final = torch.load(out / "checkpoints" / "global_final.pt", weights_only=True)["shared_state_dict"]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in final.values())


def started_here(proc, out):
    """Whether a process belongs to this run: its command line or its FLWR_HOME (the simulation SuperLink
    and Ray inherit it) points into the run directory."""
    try:
        return any(str(out) in part for part in proc.cmdline()) or str(out) in proc.environ().get("FLWR_HOME", "")
    except psutil.Error:
        return False


def test_virtual_sites_share_the_gpus_when_there_are_some():
    assert "num-gpus" not in simulation_options(3, 1, 2)
    assert "options.backend.client-resources.num-gpus = 0.25\n" in simulation_options(4, 1, 16, gpus=1)
