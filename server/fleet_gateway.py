"""`pedseg-fleet-gateway`: the one door of the operator's host that hospital sites dial.

Flower's SuperLink (1.41/1.42) serves its Fleet API (SuperNodes), Control API (register keys, submit, list,
stop runs) and Runtime API (its ServerApp) on one port and asks nothing of Control API callers. So the
SuperLink listens on 127.0.0.1 only, and this gateway serves TLS on the public address and forwards exactly
the routes of Flower's Fleet API (read from Flower's own router) to it; every other path answers 404 and is
logged. SuperNode authentication passes through untouched: each Fleet request is signed by the site's key and
checked by the SuperLink.

Before a request's body is read, the gateway checks its declared size (at most MAX_BODY_BYTES: Flower sends
objects in chunks of 5 MB) and that it carries Flower's SuperNode authentication headers, a timestamp signed
by the key they name, within Flower's window (413 and 401 otherwise, the connection closed, nothing more
read). A body must arrive within BODY_SECONDS (408), at most MAX_CONNECTIONS requests are served at once (503
beyond), an idle connection closes after KEEP_ALIVE_SECONDS and request headers are capped at
MAX_HEADER_BYTES. Whether the key is registered, and for which node, the SuperLink decides.

    pedseg-fleet-gateway --listen 0.0.0.0:9092 --superlink 127.0.0.1:9093 \\
        --certfile server.crt --keyfile server.key --ca-certfile ca.crt
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import datetime
import logging
import sys
from base64 import b64decode
from collections.abc import Sequence
from pathlib import Path

import httpx
import uvicorn
from flwr.common.constant import SYSTEM_TIME_TOLERANCE, TIMESTAMP_HEADER, TIMESTAMP_TOLERANCE
from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER
from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature
from flwr.superlink.routers.fleet.router import router as fleet_router
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pedseg_core.processes.ports import split_address

PROG = "pedseg-fleet-gateway"
HEALTH = ("GET", "/health")
# Per-connection headers that a proxy must not pass on (RFC 9110, section 7.6.1), and the ones httpx sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade", "host", "content-length"})
MAX_BODY_BYTES = 8 * 2**20  # Flower's object chunks are 5 MB
MAX_HEADER_BYTES = 16 * 2**10
BODY_SECONDS = 120.0  # to receive a whole body once its headers arrived
MAX_CONNECTIONS = 64
KEEP_ALIVE_SECONDS = 5
AUTH_HEADERS = (FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER, TIMESTAMP_HEADER)
log = logging.getLogger(PROG)


class _Refused(Exception):
    """A request answered with `status` and `reason`, and the connection closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def fleet_routes() -> frozenset[tuple[str, str]]:
    """(method, path) of every route of Flower's Fleet API, e.g. ("POST", "/v1/fleet/pull-messages")."""
    return frozenset((method, route.path) for route in fleet_router.routes for method in route.methods)


def forwarded_headers(headers: httpx.Headers | dict) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def authentication_problem(headers) -> str | None:
    """Why a Fleet request's SuperNode authentication headers are missing or do not hold (None: they do): the
    public key, and the timestamp signed by it, within Flower's window."""
    missing = [name for name in AUTH_HEADERS if name not in headers]
    if missing:
        return f"no {', '.join(missing)} header"
    try:
        public_key = bytes_to_public_key(b64decode(headers[FLEET_HTTP_PUBLIC_KEY_HEADER], validate=True))
        signature = b64decode(headers[FLEET_HTTP_SIGNATURE_HEADER], validate=True)
        timestamp = headers[TIMESTAMP_HEADER]
        age = (datetime.datetime.now(tz=datetime.UTC) - datetime.datetime.fromisoformat(timestamp)).total_seconds()
        signed = verify_signature(public_key, timestamp.encode("ascii"), signature)
    except (ValueError, TypeError, UnicodeError, binascii.Error) as err:
        return f"malformed authentication headers ({type(err).__name__})"
    if not -SYSTEM_TIME_TOLERANCE < age < TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE:
        return f"timestamp {age:.0f} s old, outside Flower's window"
    return None if signed else "timestamp not signed by the key in flwr-public-key"


async def checked_body(request: Request) -> bytes:
    """The body of an authenticated Fleet request, read only once its headers passed and at most MAX_BODY_BYTES
    of it; _Refused otherwise."""
    if problem := authentication_problem(request.headers):
        raise _Refused(401, problem)
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise _Refused(413, f"declares a body of {declared[:20]} bytes, over {MAX_BODY_BYTES}")
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _Refused(413, f"sends a body of over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), BODY_SECONDS)
    except TimeoutError:
        raise _Refused(408, f"body not received within {BODY_SECONDS:.0f} s ({size} bytes)") from None
    return b"".join(chunks)


def build_app(superlink: str, ca_certfile: Path) -> Starlette:
    """An ASGI app that forwards the Fleet API (and /health) to `superlink` (https://HOST:PORT, its certificate
    verified with `ca_certfile`) and refuses everything else."""
    allowed = fleet_routes() | {HEALTH}
    upstream = httpx.AsyncClient(base_url=f"https://{superlink}", verify=str(ca_certfile), timeout=None)

    async def forward(request: Request) -> Response:
        caller = request.client.host if request.client else "?"
        if (request.method, request.url.path) not in allowed or request.url.query:
            log.warning("refused %s %s from %s (not a Fleet API route)", request.method, request.url.path, caller)
            return PlainTextResponse("not found\n", status_code=404)
        content = b""
        if (request.method, request.url.path) != HEALTH:
            try:
                content = await checked_body(request)
            except _Refused as refused:
                log.warning("refused %s %s from %s: %s", request.method, request.url.path, caller, refused)
                return PlainTextResponse(f"{refused}\n", status_code=refused.status, headers={"connection": "close"})
            except ClientDisconnect:
                log.warning("%s %s from %s: the client left before its body arrived", request.method,
                            request.url.path, caller)
                return PlainTextResponse("incomplete body\n", status_code=400, headers={"connection": "close"})
        try:
            reply = await upstream.request(request.method, request.url.path, content=content,
                                           headers=forwarded_headers(request.headers))
        except httpx.HTTPError as err:
            log.error("SuperLink %s unreachable for %s %s: %s", superlink, request.method, request.url.path, err)
            return PlainTextResponse("SuperLink unreachable\n", status_code=502)
        headers = {k: v for k, v in forwarded_headers(reply.headers).items() if k.lower() != "content-encoding"}
        return Response(reply.content, status_code=reply.status_code, headers=headers)  # httpx decoded the body

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):
        yield
        await upstream.aclose()

    methods = sorted({method for method, _ in allowed} | {"PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="public address the sites dial")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink, on 127.0.0.1")
    p.add_argument("--certfile", required=True, help="TLS certificate (SANs: every address the sites dial)")
    p.add_argument("--keyfile", required=True, help="its private key")
    p.add_argument("--ca-certfile", required=True, help="the federation CA (verifies the SuperLink's certificate)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for option in ("certfile", "keyfile", "ca_certfile"):
        if not Path(getattr(args, option)).is_file():
            print(f"{PROG}: error: {getattr(args, option)}: --{option.replace('_', '-')} file not found",
                  file=sys.stderr)
            return 2
    try:
        host, port = split_address(args.listen)
        split_address(args.superlink)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("forwarding the Fleet API from https://%s to https://%s", args.listen, args.superlink)
    uvicorn.run(build_app(args.superlink, Path(args.ca_certfile)), host=host, port=port,
                ssl_certfile=args.certfile, ssl_keyfile=args.keyfile, access_log=False, log_level="warning",
                http="h11", limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=KEEP_ALIVE_SECONDS,
                h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
