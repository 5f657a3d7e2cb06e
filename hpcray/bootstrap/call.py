"""Runs a workflow's driver function: `python -m hpcray.bootstrap.call module:function args.json`.

The driver process already has RAY_ADDRESS and the token in its environment, so the function
may call ``ray.init()`` or ``hpcray.connect()`` itself; we connect first for convenience.

Started early (`HPCRAY_DRIVER_GATE` names a pipe), it imports the function's module and
connects while the services come up, then waits on the pipe: `hpcray up` writes what changed
in the environment since (usually nothing: the services' URLs and the endpoints.json path are
known before they start) and the function runs at once. The pipe closed without it means the
run ended first: the function does not run (its module was imported; endpoints.json, written
when the services are ready, is for the function to read, not the module's top level).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from hpcray import env
from hpcray.bootstrap.connect import connect
from hpcray.rundir import RunDir
from hpcray.runtime.targets import load_target

NOT_STARTED = 3  # exit code of a driver whose run ended before it was let go


def wait_at_gate(fd: int) -> bool:
    """Block until `hpcray up` lets the driver go; apply the environment it sends."""
    with os.fdopen(fd, "rb") as gate:
        line = gate.readline()
    if not line:
        return False
    os.environ.update(json.loads(line))
    return True


def main(argv: list[str]) -> int:
    spec, args_path = argv
    gate = os.environ.pop(env.DRIVER_GATE, None)  # not for what the module starts
    func = load_target(spec)
    kwargs = json.loads(Path(args_path).read_text())
    connect()
    if gate is not None and not wait_at_gate(int(gate)):
        print("hpcray: the run ended before the driver was started", file=sys.stderr)
        return NOT_STARTED
    run_dir = Path(os.environ[env.RUN_DIR])
    with contextlib.suppress(OSError):  # a timing only: never stops the driver
        RunDir(run_dir).mark_timing("driver_entry", time.time())
    result = func(**kwargs)
    if result is not None:
        with contextlib.suppress(TypeError):
            (run_dir / "driver-result.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
