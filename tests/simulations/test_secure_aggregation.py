"""Secure aggregation (SecAgg+) in a real loopback federation of three sites (TLS, SuperNode keys), with a
recorder between the ServerApp and Flower's Grid: no reply the server side receives holds a site's shared
weights or its update unmasked, and the global weights equal plain FedAvg of what the sites trained (their
`--keep-sent` copies) within SecAgg+'s quantization error."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flower_common.run_config import config_from_run_config
from pedseg.cli import main as pedseg
from simulations.local import federate_local
from tests.app_folder import APP_DIR

JOINTS = ("ankle", "knee", "shoulder")
ROUNDS = 2


def recording_app_dir(root: Path) -> Path:
    """pedseg's Flower app with the recording ServerApp in place of its own (pyproject derived from pedseg's)."""
    app = root / "recording-app"
    app.mkdir()
    pyproject = (APP_DIR / "pyproject.toml").read_text(encoding="utf-8")
    assert 'serverapp = "server.app:app"' in pyproject
    pyproject = re.sub(r"\nfab-include = \[[^\]]*\]", "", pyproject)  # its files are not pedseg's packages
    (app / "pyproject.toml").write_text(pyproject.replace('serverapp = "server.app:app"',
                                                          'serverapp = "recording_server:app"'), encoding="utf-8")
    shutil.copy(Path(__file__).with_name("recording_server.py"), app / "recording_server.py")
    return app


def kept(out: Path, site: str, server_round: int) -> dict:
    (run,) = (out / "sites" / site).glob("run-*")
    return torch.load(run / "sent" / f"round-{server_round:03d}.pt", weights_only=True)


@pytest.mark.slow
def test_the_server_learns_only_the_mean_of_the_shared_weights(tmp_path):
    data = tmp_path / "data"
    assert pedseg(["data", "synth", str(data), "--joints", ",".join(JOINTS), "--train", "2", "--test", "1"]) == 0
    out = tmp_path / "run"
    config = config_from_run_config({"preset": "tiny", "scheme": "multi-domain", "rounds": ROUNDS,
                                     "secure-aggregation": True, "overrides": "train.steps_per_epoch=2"})
    results = federate_local({j: data / j for j in JOINTS}, out, config, threads=1, keep_sent=True,
                             progress=False, app_dir=recording_app_dir(tmp_path))
    assert set(results["sites"]) == set(JOINTS)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["secure_aggregation"]["sites"] for r in records] == [3] * ROUNDS
    assert all(r["update_norms"] == {} and set(r["sites"]) == set(JOINTS) for r in records)

    # plain FedAvg of what each site trained in the last round (its own copy, never sent in clear)
    final = torch.load(out / "checkpoints" / "global_final.pt", weights_only=True)["shared_state_dict"]
    sent = [kept(out, j, ROUNDS) for j in JOINTS]
    weights = [s["num_examples"] for s in sent]
    for key, value in final.items():
        expected = sum(w * s["arrays"][key].double() for w, s in zip(weights, sent)) / sum(weights)
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=2e-5)

    # what the server side received: no shared array in clear, masked vectors unrelated to any site's update
    received = torch.load(out / "received.pt", weights_only=True)
    shared_keys = set(final)
    train = [r for r in received if r["type"] == "train"]
    assert train and all(not shared_keys & set(arrays) for r in train for arrays in r["arrays"].values())
    masked = [r["masked"] for r in train if r["masked"]]
    assert len(masked) == 3 * ROUNDS
    trained = [np.concatenate([kept(out, j, rnd)["arrays"][k].double().flatten().numpy() for k in sorted(shared_keys)])
               for j in JOINTS for rnd in range(1, ROUNDS + 1)]
    for vector in masked:
        flat = np.concatenate([v.flatten().numpy() for v in vector[1:]]).astype(np.float64)  # [0]: the weight
        assert len(flat) == len(trained[0]) and flat.min() >= 0 and flat.max() < 2 ** 32
        assert flat.std() > 2 ** 30  # spread over the whole modulus, as uniform masks make it
        for weights_of_a_site in trained:
            assert abs(np.corrcoef(flat, weights_of_a_site)[0, 1]) < 0.05
