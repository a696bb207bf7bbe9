"""`pedseg-fleet-gateway`: the one door of the operator's host that hospital sites dial.

Flower's SuperLink (1.41/1.42) serves its Fleet API (SuperNodes), Control API (register keys, submit, list,
stop runs) and Runtime API (its ServerApp) on one port and asks nothing of Control API callers. So the
SuperLink listens on 127.0.0.1 only, and this gateway serves TLS on the public address and forwards exactly
the routes of Flower's Fleet API (read from Flower's own router) to it; every other path answers 404 and is
logged. SuperNode authentication passes through untouched: each Fleet request is signed by the site's key and
checked by the SuperLink.

    pedseg-fleet-gateway --listen 0.0.0.0:9092 --superlink 127.0.0.1:9093 \\
        --certfile server.crt --keyfile server.key --ca-certfile ca.crt
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import uvicorn
from flwr.superlink.routers.fleet.router import router as fleet_router
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pedseg_core.processes.ports import split_address

PROG = "pedseg-fleet-gateway"
HEALTH = ("GET", "/health")
# Per-connection headers that a proxy must not pass on (RFC 9110, section 7.6.1), and the ones httpx sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade", "host", "content-length"})
log = logging.getLogger(PROG)


def fleet_routes() -> frozenset[tuple[str, str]]:
    """(method, path) of every route of Flower's Fleet API, e.g. ("POST", "/v1/fleet/pull-messages")."""
    return frozenset((method, route.path) for route in fleet_router.routes for method in route.methods)


def forwarded_headers(headers: httpx.Headers | dict) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


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
        try:
            reply = await upstream.request(request.method, request.url.path, content=await request.body(),
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
                ssl_certfile=args.certfile, ssl_keyfile=args.keyfile, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
