"""What the launchers decide and show without starting Flower: the quorum from the typed configuration, the
progress a run prints off a terminal (stage 1 included), the ServerApp log without colour codes, and
`pedseg federate --local --resume` accepted."""

from __future__ import annotations

import io
import os
import sys

import pytest

from flower_common.run_config import config_from_run_config
from pedseg.cli import main as pedseg
from pedseg_core.errors import PedsegError
from pedseg_core.progress import StepProgress
from pedseg_core.train.metrics_line import MetricsLine
from simulations.local import LocalFederation, RunProgress, ServerLog, with_quorum
from simulations.reproduce import Cell, fold_config


def test_the_quorum_is_every_valid_site_unless_the_configuration_sets_one():
    assert with_quorum(config_from_run_config({"preset": "tiny"}), ["a", "b", "c"]).federation.min_nodes == 3
    asked = config_from_run_config({"preset": "tiny", "min-sites": 2})
    assert with_quorum(asked, ["a", "b", "c"]).federation.min_nodes == 2 and asked.federation.min_nodes == 2
    with pytest.raises(PedsegError, match=r"--min-sites 2: only 1 site\(s\) have a valid dataset"):
        with_quorum(asked, ["a"])


def test_progress_off_a_terminal_is_one_line_per_step(capsys):
    bar = StepProgress("federated training", 3, "round")
    for done in (0, 1, 1, 3):
        bar.show(done)
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["federated training: 1 of 3 rounds",
                                                    "federated training: 3 of 3 rounds"]


def test_the_server_log_loses_its_colour_codes_and_tells_which_round_began(tmp_path):
    log = ServerLog(tmp_path / "serverapp.log")
    log.copy(io.StringIO("\x1b[92mINFO \x1b[0m:      [ROUND 1/4]\n\x1b[92mINFO \x1b[0m:      [ROUND 2/4]\n"))
    assert log.path.read_text(encoding="utf-8") == "INFO :      [ROUND 1/4]\nINFO :      [ROUND 2/4]\n"
    assert log.round_begun == 2


def test_stage_one_shows_progress_before_it_logs_its_rounds(tmp_path, capsys):
    log = ServerLog(tmp_path / "serverapp.log")
    progress = RunProgress(prior_rounds=4, rounds=2, enabled=True)
    log.round_begun = 3  # stage 1's third round running: two ended; metrics.jsonl holds nothing yet
    progress.show([], log)
    prior = [MetricsLine(stage="prior", round=r) for r in range(1, 5)]
    progress.show([*prior, MetricsLine(round=1, sites={})], log)
    progress.close()
    assert capsys.readouterr().err.splitlines() == ["stage 1 (shape prior): 2 of 4 rounds",
                                                    "stage 1 (shape prior): 4 of 4 rounds",
                                                    "federated training: 1 of 2 rounds"]


def test_local_resume_is_accepted_and_simulation_resume_refused(tmp_path, capsys):
    assert pedseg(["federate", "--local", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/federation.json: not found" in capsys.readouterr().err
    assert pedseg(["federate", "--simulation", "--resume", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_process_log_holds_no_colour_codes(tmp_path):
    """Flower's logger colours its level names in every process (RUN/logs/site-*.log, superlink.log)."""
    fed = LocalFederation(tmp_path)
    fed.start("coloured", [sys.executable, "-c", r"print('\x1b[92mINFO \x1b[0m:      ready')"], dict(os.environ))
    fed.processes["coloured"].wait(timeout=60)
    fed.stop_all()
    assert fed.logs["coloured"].read_text(encoding="utf-8").splitlines()[-1] == "INFO :      ready"


def test_a_reproduction_cell_is_configured_from_its_yaml_file_its_overrides_then_its_fold_and_scheme(tmp_path):
    path = tmp_path / "cells.yaml"
    path.write_text("scheme: shared\ntrain: {epochs: 3, steps_per_epoch: 4}\ndata: {folds: 1}\n", encoding="utf-8")
    cfg = fold_config("tiny", path, {"train": {"epochs": 5}}, 3, 2, Cell("full", "fedprox"))
    assert (cfg.train.epochs, cfg.train.steps_per_epoch, cfg.data.folds, cfg.data.fold) == (5, 4, 3, 2)
    assert (cfg.scheme, cfg.federation.strategy) == ("full", "fedprox")
