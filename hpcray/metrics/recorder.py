"""Per-request numbers for Prometheus, recorded where they are known and written into the run
dir with the samples that already go there, so a scrape reads files and never reaches a
replica, a client or Ray.

A replica knows its requests, failures, and where its own time went (service: queue + decode
+ encode; inference: the handler); a client knows the communication part (its round trip
minus the replica's part, no clock synchronisation needed). Each side accumulates counters and
fixed-bucket histograms in memory: on the hot path, one `bisect` and three integer updates
per histogram, no lock. A replica's numbers are updated by one thread at a time (its socket
thread, its worker, or its event loop, each owning its own `ServiceStats`); a client's per
calling thread (`ClientMetrics.stats_for`). The writers only read them.

Off: `HPCRAY_METRICS=0` in the run's environment (`allocation.env`) records nothing from the
start. A live run's recording is paused while `<run>/metrics/paused` exists (seen within one
sample, SAMPLE_S); the benchmark's off arm uses it to compare on and off in one run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from hpcray import env
from hpcray.rundir import write_json_atomic

SAMPLE_S = 2.0
# bucket upper bounds (seconds), Prometheus' `le`: 25 us (a NOOP on the direct path) to 60 s
# (an LLM's long answer)
BOUNDS_S: tuple[float, ...] = (
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BOUNDS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in BOUNDS_S)


def enabled() -> bool:
    """Whether this run records metrics (HPCRAY_METRICS, default on)."""
    return os.environ.get(env.METRICS, "1").strip().lower() not in ("0", "off", "false", "no")


def paused(run_dir: Path | str) -> bool:
    """Whether recording of this run is paused (the file `<run>/metrics/paused` exists)."""
    return Path(run_dir, "metrics", "paused").exists()


def merge(histograms: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of histogram snapshots with the same buckets."""
    counts = [0] * (len(BOUNDS_S) + 1)
    total, count = 0.0, 0
    for h in histograms:
        for i, c in enumerate(h.get("counts", [])):
            if i < len(counts):
                counts[i] += c
        total += h.get("sum", 0.0)
        count += h.get("count", 0)
    return {"counts": counts, "sum": total, "count": count}


def quantile(hist: dict[str, Any], q: float) -> float | None:
    """The q-quantile of a snapshot (seconds), interpolated inside its bucket as Prometheus'
    histogram_quantile does; None when it has no observation."""
    counts, n = hist.get("counts", []), hist.get("count", 0)
    if not n:
        return None
    rank, seen, lower = q * n, 0, 0.0
    for i, c in enumerate(counts):
        upper = BOUNDS_S[i] if i < len(BOUNDS_S) else BOUNDS_S[-1]
        if c and seen + c >= rank:
            return lower + (upper - lower) * (rank - seen) / c
        seen += c
        lower = upper
    return BOUNDS_S[-1]


class _Absorbing(Protocol):
    def absorb(self, other: Any) -> None: ...


T = TypeVar("T", bound=_Absorbing)


class PerThread(Generic[T]):
    """One T per thread that updates it, so no two threads ever write one counter and the hot
    path takes no lock. A reader takes them all; the objects of threads that ended are folded
    into one (a replica runs a thread per synchronous stream: nothing is kept per thread ever
    run)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._parts: list[tuple[threading.Thread, T]] = []
        self._retired = make()
        self._lock = threading.Lock()  # taken once per thread and per read, never per update
        self._local = threading.local()

    def mine(self) -> T:
        """The calling thread's T (made and registered on its first use)."""
        part = self._local.__dict__.get("part")
        if part is None:
            part = self._local.part = self._make()
            with self._lock:
                self._parts.append((threading.current_thread(), part))
        return part

    def all(self) -> list[T]:
        """Every thread's T, those of threads that ended folded into the first."""
        with self._lock:
            alive = []
            for thread, part in self._parts:
                if thread.is_alive():
                    alive.append((thread, part))
                else:
                    self._retired.absorb(part)
            self._parts = alive
            return [self._retired, *(part for _, part in alive)]


class Count:
    """A count one thread updates (`n += 1`)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def absorb(self, other: Count) -> None:
        self.n += other.n


class ServiceStats:
    """One replica's numbers, updated by one thread: bucket counts and sums (ns) of the
    service and inference parts, flat in one object (the hot path's cost is attribute
    lookups); the counts of observations are the buckets' sum, taken when written."""

    __slots__ = ("errors", "inference_counts", "inference_sum", "on", "service_counts",
                 "service_sum")

    def __init__(self) -> None:
        self.on = True
        self.errors = 0
        self.service_counts = [0] * (len(BOUNDS_NS) + 1)
        self.service_sum = 0
        self.inference_counts = [0] * (len(BOUNDS_NS) + 1)
        self.inference_sum = 0

    def observe(self, service_ns: int, inference_ns: int,
                _bounds: tuple[int, ...] = BOUNDS_NS, _bisect=bisect_left) -> None:
        """One answered request: its time on the replica outside and inside the handler."""
        self.service_counts[_bisect(_bounds, service_ns)] += 1
        self.service_sum += service_ns
        self.inference_counts[_bisect(_bounds, inference_ns)] += 1
        self.inference_sum += inference_ns

    def absorb(self, other: ServiceStats) -> None:
        """Add a finished thread's numbers (nobody writes `other` any more)."""
        self.errors += other.errors
        for i, c in enumerate(other.service_counts):
            self.service_counts[i] += c
        for i, c in enumerate(other.inference_counts):
            self.inference_counts[i] += c
        self.service_sum += other.service_sum
        self.inference_sum += other.inference_sum

    def snapshot(self) -> dict[str, Any]:
        """{"service_seconds": ..., "inference_seconds": ...} as Histogram.snapshot gives."""
        return {"service_seconds": {"counts": list(self.service_counts),
                                    "sum": self.service_sum * 1e-9,
                                    "count": sum(self.service_counts)},
                "inference_seconds": {"counts": list(self.inference_counts),
                                      "sum": self.inference_sum * 1e-9,
                                      "count": sum(self.inference_counts)}}


class ReplicaStats:
    """A replica's ServiceStats, one per thread that answers requests (its socket thread, its
    worker, its event loop, a stream's thread), so no two threads ever update one counter."""

    def __init__(self) -> None:
        self.on = True
        self._parts = PerThread(self._new)

    def _new(self) -> ServiceStats:
        stats = ServiceStats()
        stats.on = self.on
        return stats

    def for_thread(self) -> ServiceStats:
        """The calling thread's ServiceStats (created and registered on its first use)."""
        return self._parts.mine()

    def switch(self, on: bool) -> None:
        """Record (True) or pause (False); each thread sees it at its next request."""
        self.on = on
        for part in self._parts.all():
            part.on = on

    def snapshot(self) -> dict[str, Any]:
        """What a replica's sample carries: its threads' stats added up, times in seconds."""
        parts = self._parts.all()
        snaps = [p.snapshot() for p in parts]
        return {"errors": sum(p.errors for p in parts),
                "service_seconds": merge([s["service_seconds"] for s in snaps]),
                "inference_seconds": merge([s["inference_seconds"] for s in snaps])}


class ClientStats:
    """One calling thread's numbers for one service: the communication part of each request
    it sent (seconds), as bucket counts and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS_S) + 1)
        self.total = 0.0

    def observe(self, round_trip_s: float, replica_ns: tuple[int, int, int] | None,
                _bounds: tuple[float, ...] = BOUNDS_S, _bisect=bisect_left) -> None:
        """One reply: its round trip here, and the replica's three spans (None: the request
        went without timing, so the split is unknown)."""
        if replica_ns is not None:
            comm = round_trip_s - (replica_ns[0] + replica_ns[1] + replica_ns[2]) * 1e-9
            self.counts[_bisect(_bounds, comm)] += 1
            self.total += comm

    def absorb(self, other: ClientStats) -> None:
        """Add a finished thread's numbers (nobody writes `other` any more)."""
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.total, "count": sum(self.counts)}


class ClientMetrics:
    """This process's client-side numbers, written every SAMPLE_S (and at exit) to
    `<run>/metrics/clients/<host>-<pid>.json` by one daemon thread started on first use.
    One per process (`client_metrics()`); None outside a run or with metrics off."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.on = not paused(run_dir)
        self.host = socket.gethostname()
        self.path = run_dir / "metrics" / "clients" / f"{self.host}-{os.getpid()}.json"
        self._lock = threading.Lock()  # taken once per (thread, service), never per request
        self._services: dict[str, PerThread[ClientStats]] = {}
        self._written: dict[str, Any] | None = None  # the services part last written
        self._local = threading.local()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def stats_for(self, service: str) -> ClientStats:
        """The calling thread's ClientStats for this service (created on its first request)."""
        mine: dict[str, ClientStats] = self._local.__dict__.setdefault("stats", {})
        stats = mine.get(service)
        if stats is None:
            with self._lock:
                per_thread = self._services.setdefault(service, PerThread(ClientStats))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._write_forever,
                                                    name="hpcray-client-metrics", daemon=True)
                    self._thread.start()
                    atexit.register(self.write)
            stats = mine[service] = per_thread.mine()
        return stats

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            services = dict(self._services)
        merged = {service: merge([s.snapshot() for s in per_thread.all()])
                  for service, per_thread in services.items()}
        return {"time": time.time(), "host": self.host, "pid": os.getpid(),
                "node": env.current_node(),
                "services": {s: {"communication_seconds": h} for s, h in merged.items()}}

    def write(self) -> None:
        """Write the numbers when they changed: an idle client (a stage's worker that called
        once) does not rename a file on the shared file system every SAMPLE_S."""
        snapshot = self.snapshot()
        if snapshot["services"] == self._written:
            return
        with contextlib.suppress(OSError):  # the run dir is gone: the run is over
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, snapshot)
            self._written = snapshot["services"]

    def _write_forever(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.on = not paused(self.run_dir)
            self.write()


_client_metrics: ClientMetrics | None = None
_client_lock = threading.Lock()


def client_metrics() -> ClientMetrics | None:
    """The process's ClientMetrics when it is part of a run with metrics on, else None."""
    global _client_metrics
    if _client_metrics is None:
        run = env.run_dir()
        if run is None or not enabled():
            return None
        with _client_lock:
            if _client_metrics is None:
                _client_metrics = ClientMetrics(run)
    return _client_metrics
