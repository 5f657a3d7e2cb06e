"""Per-job Ray token: Ray 2.60 turns token auth on by default, so every process needs it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from hpcray import env


def create_token(path: Path) -> Path:
    """A fresh random token, readable by the job's user only (0600 in a 0700 directory)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.chmod(path, 0o600)
    return path


def auth_env(token_path: Path) -> dict[str, str]:
    """What every process of the job (nodes, driver, user programs) must have set."""
    return {env.RAY_AUTH_MODE: "token", env.RAY_AUTH_TOKEN_PATH: str(token_path)}
