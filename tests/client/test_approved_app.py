"""The launcher's approval check around Flower's FAB installer: an app not listed is refused before it is
installed; an approved one is installed, and then its own copy of pedseg's packages is what gets imported,
not the launcher's installed one."""

from __future__ import annotations

import hashlib
import importlib
import sys

import pytest

from client.approved_app import AppNotApproved, approval_check


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
