"""The one exception type that the command line turns into a clean one-line error."""


class PedsegError(Exception):
    """A user-facing problem (bad input, bad option): printed as one line, non-zero exit, no traceback."""


class DatasetError(PedsegError):
    """A dataset failed validation; ``problems`` holds one ``"<file>: <what is wrong>"`` line each."""

    def __init__(self, root, problems: list[str]):
        self.root = root
        self.problems = problems
        super().__init__("\n".join(problems))
