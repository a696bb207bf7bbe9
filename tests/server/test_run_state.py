"""The server's state after a round: written atomically (in the background, in order), read back whole; one clear
line when there is none."""

from __future__ import annotations

import pytest
import torch

from pedseg_core.errors import PedsegError
from server.run_state import RunState, StateWriter, load_run_state, save_run_state, state_path


def test_the_state_reads_back_as_written(tmp_path):
    state = RunState("123", 4, {"w": torch.arange(6.0).reshape(2, 3)}, {"awaiting_evaluation": "null"},
                     union={"background": 0, "tibia": 1}, offsets={"ankle": 0}, prior={"p": torch.ones(2)},
                     metrics_bytes=512)
    save_run_state(tmp_path, state)
    back = load_run_state(tmp_path)
    assert (back.federation_run, back.completed_round, back.metrics_bytes) == ("123", 4, 512)
    assert torch.equal(back.arrays["w"], state.arrays["w"]) and torch.equal(back.prior["p"], torch.ones(2))
    assert back.union == state.union and back.offsets == {"ankle": 0} and back.strategy == state.strategy
    assert not list(tmp_path.rglob("*.tmp"))  # the temporary file was renamed into place


def test_nothing_to_resume_is_one_clear_line(tmp_path):
    with pytest.raises(PedsegError, match="stopped before its first checkpoint; start it anew"):
        load_run_state(tmp_path)
    state_path(tmp_path).parent.mkdir(parents=True)
    state_path(tmp_path).write_bytes(b"not a checkpoint")
    with pytest.raises(PedsegError, match="cannot read the server state"):
        load_run_state(tmp_path)
    torch.save({"format": "something else"}, state_path(tmp_path))
    with pytest.raises(PedsegError, match="not a pedseg server state"):
        load_run_state(tmp_path)
    (tmp_path / "results.json").write_text("{}", encoding="utf-8")
    with pytest.raises(PedsegError, match="already completed"):
        load_run_state(tmp_path)


def test_states_written_in_the_background_land_in_order_as_they_were_when_saved(tmp_path):
    writer = StateWriter(tmp_path)
    state = RunState("123", 0, {"w": torch.zeros(3)}, {})
    for completed in (1, 2, 3):
        state.completed_round, state.arrays = completed, {"w": torch.full((3,), float(completed))}
        writer.save(state)
    state.completed_round = 99  # changed after the last save: not what was saved
    writer.close()
    back = load_run_state(tmp_path)
    assert back.completed_round == 3 and torch.equal(back.arrays["w"], torch.full((3,), 3.0))


def test_a_background_write_that_fails_raises_when_the_run_waits_for_it(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the folder goes", encoding="utf-8")
    writer = StateWriter(tmp_path)
    writer.save(RunState("123", 1, {}, {}))
    with pytest.raises(OSError):
        writer.close()
