"""TCP ports and addresses of the processes pedseg starts: a free loopback port, HOST:PORT parsing, waiting for
a listener."""

from __future__ import annotations

import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def split_address(address: str) -> tuple[str, int]:
    """"host:port" -> (host, port); ValueError with a clear message otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"'{address}' is not HOST:PORT")
    return host.strip("[]"), int(port)


def wait_for_port(host: str, port: int, timeout: float, first_delay: float = 0.5, stop: list | None = None) -> bool:
    """Try to open a TCP connection with exponential back-off (capped at 10 s) until `timeout`, or until `stop`
    (a list that a signal handler appends to) is not empty."""
    deadline, delay = time.monotonic() + timeout, first_delay
    while not stop:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)):
                return True
        except OSError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pause_until = time.monotonic() + min(delay, remaining)
            while not stop and time.monotonic() < pause_until:
                time.sleep(0.2)
            delay = min(delay * 2, 10.0)
    return False
