"""A tiny smoke run of every centralized scheme on real files, through the same checks."""

import json

import pytest

from pedseg.cli import main
from pedseg_core.config import SCHEMES, build_config
from pedseg_core.errors import PedsegError
from pedseg_core.model.checkpoint import load_checkpoint
from pedseg_core.train.centralized import train_centralized


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", str(out), "--joints", "ankle,shoulder", "--train", "2", "--test", "1"]) == 0
    return {"ankle": out / "ankle", "shoulder": out / "shoulder"}


def tiny(scheme):
    return build_config("tiny", overrides={"scheme": scheme, "train": {"epochs": 2, "steps_per_epoch": 2}})


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_trains_evaluates_and_saves(scheme, data, tmp_path):
    results = train_centralized(data, tiny(scheme), tmp_path / "run", progress=False)
    assert results["scheme"] == scheme and set(results["sites"]) == {"ankle", "shoulder"}
    assert set(results["sites"]["ankle"]["dice"]) == {"tibia", "talus", "calcaneus"}
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    per_joint = scheme in ("individual", "transfer")
    assert len(lines) == 2 * (2 if per_joint else 1) + (scheme == "full")
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name != "shape_prior.pt")
    assert checkpoints == (["ankle.pt", "shoulder.pt"] if per_joint else ["final.pt"])
    model, cfg, domains = load_checkpoint(tmp_path / "run" / "checkpoints" / checkpoints[0])
    assert cfg.scheme == scheme
    if scheme == "shared":
        assert [d.name for d in domains] == ["shared"] and "shoulder/scapula" in domains[0].labels
        assert model.num_domains == 1 and len(domains[0].labels) == 1 + 3 + 2
    if scheme in ("contrastive", "full"):
        training = [line for line in lines if line["stage"] != "prior"]
        assert all(line["contrastive_loss"] > 0 for line in training) and model.scales == (0, 1, 2)
    if scheme == "full":
        prior, *training = lines
        assert prior["stage"] == "prior" and prior["prior_recon_last"] < prior["prior_recon_first"]
        assert all(line["prior_loss"] > 0 for line in training)
    if scheme == "transfer":
        assert [line["stage"] for line in lines[:2]] == ["ankle pretrain", "ankle finetune"]


def test_transfer_needs_two_joints(data, tmp_path):
    with pytest.raises(PedsegError, match="at least two joints"):
        train_centralized({"ankle": data["ankle"]}, tiny("transfer"), tmp_path / "run", progress=False)
