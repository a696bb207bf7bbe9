"""Option parsing the `pedseg` subcommands share: --data JOINT=DIR and SITE:JOINT=DIR, a YAML config as
overrides, the options of a training run, and --mlflow."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from pedseg_core.errors import PedsegError

SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # names files and processes of the site


def parse_data_args(values: Sequence[str]) -> dict[str, Path]:
    """["knee=/data/knee", ...] -> {"knee": Path("/data/knee")}, refusing malformed or repeated names."""
    data: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise PedsegError(f"--data {value}: expected JOINT=DIR, e.g. --data knee=/data/knee")
        if name in data:
            raise PedsegError(f"--data {value}: '{name}' is given twice")
        data[name] = Path(path)
    return data


def parse_site_args(values: Sequence[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """["knee-a:knee=/d/a", "ankle=/d/ankle"] -> ({site: dir}, {site: joint}); a site without ":JOINT" is
    named after its joint."""
    data = parse_data_args(values)
    sites, joints = {}, {}
    for name, path in data.items():
        site, _, joint = name.partition(":")
        if not SITE_NAME.fullmatch(site):
            raise PedsegError(f"--data {name}={path}: site name '{site}' may hold only letters, digits, '.', '_' "
                              "and '-'")
        if site in sites:
            raise PedsegError(f"--data {name}={path}: site '{site}' is given twice")
        sites[site], joints[site] = path, joint or site
    return sites, joints


def flatten_options(values: dict, prefix: str = "") -> list[str]:
    """{"train": {"epochs": 3}} -> ["train.epochs=3"] (values as compact JSON, which YAML reads back)."""
    pairs = []
    for key, value in values.items():
        if isinstance(value, dict):
            pairs += flatten_options(value, f"{prefix}{key}.")
        else:
            pairs.append(f"{prefix}{key}={json.dumps(value, separators=(',', ':'))}")
    return pairs


def run_options(required: bool) -> argparse.ArgumentParser:
    """The options of a training run: data, run directory and configuration (`federate --resume` needs neither
    data nor a new run directory)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", action="append", required=required, metavar="JOINT=DIR",
                        help="a joint's nnU-Net dataset; repeat for each joint")
    common.add_argument("--out", required=required, metavar="RUN", help="new run directory")
    common.add_argument("--preset", default="small", help="tiny | demo | small | paper")
    common.add_argument("--config", metavar="YAML", help="YAML file overriding the preset")
    common.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one option, e.g. --set train.epochs=5")
    common.add_argument("--mlflow", metavar="URI", help="also log to this MLflow tracking server or store (a local "
                        "folder or file: URI works offline; default: TensorBoard in RUN/tensorboard/ only)")
    return common


def mlflow_settings(uri: str | None) -> list[str]:
    """--mlflow URI -> the `tracking.mlflow_uri` override; a folder or relative file: URI made absolute (a
    federation's ServerApp runs in another working directory), spaces encoded."""
    if not uri:
        return []
    scheme = urlparse(uri).scheme
    if uri != "databricks" and (not scheme or scheme == "file" and not uri.startswith("file:///")):
        uri = Path(uri.removeprefix("file:")).resolve().as_uri()
    return [f"tracking.mlflow_uri={uri}"]
