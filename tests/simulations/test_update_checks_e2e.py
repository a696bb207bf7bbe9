"""Faulty updates in a real loopback federation (TLS, SuperNode keys): one site's ClientApp corrupts its reply a
different way each round (NaN, a wrong shape, a list-valued example count, a private tensor among the
shared ones, an update blown up a million times, no site record). Each is rejected and logged in metrics.jsonl,
none enters the global model, the ServerApp never crashes, and the run completes with both sites."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from flower_common.run_config import config_from_run_config
from pedseg.cli import main as pedseg
from pedseg_core.config import build_config
from pedseg_core.model.partition import split_for_scheme
from pedseg_core.model.unet import build_model
from simulations.local import federate_local
from tests.app_folder import APP_DIR

CORRUPTIONS = {"2": "nan", "3": "shape", "4": "list-metric", "5": "foreign", "6": "scale", "7": "no-site"}
REASONS = {"nan": "holds non-finite values", "shape": "expected float32", "list-metric": "metric num-examples is "
           "list, not a number", "foreign": "keys that are not shared weights", "scale": "(absurd)",
           "no-site": "no site record"}


def corrupting_app_dir(root: Path) -> Path:
    """pedseg's Flower app with the corrupting ClientApp in place of its own (pyproject derived from pedseg's)."""
    app = root / "corrupting-app"
    app.mkdir()
    pyproject = (APP_DIR / "pyproject.toml").read_text(encoding="utf-8")
    assert 'clientapp = "client.app:app"' in pyproject and "[tool.flwr.app.config]\n" in pyproject
    pyproject = pyproject.replace('clientapp = "client.app:app"', 'clientapp = "corrupting_client:app"')
    pyproject = re.sub(r"\nfab-include = \[[^\]]*\]", "", pyproject)  # its files are not pedseg's packages
    pyproject = pyproject.replace("[tool.flwr.app.config]\n",
                                  '[tool.flwr.app.config]\ncorrupt-site = ""\ncorruptions-json = ""\n')
    (app / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    shutil.copy(Path(__file__).with_name("corrupting_client.py"), app / "corrupting_client.py")
    return app


@pytest.mark.slow
def test_every_corrupted_update_is_rejected_and_the_run_completes(tmp_path):
    data = tmp_path / "data"
    assert pedseg(["data", "synth", str(data), "--joints", "ankle,knee", "--train", "2", "--test", "1"]) == 0
    config = config_from_run_config({"preset": "tiny", "scheme": "multi-domain", "rounds": 7,
                                     "overrides": "train.steps_per_epoch=3"})
    out = tmp_path / "run"
    results = federate_local({"ankle": data / "ankle", "knee": data / "knee"}, out, config, threads=1,
                             progress=False, app_dir=corrupting_app_dir(tmp_path),
                             app_keys={"corrupt-site": "knee", "corruptions-json": json.dumps(CORRUPTIONS)})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["round"] for r in records] == list(range(1, 8))
    assert set(records[0]["sites"]) == {"ankle", "knee"} and records[0]["rejected"] == []
    for record in records[1:]:
        kind = CORRUPTIONS[str(record["round"])]
        assert set(record["sites"]) == {"ankle"}, (kind, record["sites"])
        (rejection,) = record["rejected"]
        assert rejection["site"] == "knee" and REASONS[kind] in rejection["reason"], (kind, rejection)
        assert record["missing"] == []  # it answered: rejected, not missing
    final = torch.load(out / "checkpoints" / "global_final.pt", weights_only=True)["shared_state_dict"]
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
    shared, _ = split_for_scheme(build_model([3, 3], build_config("tiny").model), "multi-domain")
    assert set(final) == set(shared)  # exactly the shared weights: the private tensor never got in
    assert set(results["sites"]) == {"ankle", "knee"}  # the corrupting site still evaluates at the end
