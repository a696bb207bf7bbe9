"""Every metrics.jsonl line is written and read through one typed record, under the keys on disk."""

import json
import math

import pytest

from pedseg_core.config import build_config
from pedseg_core.errors import PedsegError
from pedseg_core.train.metrics_line import MetricsLine, read_metrics
from pedseg_core.train.run_dir import RunDir

ROUND = {"round": 2, "started_at": 1.5, "sites": {"ankle": {"joint": "ankle", "train-loss": 0.4, "num-examples": 6}},
         "errors": [], "rejected": [{"site": "knee", "reason": "update norm 812.5 exceeds norm_bound 10.0"}],
         "missing": [{"site": "shoulder", "reason": "no reply within round-timeout"}], "train_loss": math.nan,
         "examples": 6.0, "update_norms": {"ankle": 1.0}, "aggregated_keys": 40, "aggregation": "mean",
         "aggregation_s": 0.01, "round_time_s": 3.2,
         "evaluation": {"mean_dice": 0.5, "sites": {"ankle": {"dice": {"tibia": 0.5}, "mean_dice": 0.5}}}}


def test_lines_keep_their_keys_and_read_back_typed(tmp_path):
    run = RunDir(tmp_path / "run").create(build_config("tiny", overrides={"tracking": {"tensorboard": False}}))
    run.log(ROUND)
    run.log({"stage": "prior", "round": 1, "recon-loss": 0.2})
    run.log({"stage": "multi-domain", "epoch": 1, "loss": 0.9, "lr": 0.002})
    run.log({"event": "run-ended", "reason": "no quorum"})
    written = [json.loads(x) for x in run.metrics_path.read_text(encoding="utf-8").splitlines()]
    assert written[0] == {**ROUND, "train_loss": None}  # NaN is not JSON: null
    assert written[1:] == [{"stage": "prior", "round": 1, "recon-loss": 0.2},
                           {"stage": "multi-domain", "epoch": 1, "loss": 0.9, "lr": 0.002},
                           {"event": "run-ended", "reason": "no quorum"}]
    federated, prior, epoch, ended = read_metrics(run.metrics_path)
    assert federated.is_round and not prior.is_round and prior.is_prior_round and epoch.is_epoch
    assert [e.site for e in federated.rejected] == ["knee"] and federated.named_sites == {"ankle", "knee", "shoulder"}
    assert federated.site_evaluations["ankle"]["mean_dice"] == 0.5 and epoch.model_extra["loss"] == 0.9
    assert ended.reason == "no quorum"


def test_a_line_of_the_wrong_type_is_refused_when_written_and_when_read(tmp_path):
    run = RunDir(tmp_path / "run").create(build_config("tiny", overrides={"tracking": {"tensorboard": False}}))
    with pytest.raises(PedsegError, match="round"):
        run.log({"round": "second"})
    run.metrics_path.write_text('{"round": 1}\n{"round": [1]}\n{"round": 3', encoding="utf-8")
    with pytest.raises(PedsegError, match=r"metrics.jsonl:2: not a metrics line \(round: "):
        read_metrics(run.metrics_path)


def test_a_last_line_cut_by_a_kill_is_left_out(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\n{"round": 2, "sites": {"ank', encoding="utf-8")
    assert [line.round for line in read_metrics(path)] == [1]
    assert read_metrics(tmp_path / "none.jsonl") == [] and MetricsLine().values() == {}
