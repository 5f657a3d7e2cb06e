"""A remote site on this machine, for the tests and benchmarks/remote.py: a network
namespace joined by its own veth pair, a model server inside it behind a delaying proxy (the
kernel here has no netem qdisc), and model servers on loopback. Both context managers remove
what they made, also on errors. A server given a `ledger` file records the id of each
request it executed there (tests/remote/modelserver.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ONE_WAY_MS = 0.47  # the paper's cloud node, each way


LEDGER_SERVICE = "llm"  # the service name the servers' ledgers are filed under


def executed_file(run_dir: Path, instance: str, service: str = LEDGER_SERVICE) -> Path:
    """Where `instance`'s server records what it executed, as
    hpcray.services.ledger.read_executed(run_dir, service) reads it."""
    from hpcray.services.ledger import LEDGER_DIR

    return run_dir / LEDGER_DIR / service / f"{instance}.executed"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _start(argv: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{argv[:4]} did not start: {line} {proc.stderr.read()[-500:]}")
    return proc


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Server:
    url_root: str     # http://host:port

    def openai(self) -> str:
        return f"{self.url_root}/v1"


@dataclass
class RemoteSite:
    name: str
    host_veth: str
    address: str      # the namespace's side
    server: Server    # through the delaying proxy
    procs: list = field(default_factory=list, repr=False)
    ledger: Path | None = None  # where the server records the requests it executed

    def link(self, up: bool) -> None:
        """Cut or restore the site's link. While it is down, new connections to the site
        fail at once ("no route to host", from the fallback route `remote_site` adds) and
        packets of open ones go nowhere; without that route they would take the default
        route, to whatever answers there."""
        subprocess.run(["ip", "link", "set", self.host_veth, "up" if up else "down"],
                       check=True)


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and subprocess.run(["ip", "netns", "list"],
                                                capture_output=True).returncode == 0


@contextlib.contextmanager
def loopback_servers() -> Iterator:
    """start(api_key=None, model='noop', infer_ms=1, ledger=None) -> Server on 127.0.0.1."""
    procs: list[subprocess.Popen] = []

    def start(api_key: str | None = None, model: str = "noop", infer_ms: float = 1.0,
              ledger: Path | None = None) -> Server:
        port = free_port()
        argv = [sys.executable, str(HERE / "modelserver.py"), "127.0.0.1", str(port),
                "--model", model, "--infer-ms", str(infer_ms)]
        if api_key:
            argv += ["--api-key", api_key]
        if ledger:
            argv += ["--ledger", str(ledger)]
        procs.append(_start(argv))
        return Server(f"http://127.0.0.1:{port}")

    try:
        yield start
    finally:
        _stop(procs)


@contextlib.contextmanager
def remote_site(one_way_ms: float = ONE_WAY_MS, infer_ms: float = 1.0,
                ledger: Path | None = None) -> Iterator[RemoteSite]:
    """Namespace 'hpcr-<id>' joined by a veth pair (10.213.<n>.1 here, .2 there); inside it,
    the model server on its loopback (recording into `ledger`, when given) and the delaying
    proxy on .2:9000. Here, an `unreachable` route to 10.213.<n>.0/30 behind the link's own
    route: with the link down, connections to the site fail at once instead of leaving by
    the default route (on this sandbox an HTTP interceptor answers them with 404s)."""
    tag = uuid.uuid4().hex[:6]
    ns, veth_h, veth_n = f"hpcr-{tag}", f"hh{tag}", f"hn{tag}"
    net = int(tag[:2], 16)
    here, there = f"10.213.{net}.1", f"10.213.{net}.2"
    procs: list[subprocess.Popen] = []
    fallback = ["route", "add", "unreachable", f"10.213.{net}.0/30", "metric", "4000"]

    def ip(*args: str, netns: bool = False) -> None:
        cmd = (["ip", "netns", "exec", ns] if netns else []) + ["ip", *args]
        subprocess.run(cmd, check=True, capture_output=True)

    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        ip("link", "add", veth_h, "type", "veth", "peer", "name", veth_n)
        ip("link", "set", veth_n, "netns", ns)
        ip("addr", "add", f"{here}/30", "dev", veth_h)
        ip("link", "set", veth_h, "up")
        ip(*fallback)
        ip("addr", "add", f"{there}/30", "dev", veth_n, netns=True)
        ip("link", "set", veth_n, "up", netns=True)
        ip("link", "set", "lo", "up", netns=True)
        run = ["ip", "netns", "exec", ns, sys.executable]
        procs.append(_start([*run, str(HERE / "modelserver.py"), "127.0.0.1", "8000",
                             "--infer-ms", str(infer_ms),
                             *(["--ledger", str(ledger)] if ledger else [])]))
        procs.append(_start([*run, str(HERE / "delayproxy.py"), there, "9000", "127.0.0.1",
                             "8000", str(one_way_ms)]))
        yield RemoteSite(ns, veth_h, there, Server(f"http://{there}:9000"), procs, ledger)
    finally:
        subprocess.run(["ip", "route", "del", *fallback[2:]], capture_output=True)
        _stop(procs)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and subprocess.run(
                ["ip", "link", "show", veth_h], capture_output=True).returncode == 0:
            time.sleep(0.1)


class LedgeredLoad:
    """Threads that call `call(request_id=..., timeout=...)` without pause, each with its own
    request ledger, and what the link-cut test and benchmark gate their phases on: who
    answered so far, and who answered a request sent after a given moment."""

    def __init__(self, call: Callable[..., Any], threads: int, timeout_s: float,
                 prefix: str = "t") -> None:
        from hpcray.services.ledger import ClientLedger

        self.timeout_s = timeout_s
        self.ledgers = [ClientLedger(f"{prefix}{i}") for i in range(threads)]
        self.answers: list[tuple[float, float, str]] = []  # (sent, answered, by), monotonic
        self._call, self._lock, self._stop = call, threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(ledger,), daemon=True)
                         for ledger in self.ledgers]

    def _work(self, ledger) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            got = ledger.call(self._call, "generate", {"prompt": "x"}, timeout=self.timeout_s)
            if got is not None:
                with self._lock:
                    self.answers.append((sent, time.monotonic(), got.instance))

    def __enter__(self) -> LedgeredLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 10)  # a call lasts timeout_s at most

    @property
    def hung(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def answered_by(self) -> Counter:
        from hpcray.services.ledger import ANSWERED

        count: Counter = Counter()
        for ledger in self.ledgers:
            count.update(replica for kind, replica, _ in ledger.as_dict()["outcomes"].values()
                         if kind == ANSWERED)
        return count

    def answered_since(self, instance: str, since: float) -> bool:
        """Whether `instance` answered a request sent after `since` (monotonic)."""
        with self._lock:
            return any(who == instance and sent >= since for sent, _, who in self.answers)


def wait_for(condition: Callable[[], bool], within_s: float, what: str) -> None:
    """Return once `condition()` holds; raise TimeoutError naming `what` when it does not
    within `within_s` (the poll only looks: nothing is ordered by its period)."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within_s} s: {what}")
        time.sleep(0.02)
