"""What a SuperNode's log says about why it stopped: Flower prints the cause of a refused connection (a wrong
CA, a hostname mismatch, an unregistered key, ...) in its log but exits with the same status for all of them.
`SupernodeLog` passes the log through and names the cause in one line for `pedseg-client`."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import TextIO

CONNECTED = "SuperNode ID:"


@dataclass(frozen=True)
class Refusal:
    """A log line's substring and the one-line cause it means; `{superlink}` is the address dialled."""

    marker: str
    cause: str


# Measured on flwr 1.41 (every one ends the SuperNode with "Exit Code: 305" and status 1, or retries until
# --max-wait-time); the first line that matches decides, and within a line the first entry (a hostname mismatch
# is also reported as "certificate verify failed").
REFUSALS = (
    Refusal("[code: 2004]", "the SuperLink at {superlink} does not know this site's key: the operator must register "
                            "its public half (flwr supernode register SITE.key.pub)"),
    Refusal("[code: 2001]", "the SuperLink at {superlink} admits only registered sites: give --auth-key with this "
                            "site's private key"),
    Refusal("Hostname mismatch", "the SuperLink's TLS certificate is not valid for the address dialled ({superlink}): "
                                 "dial a name or IP address that its certificate lists"),
    Refusal("certificate verify failed", "the SuperLink's TLS certificate at {superlink} is not signed by the CA of "
                                         "--root-certificates: use the federation's ca.crt"),
    Refusal("WRONG_VERSION_NUMBER", "the SuperLink at {superlink} does not speak TLS (started with --insecure?)"),
    Refusal("Server disconnected without sending a response",
            "the SuperLink at {superlink} closed the connection: it speaks TLS, use --root-certificates "
            "instead of --insecure"),
)
LOST = "Giving up reconnection"  # after CONNECTED: the SuperLink went away and the SuperNode hangs


class SupernodeLog:
    """Echo a SuperNode's output (a text stream) to `echo` in a thread, and remember why it stopped."""

    def __init__(self, stream: TextIO, superlink: str, echo: TextIO = sys.stdout):
        self.superlink, self.echo = superlink, echo
        self.connected = False
        self.cause: str | None = None
        self.fatal = threading.Event()  # the SuperNode cannot go on: stop it
        self.thread = threading.Thread(target=self.follow, args=(stream,), daemon=True)
        self.thread.start()

    def follow(self, stream: TextIO) -> None:
        for line in stream:
            self.echo.write(line)
            self.echo.flush()
            self.read(line)

    def read(self, line: str) -> None:
        if CONNECTED in line:
            self.connected = True
        if self.cause is not None:
            return
        if self.connected:
            if LOST in line:
                self.cause = f"lost the SuperLink at {self.superlink} and gave up reconnecting"
        else:
            self.cause = next((r.cause.format(superlink=self.superlink) for r in REFUSALS if r.marker in line), None)
        if self.cause is not None:
            self.fatal.set()

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)
