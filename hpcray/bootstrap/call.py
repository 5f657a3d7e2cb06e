"""Runs a workflow's driver function: `python -m hpcray.bootstrap.call module:function args.json`.

The driver process already has RAY_ADDRESS and the token in its environment, so the function
may call ``ray.init()`` or ``hpcray.connect()`` itself; we connect first for convenience.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from hpcray import env
from hpcray.bootstrap.connect import connect
from hpcray.runtime.targets import load_target


def main(argv: list[str]) -> int:
    spec, args_path = argv
    func = load_target(spec)
    kwargs = json.loads(Path(args_path).read_text())
    connect()
    result = func(**kwargs)
    if result is not None:
        run_dir = Path(os.environ[env.RUN_DIR])
        with contextlib.suppress(TypeError):
            (run_dir / "driver-result.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
