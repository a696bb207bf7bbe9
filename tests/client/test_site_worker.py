"""The site worker's Runtime API retries (`flower_common.flower_patches.task_retry_invoker`): a refused task token
ends the call, not the worker."""

import httpx
import pytest

from flower_common.flower_patches import task_retry_invoker


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


def test_a_supernode_that_is_briefly_unavailable_is_still_retried():
    """Only the 401 changed: a 503 (retryable for Flower) is tried again, and the call then succeeds."""
    answers = [refused_with(503), lambda: "pulled"]
    assert task_retry_invoker().invoke(lambda: answers.pop(0)()) == "pulled"
