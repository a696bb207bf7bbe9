"""The site runs only code it approved: the check its warm worker (`client.site_worker`) makes on every app.

A check inside the app (the FAB the federation sends) would attest itself, so it runs outside: Flower's SuperNode
starts its task executor as `flower-superexec` found on PATH, and `pedseg-client` puts pedseg's worker first on
its SuperNode's PATH under that name. Before a FAB is installed (so before any of its code runs), its sha256 is
checked against what the site approved: the `approved_apps` of its policy where it lists them (an empty list
approves nothing); otherwise only the app whose content is the site's own installed pedseg (`own_app_hash`, computed
when `pedseg-client` starts) and those `--approve-app` names (`pedseg federate --local` names the app it builds);
`--allow-any-app` is the explicit, warned opt-out. A FAB not approved is refused: the task replies with an error
that names the app (the run's log shows it), prints one line to the site's log and writes an `app` line (with the
error) to its audit log. An approved FAB is installed into a fresh folder named by its full sha256 (Flower's own
`apps/` folder is named by a short hash, and an existing one is reused unchecked) and loaded from there; the
modules the worker imported from pedseg's own installation are forgotten before Flower imports the app.

Flower's own mechanism (`flower-supernode --trusted-entities` with signed FABs) needs signatures that only
Flower's Hub attaches (docs/decisions/0008-approved-apps-outside-the-app.md), so it cannot serve an offline
federation. Where Flower runs stock (`flower_common.flower_patches.stock_flower_reason`: PEDSEG_STOCK_FLOWER=1 or
another flwr), the site runs Flower's own `flwr-clientapp`, which installs any FAB it is sent: a site then refuses
to start unless it runs with `--allow-any-app`.

Environment (set by `pedseg-client`): PEDSEG_SITE, PEDSEG_POLICY (a YAML file or empty), PEDSEG_STATE_DIR,
PEDSEG_APPROVED_APPS (the apps approved where the policy lists none: sha256s joined by commas, or `any`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from flower_common.flower_patches import stock_flower_reason
from pedseg_core.audit import AUDIT_FILE, append_line
from pedseg_core.errors import PedsegError
from pedseg_core.policy import SitePolicy, load_policy
from pedseg_core.private_dirs import make_private_dir


class AppNotApproved(PedsegError):
    """The FAB the federation sent is not among the site's approved apps."""


APP_PACKAGES = ("pedseg", "pedseg_core", "server", "client", "flower_common", "simulations")
INSTALLED_PYPROJECT = "share/pedseg/pyproject.toml"  # the app's pyproject.toml in a wheel (its data-files)
APPROVED_APPS_ENV = "PEDSEG_APPROVED_APPS"
ANY_APP = "any"  # PEDSEG_APPROVED_APPS of a site started with --allow-any-app
FAB_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def app_hash(app_dir: Path) -> str:
    """sha256 of the FAB that `flwr run APP_DIR` builds and sends (Flower builds it byte for byte the same)."""
    return hashlib.sha256(build_fab_from_disk(Path(app_dir))).hexdigest()


def own_app_hash() -> str:
    """`app_hash` of pedseg's own app (`own_app`): the same for a clone and a wheel install."""
    with own_app() as app:
        return app_hash(app)


@contextlib.contextmanager
def own_app() -> Iterator[Path]:
    """pedseg's own Flower app, for `flwr run` and `app_hash`: a private temporary folder holding its packages and
    its pyproject.toml (a clone's, or the one a wheel installs, which has no project folder), all the FAB holds
    (its `fab-include`). A snapshot: the app a launcher sends is the one whose hash it took, whatever changes in
    the clone meanwhile; and a clone's other folders (.venv) are never walked."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    with tempfile.TemporaryDirectory(prefix="pedseg-app-") as folder:
        app = Path(folder)
        shutil.copyfile(pyproject if pyproject.is_file() else installed_pyproject(), app / "pyproject.toml")
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


def default_approvals(policy: SitePolicy, policy_path: Path | None, approve: Sequence[str], allow_any: bool
                      ) -> frozenset[str] | None:
    """The apps this site runs where its policy lists no approved_apps: its own installed pedseg's and those of
    `approve` (--approve-app); None (any app) with `allow_any` (--allow-any-app). PedsegError for a malformed
    hash, or for either option beside a policy that lists approved_apps (that list is the site's whole say)."""
    for digest in approve:
        if not FAB_SHA256.match(digest):
            raise PedsegError(f"--approve-app {digest}: not a sha256 (64 lowercase hex digits, "
                              "`pedseg-client app-hash APP_DIR`)")
    if policy.approved_apps is not None:
        for option, given in (("--allow-any-app", allow_any), ("--approve-app", bool(approve))):
            if given:
                raise PedsegError(f"{option}: {policy_path} lists approved_apps, the apps this site runs: "
                                  f"list the app there or drop {option}")
        return frozenset()
    return None if allow_any else frozenset({own_app_hash(), *approve})


def approves(policy: SitePolicy, defaults: frozenset[str] | None, digest: str) -> bool:
    """Whether the site runs the app `digest`: its policy's approved_apps where it lists them, else `defaults`
    (`default_approvals`; None: any app)."""
    if policy.approved_apps is not None:
        return policy.approves(digest)
    return defaults is None or digest in defaults


def encode_approvals(defaults: frozenset[str] | None) -> str:
    return ANY_APP if defaults is None else ",".join(sorted(defaults))


def decode_approvals(value: str) -> frozenset[str] | None:
    """PEDSEG_APPROVED_APPS as `encode_approvals` wrote it; unset or empty approves nothing."""
    return None if value == ANY_APP else frozenset(v for v in value.split(",") if v)


def approval_check(site: str, policy_path: Path | None, state_dir: Path | None, defaults: frozenset[str] | None,
                   apps_root: Path, install: Callable[..., object]) -> Callable[[bytes], Path]:
    """`install` (Flower's FAB installer) behind the site's approval (`approves`; AppNotApproved for a FAB it
    does not approve): an approved FAB goes into a fresh `apps_root/SHA256` (any earlier content there is
    removed first); returns the folder of the installed app."""

    def install_if_approved(fab_content: bytes) -> Path:
        digest = hashlib.sha256(fab_content).hexdigest()
        policy = load_policy(policy_path)
        if not approves(policy, defaults, digest):
            why = (f"it is not among the approved_apps of {policy_path}" if policy.approved_apps is not None
                   else "the site runs only its own pedseg's app and those it was told to approve (--approve-app)")
            message = f"site {site}: refused the app {digest}: {why}; no code of it ran"
            print(f"pedseg-client: {message}", file=sys.stderr, flush=True)
            if state_dir is not None:
                append_line(make_private_dir(state_dir) / AUDIT_FILE,
                            {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": None, "round": None,
                             "type": "app", "error": message, "fab_sha256": digest})
            raise AppNotApproved(message)
        folder = apps_root / digest
        shutil.rmtree(folder, ignore_errors=True)
        installed = Path(install(fab_content, install_dir=folder, skip_prompt=True))
        forget_modules_of(installed)
        return installed

    return install_if_approved


def forget_modules_of(app_dir: Path) -> None:
    """Drop the modules the worker imported from pedseg's own installation whose packages the app also
    holds (client, pedseg_core, ...), so that Flower imports them from the approved app, not from here."""
    own = {path.stem for path in app_dir.iterdir() if path.is_dir() or path.suffix == ".py"}
    for name in [name for name in sys.modules if name.split(".")[0] in own]:
        del sys.modules[name]


def launcher_env(env: dict[str, str], bin_dir: Path, site: str, policy: Path | None, state_dir: Path,
                 defaults: frozenset[str] | None) -> dict[str, str]:
    """`env` (a SuperNode's) with `bin_dir` (the worker's launcher) first on PATH and what the check needs
    (`defaults`: `default_approvals`); where Flower runs stock, `env` as it is (Flower's own task executor) for a
    site that runs any app (--allow-any-app), else PedsegError: stock Flower cannot keep a site to its apps."""
    stock = stock_flower_reason()
    if stock is None:
        return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "PEDSEG_SITE": site,
                "PEDSEG_POLICY": str(policy or ""), "PEDSEG_STATE_DIR": str(state_dir),
                APPROVED_APPS_ENV: encode_approvals(defaults)}
    if load_policy(policy).approved_apps is not None:
        raise PedsegError(f"site {site}: {policy} lists approved_apps, which stock Flower ({stock}) cannot enforce "
                          f"(its flwr-clientapp runs any app it is sent): unset PEDSEG_STOCK_FLOWER (flwr 1.41.x) "
                          f"or remove approved_apps")
    if defaults is not None:
        raise PedsegError(f"site {site}: stock Flower ({stock}) cannot keep this site to its own pedseg's app (its "
                          f"flwr-clientapp runs any app it is sent): unset PEDSEG_STOCK_FLOWER (flwr 1.41.x) or "
                          f"start the site with --allow-any-app")
    return env
