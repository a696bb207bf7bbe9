"""The `pedseg` command's composition root: one parser, every subcommand registered on it from one table, and one
way of ending (a clean one-line error, exit 2; interrupted, exit 130)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from pedseg.commands import adapt, audit, data, evaluate, federate, predict, report, reproduce, train
from pedseg.options import CommandParser, in_typed_words
from pedseg_core import __version__
from pedseg_core.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, PedsegError, report_error

COMMANDS = (data, train, federate, reproduce, predict, adapt, evaluate, report, audit)  # each has register()


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="pedseg", description="Federated multi-joint bone segmentation of "
                           "pediatric MRI: data, training (centralized and on Flower), prediction, reports.")
    parser.add_argument("--version", action="version", version=f"pedseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # bare `pedseg`: what it can do
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a service stop cleans up like Ctrl-C
    try:
        return args.func(args)
    except PedsegError as err:
        report_error(in_typed_words(err), "pedseg")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("pedseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
