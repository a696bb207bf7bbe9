"""Every run mirrors its log to TensorBoard (and MLflow when asked): the values read back with each library's own
reader are those of metrics.jsonl and results.json."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flower_common.run_config import config_from_run_config
from pedseg_core.config import build_config, config_from_dict
from pedseg_core.errors import PedsegError
from pedseg_core.train.centralized import train_centralized
from pedseg_core.train.run_dir import RunDir


def tensorboard_scalars(run) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_run(uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pedseg").experiment_id])
    return client, run


def mlflow_history(client, run, tag) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))


def approx(points):
    return [(step, pytest.approx(value, rel=1e-6)) for step, value in points]


def test_a_centralized_run_reads_back_from_tensorboard_and_mlflow(write_dataset, tmp_path):
    """A real tiny centralized run (2 epochs of 1 step) on a small dataset of the bones "a" and "b"."""
    uri = f"file://{tmp_path / 'mlruns'}"
    cfg = build_config("tiny", overrides={"train": {"epochs": 2, "steps_per_epoch": 1, "batch_size": 2},
                                          "tracking": {"mlflow_uri": uri}})
    run = tmp_path / "run"
    results = train_centralized({"ankle": write_dataset()}, cfg, run, progress=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    ankle = results["sites"]["ankle"]
    expected = {"train/loss/multi-domain": [(x["epoch"], x["loss"]) for x in lines],
                "train/seg_loss/multi-domain": [(x["epoch"], x["seg_loss"]) for x in lines],
                "lr/multi-domain": [(x["epoch"], x["lr"]) for x in lines],
                "results/dice/ankle/a": [(2, ankle["dice"]["a"])], "results/dice/ankle/b": [(2, ankle["dice"]["b"])],
                "results/dice/ankle/mean": [(2, ankle["mean_dice"])], "results/mean_dice": [(2, results["mean_dice"])]}
    assert [step for step, _ in expected["lr/multi-domain"]] == [1, 2]
    scalars = tensorboard_scalars(run)
    client, mlrun = mlflow_run(uri)
    for tag, points in expected.items():
        assert scalars[tag] == approx(points), tag
        assert mlflow_history(client, mlrun, tag) == approx(points), tag
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    params = mlrun.data.params
    assert params["train.epochs"] == "2" and params["scheme"] == "multi-domain" and params["preset"] == "tiny"
    assert params["model.decoder_channels"] == "[64, 32, 16, 16, 8]" and params["tracking.mlflow_uri"] == uri
    artifact = client.download_artifacts(mlrun.info.run_id, "results.json", str(tmp_path))
    assert json.loads(open(artifact, encoding="utf-8").read()) == json.loads(
        (run / "results.json").read_text(encoding="utf-8")
    )


def round_line(number, evaluated):
    """A federated round line as server.strategy writes it: a regular site and a DP site (no loss)."""
    line = {"round": number, "errors": [], "rejected": [], "missing": [], "update_norms": {"ankle-a": 1.0},
            "sites": {"ankle-a": {"joint": "ankle", "num-examples": 40.0, "lr": 0.003 / number, "train-time-s": 2.5,
                                  "load-time-s": 0.1, "train-loss": 1.5 / number, "seg-loss": 1.2 / number},
                      "knee b": {"joint": "knee", "num-examples": 20.0, "lr": 0.003 / number, "train-time-s": 3.0,
                                 "load-time-s": 0.2, "epsilon": 0.5 * number}},
            "train_loss": 1.5 / number, "examples": 60.0, "aggregated_keys": 120, "aggregation": "mean",
            "aggregation_s": 0.01, "round_time_s": 4.0 + number}
    if evaluated:
        line["evaluation"] = {"mean_dice": 0.4 * number, "sites": {
            "ankle-a": {"dice": {"tibia": 0.5 * number, "talus": float("nan")}, "hd95": {}, "assd": {},
                        "mean_dice": 0.5 * number},
            "knee b": {"dice": {"femur": 0.3 * number}, "hd95": {}, "assd": {}, "mean_dice": 0.3 * number}}}
    return line


def test_federated_round_lines_reach_both_trackers(tmp_path):
    uri = f"file://{tmp_path / 'mlruns'}"
    cfg = build_config("tiny", overrides={"scheme": "full", "tracking": {"mlflow_uri": uri}})
    run = RunDir(tmp_path / "run").create(cfg)
    run.log({"stage": "prior", "round": 1, "num-examples": 60.0, "prior-recon-last": 0.25})
    run.log(round_line(1, evaluated=False))
    run.log({"event": "resumed", "after_round": 1, "flower_run": 7})
    run.log(round_line(2, evaluated=True))
    run.write_results({"mode": "federated", "rounds": 2, "mean_dice": 0.8, "sites": {
        "ankle-a": {"joint": "ankle", "dice": {"tibia": 1.0}, "mean_dice": 1.0},
        "knee b": {"joint": "knee", "dice": {"femur": 0.6}, "mean_dice": 0.6}}})
    expected = {"train_loss": [(1, 1.5), (2, 0.75)], "train/loss/ankle-a": [(1, 1.5), (2, 0.75)],
                "train/seg-loss/ankle-a": [(1, 1.2), (2, 0.6)], "train/epsilon/knee b": [(1, 0.5), (2, 1.0)],
                "lr": [(1, 0.003), (2, 0.0015)], "round_time_s": [(1, 5.0), (2, 6.0)],
                "mean_dice": [(2, 0.8)], "dice/ankle-a/tibia": [(2, 1.0)], "dice/ankle-a/mean": [(2, 1.0)],
                "dice/knee b/femur": [(2, 0.6)], "train/prior-recon-last/prior": [(1, 0.25)],
                "results/dice/knee b/femur": [(2, 0.6)], "results/mean_dice": [(2, 0.8)]}
    scalars = tensorboard_scalars(run.path)
    client, mlrun = mlflow_run(uri)
    for tag, points in expected.items():
        assert scalars[tag] == approx(points), tag
        assert mlflow_history(client, mlrun, tag) == approx(points), tag
    assert "dice/ankle-a/talus" not in scalars and "train/loss/knee b" not in scalars  # NaN, no loss: left out
    assert mlrun.info.status == "FINISHED"


def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    uri = f"file://{tmp_path / 'mlruns'}"
    cfg = build_config("tiny", overrides={"tracking": {"mlflow_uri": uri}})
    run = RunDir(tmp_path / "run").create(cfg)
    run.log(round_line(1, evaluated=False))
    run.close()
    RunDir(tmp_path / "run").reopen(cfg, run.metrics_bytes()).log(round_line(2, evaluated=False))
    client, mlrun = mlflow_run(uri)
    assert mlflow_history(client, mlrun, "round_time_s") == approx([(1, 5.0), (2, 6.0)])
    assert tensorboard_scalars(run.path)["round_time_s"] == approx([(1, 5.0), (2, 6.0)])


def test_an_unreachable_mlflow_server_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = build_config("tiny", overrides={"tracking": {"mlflow_uri": "http://127.0.0.1:9"}})
    run = RunDir(tmp_path / "run").create(cfg)
    run.log(round_line(1, evaluated=True))
    run.write_results({"rounds": 1, "mean_dice": 0.4, "sites": {}})
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("pedseg: warning: MLflow tracking is off for this run: ")
    assert len(run.metrics_path.read_text(encoding="utf-8").splitlines()) == 1 and (run.path / "results.json").is_file()
    assert tensorboard_scalars(run.path)["mean_dice"] == approx([(1, 0.4)])


def test_a_tensorboard_failure_does_not_end_the_run(tmp_path, capsys):
    run = RunDir(tmp_path / "run").create(build_config("tiny"))
    run.tracker.backends[0].writer.close()
    run.tracker.backends[0].writer = None  # a broken writer
    run.log(round_line(1, evaluated=False))
    run.log(round_line(2, evaluated=False))
    assert capsys.readouterr().err.count("TensorBoard tracking is off") == 1
    assert len(run.metrics_path.read_text(encoding="utf-8").splitlines()) == 2


@pytest.mark.parametrize("uri", ["mlruns", "file://", "http:/nohost", "ftp://host/x", "file:///a b"])
def test_a_malformed_mlflow_uri_fails_early(uri):
    with pytest.raises(PedsegError, match="tracking.mlflow_uri must be an MLflow tracking URI") as err:
        build_config("tiny", overrides={"tracking": {"mlflow_uri": uri}})
    assert "\n" not in str(err.value)


def test_tracking_settings_travel_as_overrides_and_old_configs_load():
    uri = "file:///tmp/x/mlruns"
    cfg = config_from_run_config({"preset": "tiny", "overrides": f"train.epochs=3 tracking.mlflow_uri={uri}"})
    assert cfg.tracking.mlflow_uri == uri and cfg.train.epochs == 3
    assert config_from_run_config({"overrides": "tracking.mlflow_uri="}).tracking.mlflow_uri == ""
    assert build_config("tiny", overrides={"tracking": {"mlflow_uri": "http://host:5000"}}).tracking.tensorboard
    old = build_config("tiny").to_dict()
    del old["tracking"]
    assert config_from_dict(old).tracking == build_config("tiny").tracking


def test_tensorboard_can_be_switched_off(tmp_path):
    run = RunDir(tmp_path / "run").create(build_config("tiny", overrides={"tracking": {"tensorboard": False}}))
    run.log(round_line(1, evaluated=False))
    assert not (run.path / "tensorboard").exists() and run.metrics_bytes() > 0


def test_mlflow_option_becomes_an_absolute_tracking_uri(tmp_path, monkeypatch):
    """`--mlflow` takes a folder or any MLflow URI; a folder or relative file: URI is made absolute (a
    federation's ServerApp runs elsewhere) with spaces encoded (overrides travel split on spaces)."""
    from pedseg.options import mlflow_settings

    monkeypatch.chdir(tmp_path)
    folder = (tmp_path / "ml runs").as_uri()
    assert mlflow_settings("ml runs") == mlflow_settings("file:ml runs") == [f"tracking.mlflow_uri={folder}"]
    assert " " not in folder
    for uri in ("file:///srv/mlruns", "http://mlflow.hospital:5000", "databricks", "sqlite:///mlflow.db"):
        assert mlflow_settings(uri) == [f"tracking.mlflow_uri={uri}"]
    assert mlflow_settings(None) == []
