"""`SupernodeLog` turns a SuperNode's log into one cause; lines as flwr 1.41's SuperNode prints them (the
refusals themselves are produced by real processes in tests/deploy/test_deploy_path.py)."""

import io

import pytest

from client.supernode_log import SupernodeLog

CONNECTED = "INFO :      SuperNode ID: 1234\n"


def read(lines: list[str]) -> SupernodeLog:
    echo = io.StringIO()
    log = SupernodeLog(io.StringIO("".join(lines)), "fl.example:9092", echo=echo)
    log.join()
    assert echo.getvalue() == "".join(lines)  # everything is passed through
    return log


@pytest.mark.parametrize("line, cause", [
    ("ERROR :      [code: 2004] Failed to activate SuperNode.\n", "does not know this site's key"),
    ("SSL/TLS handshake error detected. certificate verify failed: unable to get local issuer certificate\n",
     "is not signed by the CA of --root-certificates"),
    ("certificate verify failed: Hostname mismatch, certificate is not valid for 'localhost'.\n",
     "not valid for the address dialled (fl.example:9092)"),
])
def test_a_refusal_before_joining_is_fatal_and_named(line, cause):
    log = read(["INFO :      Starting Flower SuperNode\n", line])
    assert log.fatal.is_set() and cause in log.cause


def test_losing_the_superlink_after_joining_is_fatal():
    log = read([CONNECTED, "WARNING :   Connection attempt failed, retrying in 8.00 seconds\n",
                "INFO :      Giving up reconnection after 120.00 seconds and 9 tries.\n"])
    assert log.fatal.is_set() and log.cause == "lost the SuperLink at fl.example:9092 and gave up reconnecting"


def test_retries_and_refusal_words_after_joining_are_not_fatal():
    log = read([CONNECTED, "WARNING :   Connection attempt failed, retrying in 2.00 seconds\n",
                "ERROR :     Server disconnected without sending a response.\n"])
    assert not log.fatal.is_set() and log.cause is None
