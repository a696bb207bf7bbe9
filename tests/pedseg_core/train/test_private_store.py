"""A site's run folder closes after its run's last evaluation: a request naming it again (an earlier
`federation-run`) loads and writes nothing there, so a finished run's model.pt is never overwritten."""

from __future__ import annotations

import pytest
import torch

from pedseg_core.torch_files import save_atomically
from pedseg_core.train.private_store import PrivateStore, RunFolderClosed


def test_a_finished_run_folder_is_neither_loaded_nor_written(tmp_path, capsys):
    store = PrivateStore(tmp_path / "state", "7")
    store.save({"head": torch.zeros(2)})
    save_atomically(store.model_path, {"format": "test"})
    store.finish()
    model = store.path.parent / "model.pt"
    before = model.read_bytes()
    later = PrivateStore(tmp_path / "state", "7")  # a later request naming the same federation-run
    with pytest.raises(RunFolderClosed) as refused:
        later.require_open()
    assert str(refused.value).startswith("federation-run 7: that run has finished")
    assert str(tmp_path) not in str(refused.value)  # no path in the reply; the site's log has it
    assert str(store.path.parent) in capsys.readouterr().err
    for write in (lambda: later.save({"head": torch.ones(2)}), lambda: later.model_path,
                  lambda: later.save_optimizer({}), lambda: later.save_sent(9, {}, 1)):
        with pytest.raises(RunFolderClosed):
            write()
    assert model.read_bytes() == before
    PrivateStore(tmp_path / "state", "8").save({"head": torch.ones(2)})  # another run's folder is its own
