"""A real loopback federation of the `full` scheme whose sites' policy asks for DP-SGD (epsilon 8): the prior's
stage 1 trains under DP too, every round reports each site's epsilon, growing and within the budget;
results.json carries it; no training loss and no prototype leaves a DP site, and the refusal of prototypes is
logged."""

from __future__ import annotations

import json

import pytest

from flower_common.run_config import config_from_run_config
from pedseg.cli import main as pedseg
from simulations.local import federate_local

ROUNDS = 3


@pytest.mark.slow
def test_a_dp_policy_spends_at_most_its_epsilon(tmp_path):
    data = tmp_path / "data"
    assert pedseg(["data", "synth", str(data), "--joints", "ankle,knee", "--train", "3", "--test", "1"]) == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text("dp:\n  epsilon: 8.0\n  delta: 1.0e-5\n  max_grad_norm: 1.0\n", encoding="utf-8")
    config = config_from_run_config({"preset": "tiny", "scheme": "full", "rounds": ROUNDS,
                                     "overrides": "train.steps_per_epoch=3 model.norm=group prior.epochs=2 "
                                                  "prior.steps_per_epoch=3"})
    out = tmp_path / "run"
    results = federate_local({"ankle": data / "ankle", "knee": data / "knee"}, out, config, threads=1,
                             progress=False, policy=policy)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    prior = [r for r in lines if r.get("stage") == "prior"]
    assert [r["round"] for r in prior] == [1, 2] and not any("prior-recon-last" in r for r in prior)
    records = [r for r in lines if "sites" in r]
    for site in ("ankle", "knee"):
        spent = [r["sites"][site]["epsilon"] for r in records]
        assert spent == sorted(spent) and 0 < spent[0] and spent[-1] <= 8.0, spent
        assert "train-loss" not in records[0]["sites"][site] and "prototype-slices" not in records[0]["sites"][site]
        assert 0 < results["sites"][site]["epsilon"] <= 8.0
        assert "prototypes: not covered by DP-SGD" in records[0]["policy_refusals"][site][0]
        assert pedseg(["audit", str(out / "sites" / site)]) == 0
    assert all(r["rejected"] == [] for r in records)
