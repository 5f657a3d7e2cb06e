"""The work before the driver: the workflow's services (ready, and published to the run's
processes) and its stages (each to its end)."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcray import env as hpcray_env
from hpcray.rundir import RunDir, write_json_atomic
from hpcray.runtime.auth import create_token
from hpcray.services.http_access import TOKEN_FILE_ENV, HttpAccess
from hpcray.services.manager import ServiceManager
from hpcray.spec import Workflow
from hpcray.stages import StageRunner

if TYPE_CHECKING:
    from hpcray.services.manager import ServiceManager

log = logging.getLogger("hpcray.up")


def importable(paths: list[str]) -> None:
    """User modules named by `module:attr` import in this process too."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


class Services:
    """The run's ServiceManager, kept for teardown even when starting it failed. Serve
    itself starts as soon as `hpcray up` is connected (`prepare`, in the background, while
    the other nodes join); `start` then deploys the services."""

    def __init__(self) -> None:
        self.manager: ServiceManager | None = None
        self._serve_starting: threading.Thread | None = None
        self._serve_error: BaseException | None = None

    def prepare(self, run: RunDir, workflow: Workflow, head: dict[str, Any],
                env: dict[str, str], workflow_dir: str | None = None) -> None:
        """Create the manager, put where the services will answer into `env` (their URLs are
        known before they start: an early driver's module may read them when imported), and
        start Serve and the replica directory in a thread."""
        if not workflow.services or self.manager is not None:
            return
        self.manager = manager = ServiceManager(
            workflow.services, run, http=http_access(run, workflow, head, env),
            workflow_dir=workflow_dir)
        for name in manager.records:
            url = manager.service_url(name)
            if url is not None:
                env[hpcray_env.service_url_var(name)] = url
        if manager.openai_url:
            env[hpcray_env.OPENAI_BASE_URL] = manager.openai_url
        env[hpcray_env.ENDPOINTS] = str(run.path / "endpoints.json")

        def start_serve() -> None:
            try:
                manager.start_serve()
            except BaseException as exc:  # noqa: BLE001 - raised again by start()
                log.error("starting Serve: %s: %s", type(exc).__name__, exc)
                self._serve_error = exc
                return
            with contextlib.suppress(OSError):  # a timing only
                run.mark("serve_up")

        self._serve_starting = threading.Thread(target=start_serve, name="serve-start",
                                                daemon=True)
        self._serve_starting.start()

    def settled(self, timeout: float | None = None) -> bool:
        """Wait for Serve's start begun by `prepare` (teardown must not race it); whether
        it is over."""
        if self._serve_starting is not None:
            self._serve_starting.join(timeout)
            return not self._serve_starting.is_alive()
        return True

    def start(self, run: RunDir, workflow: Workflow, head: dict[str, Any],
              env: dict[str, str], workflow_dir: str | None = None) -> None:
        """Every service ready before the driver starts; a failure (a ServiceError, raised as
        it is) ends the run before it. Publishes endpoints.json and, into `env`,
        HPCRAY_SERVICE_<NAME>_URL for executable stages and the driver."""
        self.prepare(run, workflow, head, env, workflow_dir)
        self.settled()
        if self._serve_error is not None:
            raise self._serve_error
        assert self.manager is not None  # prepare made it: the workflow has services
        self.manager.start()
        run.mark("serve_up")  # when nobody started it early: now
        write_json_atomic(run.path / "endpoints.json", self.manager.endpoints())
        run.mark("services_ready")


def http_access(run: RunDir, workflow: Workflow, head: dict[str, Any],
                env: dict[str, str]) -> HttpAccess | None:
    """Where the HTTP API listens and, with endpoints.token, the run's bearer token (a 0600
    file beside the Ray token; processes of the run are told its path, not it)."""
    endpoints = workflow.endpoints
    if not endpoints.http:
        return None
    token = token_file = None
    if endpoints.token:
        path = create_token(run.token.with_name("http-token"))
        token, token_file = path.read_text().strip(), str(path)
        env[TOKEN_FILE_ENV] = token_file
    access = HttpAccess.for_head(endpoints.listen, head["ip"], head["serve_http_port"],
                                 token, token_file)
    if endpoints.listen == "any":
        log.warning("HTTP API on every interface of the head node, port %s "
                    "(endpoints.listen: any); a bearer token is required",
                    head["serve_http_port"])
    return access


def run_stages(run: RunDir, workflow: Workflow, workflow_dir: Path, env: dict[str, str],
               stop: threading.Event, launcher: str) -> None:
    """Every stage to its end, after the services and before the driver (a StageError is
    raised as it is). In a relay's successor (HPCRAY_RESUMED in `env`), tasks an earlier
    job of the run recorded done are not run again."""
    resume = env.get(hpcray_env.RESUMED, "0") not in ("", "0")
    runner = StageRunner(workflow.stages, run, workflow_dir,
                         env={**env, hpcray_env.RUN_DIR: str(run.path)}, stop=stop,
                         launcher=launcher, resume=resume)
    runner.run()
