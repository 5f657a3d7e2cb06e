"""Shared by the services tests: the C client example, built once per session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

C_SOURCE = REPO / "examples" / "c" / "hpcray_call.c"
NO_C = "needs cc and libzmq headers (apt-get install gcc libzmq3-dev; .ci/run does)"


@pytest.fixture(scope="session")
def c_client(tmp_path_factory) -> Path:
    """examples/c/hpcray_call.c built with the system compiler, warnings as errors."""
    cc = shutil.which("cc") or shutil.which("gcc")
    headers = any(Path(d, "zmq.h").exists() for d in ("/usr/include", "/usr/local/include"))
    if cc is None or not headers:
        pytest.skip(NO_C)
    binary = tmp_path_factory.mktemp("c") / "hpcray_call"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(C_SOURCE),
                    "-lzmq"], check=True, capture_output=True, text=True)
    return binary
