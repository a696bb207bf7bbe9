"""Option parsing the `pedseg` subcommands share: their parser (defaults in --help), --data JOINT=DIR and
SITE:JOINT=DIR, the options of a training run, and --mlflow."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

from pedseg_core.config import DEFAULT_PRESET, PRESETS
from pedseg_core.errors import EXIT_USER_ERROR, PedsegError
from pedseg_core.names import check_name


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """`--help` ends each option's line with its default, unless it has none (unset, a flag) or says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.option_strings or action.nargs in ("?", "*")
        unset = action.default is None or action.default is False or action.default in ([], argparse.SUPPRESS)
        if not shown or unset or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class CommandParser(argparse.ArgumentParser):
    """The parser of `pedseg` and of each of its subcommands: shows defaults in --help, and a usage error as one
    line (exit 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


OPTION_OF_KEY = {"federation.rounds": "--rounds", "federation.strategy": "--strategy",
                 "federation.min_nodes": "--min-sites", "federation.secure_aggregation": "--secure-aggregation"}
OPTIONS_LAYER = "option: "  # how build_config prefixes an error in the options a command passes it


def in_typed_words(err: PedsegError) -> PedsegError:
    """A configuration error about a command-line option in the name the user typed: build_config's
    "option: federation.rounds must be ..." becomes "--rounds must be ..."; any other error as it is."""
    message = str(err)
    if type(err) is not PedsegError or not message.startswith(OPTIONS_LAYER):
        return err
    message = message.removeprefix(OPTIONS_LAYER)
    for key, option in OPTION_OF_KEY.items():
        message = re.sub(rf"(?<![\w.]){re.escape(key)}(?!\w)", option, message)
    return PedsegError(message)


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum` (argparse's error names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _named_paths(values: Sequence[str]) -> dict[str, tuple[str, Path]]:
    """["knee=/data/knee", ...] -> {"knee": ("knee=/data/knee", Path("/data/knee"))}, refusing malformed or
    repeated names."""
    data: dict[str, tuple[str, Path]] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise PedsegError(f"--data {value}: expected JOINT=DIR, e.g. --data knee=/data/knee")
        if name in data:
            raise PedsegError(f"--data {value}: '{name}' is given twice")
        data[name] = (value, Path(path))
    return data


def parse_data_args(values: Sequence[str]) -> dict[str, Path]:
    """["knee=/data/knee", ...] -> {"knee": Path("/data/knee")}, refusing malformed, repeated or invalid names."""
    return {check_name(joint, "joint", f"--data {value}"): path
            for joint, (value, path) in _named_paths(values).items()}


def parse_site_args(values: Sequence[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """["knee-a:knee=/d/a", "ankle=/d/ankle"] -> ({site: dir}, {site: joint}); a site without ":JOINT" is
    named after its joint."""
    sites, joints = {}, {}
    for name, (value, path) in _named_paths(values).items():
        site, _, joint = name.partition(":")
        check_name(site, "site", f"--data {value}")
        check_name(joint or site, "joint", f"--data {value}")
        if site in sites:
            raise PedsegError(f"--data {value}: site '{site}' is given twice")
        sites[site], joints[site] = path, joint or site
    return sites, joints


def run_options(federated: bool) -> argparse.ArgumentParser:
    """The options of a training run: data, run directory and configuration (a federation's sites may share a
    joint; `federate --resume` needs neither data nor a new run directory)."""
    common = argparse.ArgumentParser(add_help=False)
    if federated:
        common.add_argument("--data", action="append", metavar="[SITE:]JOINT=DIR",
                            help="a site's nnU-Net dataset; repeat for each site (a site without SITE: is named "
                                 "after its joint)")
    else:
        common.add_argument("--data", action="append", required=True, metavar="JOINT=DIR",
                            help="a joint's nnU-Net dataset; repeat for each joint")
    common.add_argument("--out", required=not federated, metavar="RUN", help="new run directory (never "
                        "overwritten)")
    common.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                        help="the configuration to start from")
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
