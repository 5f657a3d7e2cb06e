"""A DirectServer on loopback in this process, with a client: real sockets, no Ray."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hpcray.services.direct.client import DirectClient
from hpcray.services.direct.server import DirectServer
from hpcray.services.replica import ServiceRequestError


class Model:
    """What a service class looks like to the server: public methods take one payload."""

    def echo(self, payload):
        return payload

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    async def asleep(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    # a handler held until the test lets it go: `entered` once it runs, `release` to end it
    entered = threading.Event()
    release = threading.Event()

    def held(self, payload):
        Model.entered.set()
        Model.release.wait(60)
        return "released"

    def fail(self, payload):
        raise RuntimeError(f"model failed on {payload!r}")

    def array(self, payload: bytes) -> bytes:
        return payload[::-1]

    # streams: `<method>_stream` generators; `ended` counts the ones that stopped early
    ended = 0
    started = 0

    async def count_stream(self, n):
        """n pieces, one per 5 ms; n < 0: until stopped."""
        Model.started += 1
        i = 0
        try:
            while n < 0 or i < n:
                await asyncio.sleep(0.005)
                yield {"i": i}
                i += 1
        except (asyncio.CancelledError, GeneratorExit):
            Model.ended += 1
            raise

    made = 0  # pieces burst_stream has made so far

    async def burst_stream(self, n):
        """n pieces of 4 KiB as fast as it can: only the server's waiting for a slow reader
        keeps it from running ahead."""
        Model.made = 0
        try:
            for i in range(n):
                Model.made = i + 1
                yield {"i": i, "pad": bytes(4096)}
                await asyncio.sleep(0)
        except (asyncio.CancelledError, GeneratorExit):
            Model.ended += 1
            raise

    def lines_stream(self, n):
        for i in range(n):
            yield f"line {i}"

    async def boom_stream(self, payload):
        yield "one"
        raise RuntimeError(f"stream failed on {payload!r}")

    async def refuse_stream(self, payload):
        raise ServiceRequestError("field 'top_k': no", field="top_k")
        yield  # an async generator


def resolver(obj, suffix: str = ""):
    def resolve(name: str):
        fn = getattr(obj, name + suffix, None)
        if name.startswith("_") or not callable(fn):
            raise ServiceRequestError(f"no method {name + suffix!r}")
        return fn
    return resolve


@pytest.fixture
def serve_model():
    """serve_model(name, token=None) -> (server, address); every server stops afterwards."""
    servers = []

    def start(replica: str = "r1", token: bytes | None = None):
        model = Model()
        server = DirectServer(resolver(model), replica, {"replica": replica, "pid": 0},
                              host="127.0.0.1", token=token,
                              streams=resolver(model, "_stream"))
        servers.append(server)
        return server, server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def client_for():
    clients = []

    def make(addresses: dict[str, str], **options) -> DirectClient:
        options.setdefault("token", b"")
        client = DirectClient("model", addresses=addresses, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


SERVE_IN_CHILD = """
import sys, threading
from pathlib import Path
from hpcray.services.direct.server import DirectServer
from hpcray.services.ledger import ExecutedLog
from tests.services.direct.conftest import Model, resolver
ledger = ExecutedLog(Path(sys.argv[2])) if len(sys.argv) > 2 else None
server = DirectServer(resolver(Model()), sys.argv[1], {}, host="127.0.0.1", ledger=ledger)
print(server.start(), flush=True)
threading.Event().wait()
"""


@pytest.fixture
def model_process():
    """model_process(name, ledger=None) -> (Popen, address): a replica in its own process, to
    SIGKILL; with `ledger` (a path) it records each request it executed there."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    procs = []

    def start(replica: str, ledger: Path | None = None):
        root = Path(__file__).resolve().parents[3]
        env = {**os.environ, "PYTHONPATH": str(root), "RAY_AUTH_TOKEN_PATH": ""}
        proc = subprocess.Popen([sys.executable, "-c", SERVE_IN_CHILD, replica,
                                 *([str(ledger)] if ledger else [])], cwd=root,
                                env=env, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc, proc.stdout.readline().strip()

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
