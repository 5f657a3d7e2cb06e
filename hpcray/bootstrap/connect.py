"""`hpcray.connect()`: join the running cluster of a run from any program in the allocation."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hpcray import env
from hpcray.errors import HpcrayError
from hpcray.rundir import RunDir, find_run, read_json
from hpcray.runtime.auth import auth_env


def cluster_address(run: RunDir) -> tuple[str, Path]:
    head = read_json(run.head)
    if not head:
        state = run.read().get("state", "unknown")
        raise HpcrayError(f"run {run.path} has no running head (state: {state})")
    return head["address"], run.token


def connect(run: str | Path | None = None, **init_kwargs: Any) -> Any:
    """``ray.init`` against a run's cluster, with its token. ``run``: directory, run id or job
    id; default ``$HPCRAY_RUN_DIR`` (set for drivers and job steps)."""
    import sys

    ray_was_imported = "ray" in sys.modules
    ref = str(run) if run is not None else os.environ.get(env.RUN_DIR)
    if not ref:
        raise HpcrayError("connect() needs a run (directory, run id or job id) or HPCRAY_RUN_DIR")
    rundir = find_run(ref)
    address, token = cluster_address(rundir)
    wanted = auth_env(token)
    if ray_was_imported and any(os.environ.get(k) != v for k, v in wanted.items()):
        # Ray reads the auth settings once, when it is imported.
        raise HpcrayError(
            "ray was imported before the run's token was set: call hpcray.connect() before "
            "importing ray, or start the program with "
            f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token}")
    os.environ.update(wanted)
    import ray

    init_kwargs.setdefault("logging_level", logging.WARNING)
    return ray.init(address=address, **init_kwargs)
