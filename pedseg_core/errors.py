"""The one exception type that the command lines (`pedseg`, `pedseg-client`) turn into a clean one-line error,
and how they report it."""

import sys

EXIT_USER_ERROR = 2  # bad input or options: one line per problem on stderr
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, after cleaning up


class PedsegError(Exception):
    """A user-facing problem (bad input, bad option): printed as one line, non-zero exit, no traceback."""


class DatasetError(PedsegError):
    """A dataset failed validation; ``problems`` holds one ``"<file>: <what is wrong>"`` line each."""

    def __init__(self, root, problems: list[str]):
        self.root = root
        self.problems = problems
        super().__init__("\n".join(problems))


def report_error(err: PedsegError, prog: str) -> None:
    """One line per problem on stderr, each as `PROG: error: ...`, no traceback."""
    lines = err.problems if isinstance(err, DatasetError) else str(err).splitlines()
    for line in lines:
        print(f"{prog}: error: {line}", file=sys.stderr)
