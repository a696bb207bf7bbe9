"""The public gateway resists abuse: a real `pedseg-fleet-gateway` process on 127.0.0.1 refuses an oversized or
unauthenticated request before reading its body, and its memory does not grow by what a client sends."""

import datetime
import os
import socket
import ssl
import subprocess
import sys
import time
from base64 import b64encode
from pathlib import Path

import psutil
import pytest
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes, sign_message

from pedseg_core.processes.ports import free_port, wait_for_port
from server.fleet_gateway import MAX_BODY_BYTES, authentication_problem

ROOT = Path(__file__).resolve().parents[2]
ROUTE = "/v1/fleet/push-object"
BIG = 200 * 2**20


def _auth_headers(age_seconds: float = 0.0, key_pair=None) -> dict[str, str]:
    """Flower's SuperNode authentication headers: a timestamp signed by a fresh key."""
    private_key, public_key = key_pair or generate_key_pairs()
    signed_at = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(seconds=age_seconds)
    timestamp = signed_at.isoformat()
    return {"flwr-public-key": b64encode(public_key_to_bytes(public_key)).decode("ascii"),
            "flwr-timestamp": timestamp,
            "flwr-signature": b64encode(sign_message(private_key, timestamp.encode("ascii"))).decode("ascii")}


def test_authentication_headers_are_checked():
    assert authentication_problem(_auth_headers()) is None
    assert authentication_problem({}) == "no flwr-public-key, flwr-signature, flwr-timestamp header"
    assert "outside Flower's window" in authentication_problem(_auth_headers(age_seconds=400))
    other = _auth_headers()
    forged = {**_auth_headers(), "flwr-signature": other["flwr-signature"]}
    assert authentication_problem(forged) == "timestamp not signed by the key in flwr-public-key"
    assert "malformed" in authentication_problem({**_auth_headers(), "flwr-public-key": "bm90IGEga2V5"})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """(port, process, log file) of a gateway whose SuperLink address has nothing listening."""
    certs = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(ROOT / "deploy" / "make-certificates.sh"), str(certs), "IP:127.0.0.1"], check=True,
                   capture_output=True)
    port, upstream = free_port(), free_port()
    log = certs / "gateway.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from server.fleet_gateway import main; sys.exit(main())",
             "--listen", f"127.0.0.1:{port}", "--superlink", f"127.0.0.1:{upstream}",
             "--certfile", str(certs / "server.crt"), "--keyfile", str(certs / "server.key"),
             "--ca-certfile", str(certs / "ca.crt")], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for_port("127.0.0.1", port, 60), log.read_text()
        yield port, process, log, certs / "ca.crt"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _connect(gateway) -> ssl.SSLSocket:
    port, _, _, ca = gateway
    context = ssl.create_default_context(cafile=str(ca))
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                               server_hostname="127.0.0.1")
    sock.settimeout(10)
    return sock


def _send(sock, headers: dict[str, str], body_bytes: int, chunked: bool = False) -> tuple[str, int]:
    """Send a POST declaring (or, chunked, streaming) `body_bytes` of zeros, 256 KiB at a time, until the
    gateway answers or stops reading; (its status line, the body bytes sent)."""
    framing = {"transfer-encoding": "chunked"} if chunked else {"content-length": str(body_bytes)}
    lines = [f"POST {ROUTE} HTTP/1.1", "host: 127.0.0.1", "content-type: application/protobuf",
             *(f"{k}: {v}" for k, v in {**framing, **headers}.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
    sent, answer = 0, b""
    try:
        while sent < body_bytes and not (answer := _answer_so_far(sock)):
            piece = bytes(min(2**18, body_bytes - sent))
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
    except (TimeoutError, OSError):
        pass  # the gateway stopped reading
    return (answer or sock.recv(4096)).decode("latin-1").split("\r\n")[0], sent


def _answer_so_far(sock) -> bytes:
    """What the gateway has answered until now, without waiting (b"": nothing yet)."""
    sock.setblocking(False)
    try:
        return sock.recv(4096)
    except ssl.SSLWantReadError:
        return b""
    finally:
        sock.settimeout(10)


def test_a_200_mib_body_is_refused_unread(gateway):
    _, process, log, _ = gateway
    before = psutil.Process(process.pid).memory_info().rss
    start = time.monotonic()
    with _connect(gateway) as sock:
        status, sent = _send(sock, _auth_headers(), BIG)
    assert status.startswith("HTTP/1.1 413"), status
    assert time.monotonic() - start < 10 and sent < BIG
    assert psutil.Process(process.pid).memory_info().rss - before < 32 * 2**20
    assert f"declares a body of {BIG} bytes" in log.read_text()


def test_a_chunked_body_is_cut_at_the_cap(gateway):
    _, process, log, _ = gateway
    before = psutil.Process(process.pid).memory_info().rss
    with _connect(gateway) as sock:
        try:
            status, sent = _send(sock, _auth_headers(), BIG, chunked=True)
        except ConnectionResetError:  # closed while the client was still sending: the log below tells
            status, sent = "HTTP/1.1 413 (connection reset)", 0
    assert status.startswith("HTTP/1.1 413"), status
    assert sent < 4 * MAX_BODY_BYTES
    assert psutil.Process(process.pid).memory_info().rss - before < 32 * 2**20
    deadline = time.monotonic() + 10
    while f"body of over {MAX_BODY_BYTES} bytes" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"body of over {MAX_BODY_BYTES} bytes" in log.read_text()


def test_an_unauthenticated_request_is_refused_before_its_body(gateway):
    with _connect(gateway) as sock:
        status, sent = _send(sock, {}, 1000)  # the gateway answers before waiting for the body
    assert status.startswith("HTTP/1.1 401"), status


def test_an_authenticated_small_request_is_forwarded(gateway):
    with _connect(gateway) as sock:
        status, _ = _send(sock, _auth_headers(), 1000)
    assert status.startswith("HTTP/1.1 502"), status  # forwarded: nothing listens at the SuperLink's address


def test_an_insecure_superlink_listens_on_loopback_only(tmp_path):
    """`start-superlink.sh --insecure` starts flower-superlink on 127.0.0.1 and refuses any other host."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("pedseg", "flower-superlink"):  # the script finds flower-superlink beside pedseg
        (fake / name).write_text('#!/bin/sh\necho "$@"\n')
        (fake / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PEDSEG_SUPERLINK_HOME": str(tmp_path / "home")}
    script = [str(ROOT / "deploy" / "start-superlink.sh"), "--insecure", "9999"]
    done = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "--insecure --host 127.0.0.1 --port 9999" in done.stdout, done.stderr
    env["PEDSEG_SUPERLINK_HOST"] = "0.0.0.0"
    done = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "listens on 127.0.0.1 only" in done.stderr and not done.stdout
