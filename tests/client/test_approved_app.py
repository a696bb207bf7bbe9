"""The launcher's approval check around Flower's FAB installer: an app not listed is refused before it is
installed; an approved one is installed, and then its own copy of pedseg's packages is what gets imported,
not the launcher's installed one."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys

import pytest

from client.approved_app import AppNotApproved, approval_check, launcher_env
from flower_common import flower_patches
from flower_common.flower_patches import STOCK_FLOWER_ENV
from pedseg_core.errors import PedsegError


@pytest.fixture
def isolated_imports():
    """Undo what the test does to sys.modules and sys.path (the rest of the session keeps pedseg's modules)."""
    modules, path = dict(sys.modules), list(sys.path)
    yield
    sys.modules.clear()
    sys.modules.update(modules)
    sys.path[:] = path


def test_an_approved_app_runs_its_own_copy_and_a_refused_one_is_never_installed(tmp_path, isolated_imports):
    app = tmp_path / "installed-app"
    (app / "client").mkdir(parents=True)
    (app / "client" / "__init__.py").write_text("", encoding="utf-8")
    (app / "client" / "marker.py").write_text("FROM_THE_APP = True\n", encoding="utf-8")
    fab = b"the app's bytes"
    installs = []

    def install(content, *args, **kwargs):  # stands in for Flower's installer: it unpacked the app into `app`
        installs.append(content)
        return app

    policy = tmp_path / "policy.yaml"
    policy.write_text(f"approved_apps:\n  - {hashlib.sha256(fab).hexdigest()}\n", encoding="utf-8")
    check = approval_check("ankle", policy, tmp_path, install)
    with pytest.raises(AppNotApproved, match="refused the app .*: it is not among the approved_apps"):
        check(b"another app")
    assert installs == []  # refused before installing
    assert "client" in sys.modules  # the launcher's own import of pedseg
    assert check(fab) == app and installs == [fab]
    assert not [name for name in sys.modules if name.split(".")[0] == "client"]
    sys.path.insert(0, str(app))  # as Flower's loader does with the app's folder
    assert importlib.import_module("client.marker").FROM_THE_APP
    assert sys.modules["client"].__file__.startswith(str(app))


def test_the_worker_is_on_the_supernodes_path_unless_flower_runs_stock(tmp_path, monkeypatch):
    monkeypatch.delenv(STOCK_FLOWER_ENV, raising=False)
    monkeypatch.setattr(flower_patches, "flower_version", lambda: "1.41.0")
    env = launcher_env({"PATH": "/usr/bin"}, tmp_path / "bin", "ankle", None, tmp_path)
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "bin") and env["PEDSEG_SITE"] == "ankle"
    monkeypatch.setenv(STOCK_FLOWER_ENV, "1")  # stock: Flower's own flower-superexec, one flwr-clientapp a message
    assert launcher_env({"PATH": "/usr/bin"}, tmp_path / "bin", "ankle", None, tmp_path) == {"PATH": "/usr/bin"}


@pytest.mark.parametrize(("stock", "version"), [("1", "1.41.0"), ("", "1.42.0")])
def test_a_site_that_approves_apps_refuses_to_start_on_stock_flower(tmp_path, monkeypatch, stock, version):
    """Stock Flower's flwr-clientapp installs whatever FAB it is sent: the approval could not be kept."""
    monkeypatch.setenv(STOCK_FLOWER_ENV, stock)
    monkeypatch.setattr(flower_patches, "flower_version", lambda: version)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"approved_apps:\n  - {hashlib.sha256(b'app').hexdigest()}\n", encoding="utf-8")
    refused = r"^site ankle: .*policy.yaml lists approved_apps, which stock Flower"
    refused += r" \((PEDSEG_STOCK_FLOWER=1|flwr 1.42.0)"
    with pytest.raises(PedsegError, match=refused):
        launcher_env({"PATH": "/usr/bin"}, tmp_path / "bin", "ankle", policy, tmp_path)
