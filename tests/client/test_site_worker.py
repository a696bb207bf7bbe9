"""The site worker's Runtime API retries: a refused task token ends the call, not the worker."""

import httpx
import pytest

from client.site_worker import task_retry_invoker


def refused_with(status: int):
    def call():
        request = httpx.Request("POST", "http://127.0.0.1:1/v1/runtime/pull-object")
        raise httpx.HTTPStatusError("refused", request=request, response=httpx.Response(status, request=request))
    return call


def test_a_revoked_task_token_fails_the_call_without_interrupting_the_process():
    """Flower's own invoker sends SIGINT to its process on a 401 (pytest would stop here with KeyboardInterrupt)
    and sleeps 6 s; the worker's gives up the call at once."""
    with pytest.raises(httpx.HTTPStatusError, match="refused"):
        task_retry_invoker().invoke(refused_with(401))


def test_other_refusals_keep_flowers_handling():
    with pytest.raises(httpx.HTTPStatusError):
        task_retry_invoker().invoke(refused_with(404))  # not retryable for Flower either: raised at once
