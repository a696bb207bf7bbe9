"""The run directory: a new one refuses to overwrite a run; a continued one keeps its settings and its
completed rounds' lines."""

from __future__ import annotations

import pytest

from pedseg_core.config import build_config
from pedseg_core.errors import PedsegError
from pedseg_core.train.run_dir import RunDir


def test_a_new_run_directory_refuses_an_existing_run(tmp_path):
    RunDir(tmp_path / "run").create(build_config("tiny"))
    with pytest.raises(PedsegError, match="already holds a run"):
        RunDir(tmp_path / "run").create(build_config("tiny"))


def test_a_continued_run_cuts_the_lines_after_its_checkpoint(tmp_path):
    cfg = build_config("tiny")
    run = RunDir(tmp_path / "run").create(cfg)
    run.log({"round": 1})
    checkpoint = run.metrics_bytes()
    run.log({"round": 2})  # written after the last server state: this round is trained again
    RunDir(tmp_path / "run").reopen(cfg, checkpoint).log({"round": 2, "again": True})
    assert run.metrics_path.read_text(encoding="utf-8").splitlines() == ['{"round": 1}', '{"round": 2, "again": true}']


def test_a_continued_run_refuses_other_settings_naming_them(tmp_path):
    RunDir(tmp_path / "run").create(build_config("tiny"))
    other = build_config("tiny", overrides={"train": {"batch_size": 2}, "federation": {"rounds": 9}})
    with pytest.raises(PedsegError, match=r"other settings \(federation.rounds, train.batch_size\)"):
        RunDir(tmp_path / "run").reopen(other, 0)
