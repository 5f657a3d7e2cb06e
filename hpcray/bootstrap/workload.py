"""The work before the driver: the workflow's services (ready, and published to the run's
processes) and its stages (each to its end)."""

from __future__ import annotations

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
    """The run's ServiceManager, kept for teardown even when starting it failed."""

    def __init__(self) -> None:
        self.manager: ServiceManager | None = None

    def start(self, run: RunDir, workflow: Workflow, head: dict[str, Any],
              env: dict[str, str], workflow_dir: str | None = None) -> None:
        """Every service ready before the driver starts; a failure (a ServiceError, raised as
        it is) ends the run before it. Publishes endpoints.json and, into `env`,
        HPCRAY_SERVICE_<NAME>_URL for executable stages and the driver."""
        self.manager = ServiceManager(workflow.services, run,
                                      http=http_access(run, workflow, head, env),
                                      workflow_dir=workflow_dir)
        self.manager.start()
        endpoints = self.manager.endpoints()
        write_json_atomic(run.path / "endpoints.json", endpoints)
        for name, entry in endpoints["services"].items():
            if "http" in entry:
                env[hpcray_env.service_url_var(name)] = entry["http"]
        if endpoints["openai"]:
            env[hpcray_env.OPENAI_BASE_URL] = endpoints["openai"]
        env[hpcray_env.ENDPOINTS] = str(run.path / "endpoints.json")
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
    raised as it is)."""
    runner = StageRunner(workflow.stages, run, workflow_dir,
                         env={**env, hpcray_env.RUN_DIR: str(run.path)}, stop=stop,
                         launcher=launcher)
    runner.run()
