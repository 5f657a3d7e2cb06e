"""A run is private: its directory 0700 and its token 0600, and a Ray client without the
run's token (none, or a wrong one) is refused while one with it connects."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import hpcray
from tests.conftest import (
    ONE_NODE,
    assert_nothing_left_of,
    finish_told,
    submit_beside,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONNECT = ("import sys, ray\n"
           "ray.init(address=sys.argv[1], logging_level='ERROR')\n"
           "print('connected', len(ray.nodes()))\n")


def _connect(address: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CONNECT, address], capture_output=True,
                          text=True, timeout=120, env=env)


def test_run_files_are_private_and_ray_refuses_clients_without_the_token(tmp_path, run_root):
    import os

    sub = submit_beside("remote", f"private-{tmp_path.name}",
                        f"name: private\n{ONE_NODE}"
                        "driver:\n  function: drive_remote:serve_until_told\n", run_root)
    try:
        assert wait_until(lambda: (sub.run_dir / "head.json").exists()
                          and hpcray.status(sub.run_dir).state == "running", 120)
        assert stat.S_IMODE(sub.run_dir.stat().st_mode) == 0o700
        token = sub.run_dir / "secrets" / "ray-token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
        address = json.loads((sub.run_dir / "head.json").read_text())["address"]
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}

        wrong = tmp_path / "wrong-token"
        wrong.write_text("0" * 64)
        # a refused client gives up only after its connection retries: the three at once
        with ThreadPoolExecutor(3) as pool:
            refused_wrong, refused_none, allowed = pool.map(lambda env: _connect(address, env), [
                {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}, base,
                {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}])
        assert allowed.returncode == 0 and "connected 1" in allowed.stdout, allowed.stderr
        for refused in (refused_wrong, refused_none):
            assert refused.returncode != 0 and "connected" not in refused.stdout
            text = refused.stderr.lower()
            assert "auth" in text or "token" in text or "unauthenticated" in text, text[-800:]
    finally:
        st = finish_told(sub.run_dir, "done")
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    assert_nothing_left_of(sub.run_dir)
