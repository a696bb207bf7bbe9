"""A site's state folder, its run folders and every file the site writes into them are its account's alone."""

import os
import stat

import torch

from pedseg_core.atomic_files import write_atomically
from pedseg_core.private_dirs import make_private_dir
from pedseg_core.torch_files import save_atomically
from pedseg_core.train.private_store import PrivateStore


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_store_writes_private_folders_and_files(tmp_path):
    old = os.umask(0o022)  # the usual umask: world-readable unless made private
    try:
        state = tmp_path / "state"
        state.mkdir()  # made by someone else, readable by all: tightened on the first write
        store = PrivateStore(state, "7")
        store.save({"head": torch.zeros(2)})
        store.save_optimizer({"step": 1})
        store.save_sent(1, {"shared": {"w": torch.ones(3)}}, 12)
        save_atomically(store.model_path, {"format": "test"})
    finally:
        os.umask(old)
    run = state / "run-7"
    assert {path.name: _mode(path) for path in [state, run, run / "sent"]} == \
        {"state": 0o700, "run-7": 0o700, "sent": 0o700}
    files = sorted(path for path in state.rglob("*") if path.is_file())
    assert [path.name for path in files] == ["model.pt", "optimizer.pt", "private.pt", "round-001.pt"]
    assert {path.name: _mode(path) for path in files} == {path.name: 0o600 for path in files}


def test_make_private_dir_creates_and_tightens(tmp_path):
    made = make_private_dir(tmp_path / "a" / "b")
    assert _mode(made) == 0o700 and _mode(tmp_path / "a") == 0o700
    (tmp_path / "open").mkdir(mode=0o755)
    assert _mode(make_private_dir(tmp_path / "open")) == 0o700


def test_files_outside_private_folders_keep_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        tmp_path.chmod(0o755)
        write_atomically(tmp_path / "out" / "report.txt", lambda tmp: tmp.write_text("ok"))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "out") == 0o755 and _mode(tmp_path / "out" / "report.txt") == 0o644
