"""A site's warm worker: one long-lived process runs every message its SuperNode receives.

Started (and restarted) by `client.worker_supervisor`, the `flower-superexec` of a pedseg site's SuperNode. It
claims the SuperNode's ClientApp tasks every 50 ms over the Runtime API that SuperExec uses and runs each
in-process with Flower's own task calls: pull the message, context and app (FAB), check the FAB against the
apps the site approved before it is installed (`client.approved_app`), install it into a fresh folder named by
its full sha256 (FLWR_HOME/approved-apps/SHA256) and import it from there once, call the
ClientApp, push the reply and the context. The app's module-level cache (`client.app.ALGORITHMS`) then keeps the
site's algorithm, data and optimizer between messages, and nothing is imported twice. A task of another app (a new
FAB hash) goes to a fresh worker (this process replaces itself), so an app's code never runs beside another's.

An exception in the app becomes the task's error reply, as with `flwr-clientapp`. The task calls used here
(`pull_task_input`, `push_message`, `push_task_output`) are internal to flwr 1.41: the worker runs only where
`flower_common.flower_patches` applies (it is started by `client.approved_app.launcher_env`'s PATH, which stock
Flower does not get), and every loopback test runs through it (docs/decisions/0002-warm-site-worker.md).

    python -m client.site_worker (--insecure | --root-certificates CA) --runtime-api-address HOST:PORT
                                 [--parent-pid PID] [--token TOKEN]
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from logging import ERROR
from pathlib import Path

import httpx
from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.utils import get_flwr_home
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from client.approved_app import APPROVED_APPS_ENV, approval_check, decode_approvals
from client.worker_supervisor import parse_args, worker_args
from flower_common.flower_patches import SITE_WORKER, apply_flower_patches, task_retry_invoker

POLL_SECONDS = 0.05
APPROVED_APPS_DIR = "approved-apps"  # under FLWR_HOME: one folder per approved app, named by its sha256


class SiteWorker:
    """Claims its SuperNode's ClientApp tasks and runs them one at a time; keeps the one app it loaded."""

    def __init__(self, runtime_api_address: str, certificates: bytes | None, replacement_argv: list[str]):
        self.address, self.certificates, self.replacement_argv = runtime_api_address, certificates, replacement_argv
        policy, state_dir = os.environ.get("PEDSEG_POLICY") or None, os.environ.get("PEDSEG_STATE_DIR") or None
        self.install = approval_check(os.environ.get("PEDSEG_SITE", "?"), Path(policy) if policy else None,
                                      Path(state_dir) if state_dir else None,
                                      decode_approvals(os.environ.get(APPROVED_APPS_ENV, "")),
                                      get_flwr_home() / APPROVED_APPS_DIR, install_from_fab)
        self.app: ClientApp | None = None
        self.app_hash: str | None = None  # sha256 of the FAB whose code this process imported

    def client(self, *interceptors) -> RuntimeHttpClient:
        return RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.certificates is None, root_certificates=self.certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), *interceptors],
            retry_invoker=task_retry_invoker())

    def serve(self, first_token: str | None = None) -> None:
        if first_token:
            self.run_task(first_token)
        claims = self.client()
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        while True:
            claimed = claims.AcquireTask(request)
            if claimed.HasField("task") and claimed.token:
                fab_hash = claimed.task.fab_hash
                if fab_hash and self.app_hash is not None and fab_hash != self.app_hash:
                    self.replace_self(claimed.token)
                self.run_task(claimed.token)
            else:
                time.sleep(POLL_SECONDS)

    def run_task(self, token: str) -> None:
        """One message: Flower's `run_clientapp` without its process exit, its signal handlers or its SIGINT on
        a refused heartbeat; an exception in the app is the error reply."""
        client = self.client(RuntimeTokenHttpInterceptor(token))
        heartbeat = HeartbeatSender(task_heartbeat(client))
        heartbeat.start()
        message = context = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            message, context, run, fab = pull_task_input(client)
            reply = self.load(run, fab)(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # noqa: BLE001 - as flwr-clientapp: any failure of the app is its error reply
            code = (ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(ex, LoadClientAppError)
                    else ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
            details = f"{type(ex)}:<'{ex}'>"
            log(ERROR, "ClientApp raised an exception", exc_info=ex)
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as ex:  # noqa: BLE001 - the SuperNode then fails the task
                log(ERROR, "Failed to push reply message", exc_info=ex)
            push_task_output(client=client, context=context, sub_status=status, details=details)
            heartbeat.stop()
            client.close()

    def load(self, run: Run, fab: Fab) -> ClientApp:
        """The ClientApp of `fab`: approved, installed and imported by the first message, reused after."""
        digest = hashlib.sha256(fab.content).hexdigest()
        if self.app is None:
            installed = self.install(fab.content)
            self.app = get_load_client_app_fn(default_app_ref="", app_path=str(installed), multi_app=True)(
                run.fab_id, run.fab_version, fab.hash_str)
            self.app_hash = digest
        elif digest != self.app_hash:
            raise LoadClientAppError(f"the task's app {digest} is not the app {self.app_hash} this worker runs")
        return self.app

    def replace_self(self, token: str) -> None:
        """Hand a claimed task of another app to a fresh worker in this process's place."""
        os.execv(sys.executable, [sys.executable, "-m", "client.site_worker", *self.replacement_argv,
                                  "--token", token])


def task_heartbeat(client: RuntimeHttpClient) -> Callable[[], bool]:
    """The task's heartbeat; False (HeartbeatSender retries) when the SuperNode cannot be reached or refuses."""

    def beat() -> bool:
        try:
            return bool(client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except httpx.HTTPError:
            return False

    return beat


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)  # SIGINT here when the supervisor is gone
    replacement = [*worker_args(args), *(["--parent-pid", str(args.parent_pid)] if args.parent_pid else [])]
    certificates = Path(args.root_certificates).read_bytes() if args.root_certificates else None
    apply_flower_patches(SITE_WORKER)
    try:
        SiteWorker(args.runtime_api_address, certificates, replacement).serve(args.token)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
