"""The site runs only code it approved: the check its warm worker (`client.site_worker`) makes on every app.

A check inside the app (the FAB the federation sends) would attest itself, so it runs outside: Flower's SuperNode
starts its task executor as `flower-superexec` found on PATH, and `pedseg-client` puts pedseg's worker first on
its SuperNode's PATH under that name. Before a FAB is installed (so before any of its code runs), its sha256 is
checked against `approved_apps` in the site's policy. A FAB not on the list is refused: the task replies with an
error that names the app (the run's log shows it), prints one line to the site's log and writes an `app` line
(with the error) to its audit log. An approved FAB is what runs: the modules the worker imported from pedseg's
own installation are forgotten before Flower imports the app from the FAB's folder.

Flower's own mechanism (`flower-supernode --trusted-entities` with signed FABs) needs signatures that only
Flower's Hub attaches (docs/decisions/0008-approved-apps-outside-the-app.md), so it cannot serve an offline
federation. Where Flower runs stock (`flower_common.flower_patches.stock_flower_reason`: PEDSEG_STOCK_FLOWER=1 or
another flwr), the site runs Flower's own `flwr-clientapp`, which installs any FAB it is sent: a site whose policy
lists approved_apps then refuses to start.

Environment (set by `pedseg-client`): PEDSEG_SITE, PEDSEG_POLICY (a YAML file or empty), PEDSEG_STATE_DIR.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from flower_common.flower_patches import stock_flower_reason
from pedseg_core.audit import AUDIT_FILE
from pedseg_core.errors import PedsegError
from pedseg_core.policy import load_policy


class AppNotApproved(PedsegError):
    """The FAB the federation sent is not among the site's approved apps."""


APP_PACKAGES = ("pedseg", "pedseg_core", "server", "client", "flower_common", "simulations")
INSTALLED_PYPROJECT = "share/pedseg/pyproject.toml"  # the app's pyproject.toml in a wheel (its data-files)


def app_hash(app_dir: Path) -> str:
    """sha256 of the FAB that `flwr run APP_DIR` builds and sends (Flower builds it byte for byte the same)."""
    return hashlib.sha256(build_fab_from_disk(Path(app_dir))).hexdigest()


@contextlib.contextmanager
def own_app() -> Iterator[Path]:
    """The folder of pedseg's own Flower app, for `flwr run` and `app_hash`: a clone's project folder (its
    pyproject.toml holds [tool.flwr.app]); for an installed wheel, which has no project folder, a private
    temporary folder holding the installed packages and the pyproject.toml the wheel installs."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="pedseg-app-") as folder:
        app = Path(folder)
        shutil.copyfile(installed_pyproject(), app / "pyproject.toml")
        for package in APP_PACKAGES:
            shutil.copytree(root / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
        yield app


def installed_pyproject() -> Path:
    """The app's pyproject.toml as the installed pedseg distribution lists it; PedsegError when it has none."""
    try:
        dist = distribution("pedseg")
    except PackageNotFoundError:
        dist = None
    listed = [f for f in (dist.files or []) if f.as_posix().endswith(INSTALLED_PYPROJECT)] if dist else []
    if not listed:
        raise PedsegError(f"pedseg's installation has no {INSTALLED_PYPROJECT}, so its Flower app cannot be "
                          "built: install pedseg from its wheel (make wheelhouse) or from a clone")
    return Path(dist.locate_file(listed[0]))


def approval_check(site: str, policy_path: Path | None, state_dir: Path | None,
                   install: Callable[..., object]) -> Callable[..., object]:
    """`install` (Flower's FAB installer) behind the site's approval: AppNotApproved for a FAB not listed."""

    def install_if_approved(fab_content: bytes, *args, **kwargs):
        digest = hashlib.sha256(fab_content).hexdigest()
        policy = load_policy(policy_path)
        if not policy.approves(digest):
            message = (f"site {site}: refused the app {digest}: it is not among the approved_apps of "
                       f"{policy_path}; no code of it ran")
            print(f"pedseg-client: {message}", file=sys.stderr, flush=True)
            if state_dir is not None:
                with (state_dir / AUDIT_FILE).open("a", encoding="utf-8") as log:
                    log.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": None, "round": None,
                                          "type": "app", "error": message, "fab_sha256": digest}) + "\n")
            raise AppNotApproved(message)
        installed = Path(install(fab_content, *args, **kwargs))
        forget_modules_of(installed)
        return installed

    return install_if_approved


def forget_modules_of(app_dir: Path) -> None:
    """Drop the modules the worker imported from pedseg's own installation whose packages the app also
    holds (client, pedseg_core, ...), so that Flower imports them from the approved app, not from here."""
    own = {path.stem for path in app_dir.iterdir() if path.is_dir() or path.suffix == ".py"}
    for name in [name for name in sys.modules if name.split(".")[0] in own]:
        del sys.modules[name]


def launcher_env(env: dict[str, str], bin_dir: Path, site: str, policy: Path | None, state_dir: Path
                 ) -> dict[str, str]:
    """`env` (a SuperNode's) with `bin_dir` (the worker's launcher) first on PATH and what the check needs; where
    Flower runs stock, `env` as it is (Flower's own task executor), or PedsegError if the policy lists
    approved_apps, which stock Flower cannot enforce."""
    stock = stock_flower_reason()
    if stock is None:
        return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "PEDSEG_SITE": site,
                "PEDSEG_POLICY": str(policy or ""), "PEDSEG_STATE_DIR": str(state_dir)}
    if load_policy(policy).approved_apps is not None:
        raise PedsegError(f"site {site}: {policy} lists approved_apps, which stock Flower ({stock}) cannot enforce "
                          f"(its flwr-clientapp runs any app it is sent): unset PEDSEG_STOCK_FLOWER (flwr 1.41.x) "
                          f"or remove approved_apps")
    return env
