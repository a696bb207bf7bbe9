"""The launcher's approval check around Flower's FAB installer: an app not approved is refused before it is
installed (by default every app but the site's own installed pedseg's); an approved one is installed into a fresh
folder named by its full sha256, and then its own copy of pedseg's packages is what gets imported, not the
launcher's installed one."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import FAB_HASH_TRUNCATION
from flwr.supercore.fab import Fab
from flwr.supercore.run import Run

from client.approved_app import (
    APP_PACKAGES,
    APPROVED_APPS_ENV,
    AppNotApproved,
    app_hash,
    approval_check,
    default_approvals,
    launcher_env,
    own_app_hash,
)
from client.site_worker import SiteWorker
from flower_common import flower_patches
from flower_common.flower_patches import STOCK_FLOWER_ENV
from pedseg_core.errors import PedsegError
from pedseg_core.policy import SitePolicy
from tests.app_folder import APP_DIR


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

    def install(content, install_dir, skip_prompt):  # stands in for Flower's installer: it unpacked into `app`
        installs.append(content)
        assert install_dir == tmp_path / "apps" / hashlib.sha256(fab).hexdigest() and skip_prompt
        return app

    policy = tmp_path / "policy.yaml"
    policy.write_text(f"approved_apps:\n  - {hashlib.sha256(fab).hexdigest()}\n", encoding="utf-8")
    check = approval_check("ankle", policy, tmp_path, frozenset(), tmp_path / "apps", install)
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
    own = frozenset({"a" * 64})
    env = launcher_env({"PATH": "/usr/bin"}, tmp_path / "bin", "ankle", None, tmp_path, own)
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "bin") and env["PEDSEG_SITE"] == "ankle"
    assert env[APPROVED_APPS_ENV] == "a" * 64
    monkeypatch.setenv(STOCK_FLOWER_ENV, "1")  # stock: Flower's own flower-superexec, one flwr-clientapp a message
    assert launcher_env({"PATH": "/usr/bin"}, tmp_path / "bin", "ankle", None, tmp_path, None) == {"PATH": "/usr/bin"}
    with pytest.raises(PedsegError, match=r"^site ankle: stock Flower .* start the site with --allow-any-app$"):
        launcher_env({"PATH": "/usr/bin"}, tmp_path / "bin", "ankle", None, tmp_path, own)  # it cannot keep to own


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
        launcher_env({"PATH": "/usr/bin"}, tmp_path / "bin", "ankle", policy, tmp_path, frozenset())


def test_a_site_without_an_approval_list_runs_only_its_own_pedseg(tmp_path, capsys):
    """No approved_apps: the app whose content is the site's installed pedseg, and what --approve-app adds;
    any other app is refused before it is installed. --allow-any-app is the explicit opt-out."""
    own = own_app_hash()
    other = hashlib.sha256(b"the operator's other app").hexdigest()
    defaults = default_approvals(SitePolicy(), None, [], allow_any=False)
    assert defaults == {own}
    installs = []
    check = approval_check("ankle", None, tmp_path, defaults, tmp_path / "apps",
                           lambda content, **_: installs.append(content) or tmp_path)
    with pytest.raises(AppNotApproved, match="refused the app .*: the site runs only its own pedseg's app"):
        check(b"the operator's other app")
    assert installs == [] and f"pedseg-client: site ankle: refused the app {other}" in capsys.readouterr().err
    assert default_approvals(SitePolicy(), None, [other], allow_any=False) == {own, other}
    assert default_approvals(SitePolicy(), None, [], allow_any=True) is None


@pytest.mark.parametrize(("approve", "allow_any", "message"), [
    (["abc"], False, r"^--approve-app abc: not a sha256"),
    (["a" * 64], False, r"^--approve-app: .*policy.yaml lists approved_apps"),
    ([], True, r"^--allow-any-app: .*policy.yaml lists approved_apps"),
])
def test_approval_options_a_site_refuses(tmp_path, approve, allow_any, message):
    """A policy's approved_apps are the site's whole list: no option adds to it or lifts it."""
    policy = SitePolicy(approved_apps=("b" * 64,))
    with pytest.raises(PedsegError, match=message):
        default_approvals(policy, tmp_path / "policy.yaml", approve, allow_any)


def test_a_clone_and_a_wheel_install_build_the_same_app(tmp_path):
    """The FAB holds pedseg's packages and pyproject.toml only (fab-include): a clone, with its tests, docs and
    virtual environment, hashes as the folder a wheel install makes (`own_app`: the packages and pyproject.toml)."""
    wheel_like = tmp_path / "app"
    wheel_like.mkdir()
    shutil.copyfile(APP_DIR / "pyproject.toml", wheel_like / "pyproject.toml")
    for package in APP_PACKAGES:
        shutil.copytree(APP_DIR / package, wheel_like / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert app_hash(APP_DIR) == app_hash(wheel_like) == own_app_hash()


def tiny_app(root):
    """A Flower app of one module, whose ClientApp says where it was imported from."""
    app = root / "tiny-app"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "tinyapp"\nversion = "1.0.0"\ndependencies = []\n'
        '[tool.flwr.app]\npublisher = "pedsegtest"\n'
        '[tool.flwr.app.components]\nserverapp = "tiny_app_module:app"\nclientapp = "tiny_app_module:app"\n'
        "[tool.flwr.app.config]\n", encoding="utf-8")
    (app / "tiny_app_module.py").write_text("from flwr.clientapp import ClientApp\napp = ClientApp()\n"
                                            "FROM = 'the approved FAB'\n", encoding="utf-8")
    return app


def test_an_approved_app_is_loaded_from_a_fresh_folder_named_by_its_full_hash(tmp_path, monkeypatch,
                                                                              isolated_imports):
    """Flower reuses an existing apps/ folder of the same short hash without checking it: one planted there (or
    under the full hash, before the install) never runs; the worker loads what the approved FAB holds."""
    fab = build_fab_from_disk(tiny_app(tmp_path))
    digest = hashlib.sha256(fab).hexdigest()
    home = tmp_path / "flwr-home"
    planted = "from flwr.clientapp import ClientApp\napp = ClientApp()\nFROM = 'a planted folder'\n"
    flower_name = f"pedsegtest.tinyapp.1.0.0.{digest[:FAB_HASH_TRUNCATION]}"  # Flower's apps/ folder name
    for folder in (home / "apps" / flower_name, home / "approved-apps" / digest / "apps" / flower_name):
        shutil.copytree(tmp_path / "tiny-app", folder)
        (folder / "tiny_app_module.py").write_text(planted, encoding="utf-8")
    for name, value in {"FLWR_HOME": str(home), "PEDSEG_SITE": "ankle", "PEDSEG_POLICY": "",
                        "PEDSEG_STATE_DIR": str(tmp_path), APPROVED_APPS_ENV: digest}.items():
        monkeypatch.setenv(name, value)
    run = Run.create_empty(1)
    run.fab_id, run.fab_version, run.fab_hash = "pedsegtest/tinyapp", "1.0.0", digest
    SiteWorker("127.0.0.1:1", None, []).load(run, Fab(digest, fab, {}))
    module = sys.modules["tiny_app_module"]
    assert module.FROM == "the approved FAB"
    assert module.__file__.startswith(str(home / "approved-apps" / digest))
