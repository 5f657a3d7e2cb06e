"""One service's traffic over every instance that serves it: the local replicas (as one
instance, their own client balancing among them) and each remote endpoint.

Choice: power of two choices (hpcray/runtime/balance.py) on (requests in flight + 1) x
recent round trip / weight, among the instances that are not cooling down and are below
their concurrency cap; with none free, the caller waits (backpressure) up to its timeout. A
request that never reached a model (connection refused or reset, 503) goes to another
instance after a short backoff; one that may have reached a model fails explicitly, naming
the instance. After FAIL_THRESHOLD failures in a row, or a probe that gets no answer within
PROBE_S, an instance cools down; the probe, each PROBE_S, brings it back once it answers.
Nothing is dropped: every call returns or raises. A call answers with a RemoteResult whose
`instance` names who answered.

A call's `request_id` goes to the instance (an endpoint sends it as `X-Request-Id`); a
request sent on to another instance keeps it. An instance whose `call` or `stream` takes no
`request_id` is called without it.
"""

from __future__ import annotations

import inspect
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hpcray.errors import NoInstance, ServiceRequestError
from hpcray.remote.base import (
    RemoteAuthError,
    RemoteModelError,
    RemoteResult,
    RemoteUnavailable,
    request_id_headers,
)
from hpcray.runtime.balance import pick_two

log = logging.getLogger("hpcray.remote")

FAIL_THRESHOLD = 3
PROBE_S = 1.0
BACKOFF_S = 0.05


@dataclass
class Instance:
    name: str
    kind: str                                  # local | openai | ollama
    cap: int
    weight: float
    call: Callable[..., RemoteResult]          # (method, payload, timeout[, request_id=])
    stream: Callable[..., Iterator[str]] | None = None  # (method, payload[, request_id=])
    probe: Callable[[float], float] | None = None  # its argument: a timeout in seconds
    methods: tuple[str, ...] | None = None     # what it serves; None: every method
    outstanding: int = 0
    failures: int = 0
    cooling: bool = False
    served: int = 0
    failed: int = 0
    rtt: float = 0.0                           # moving average of round trips
    probe_rtt: float | None = None             # the network's share, from the probe
    last_error: str | None = None
    cannot_stream: set[str] = field(default_factory=set)  # methods it refused to stream
    epoch: int = 0  # bumped when it cools down or comes back: older round trips do not count
    history: list[tuple[float, str]] = field(default_factory=list)  # (time, event)
    call_takes_id: bool = field(init=False, repr=False)
    stream_takes_id: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.call_takes_id = _takes_request_id(self.call)
        self.stream_takes_id = self.stream is not None and _takes_request_id(self.stream)

    def state(self) -> str:
        if self.cooling:
            return f"cooling down: {self.last_error}" if self.last_error else "cooling down"
        return f"busy, {self.outstanding} in flight"

    def score(self) -> float:
        return (self.outstanding + 1) * max(self.rtt, 1e-4) / self.weight


def _takes_request_id(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: call it as before
        return False
    return any(p.name == "request_id" or p.kind is p.VAR_KEYWORD for p in params)


def _id_kwargs(takes_id: bool, request_id: str | None) -> dict[str, str]:
    return {"request_id": request_id} if takes_id and request_id is not None else {}


class Federation:
    def __init__(self, service: str, instances: list[Instance], retries: int = 2,
                 probe_s: float = PROBE_S, fail_threshold: int = FAIL_THRESHOLD) -> None:
        if not instances:
            raise ValueError(f"service {service!r}: no instance to send requests to")
        self.service, self.instances = service, instances
        self.retries, self.probe_s, self.fail_threshold = retries, probe_s, fail_threshold
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._rng = random.Random()
        self._prober = threading.Thread(target=self._probe_forever, daemon=True,
                                        name=f"hpcray-probe-{service}")
        self._prober.start()

    # -- choosing ------------------------------------------------------------------------------
    def _serving(self, method: str | None) -> list[Instance]:
        """The instances that serve `method` (an endpoint may serve a few methods; a local
        replica serves every method of its class)."""
        serving = [i for i in self.instances
                   if method is None or i.methods is None or method in i.methods]
        if not serving:
            raise ServiceRequestError(f"service {self.service!r}: no instance serves "
                                      f"{method!r}")
        return serving

    def _pick(self, exclude: set[str], deadline: float | None,
              strict: bool = False, method: str | None = None) -> tuple[Instance, int]:
        """An instance not in `exclude`; unless `strict`, one of those when no other is left."""
        serving = self._serving(method)
        with self._cv:
            while True:
                free = [i for i in serving
                        if not i.cooling and i.outstanding < i.cap and i.name not in exclude]
                if strict and not free and all(i.name in exclude for i in serving):
                    raise NoInstance(f"service {self.service!r}: no instance left to try")
                if not free and exclude and not strict:  # all else tried: try those again
                    free = [i for i in serving
                            if not i.cooling and i.outstanding < i.cap]
                chosen = pick_two(free, Instance.score, rng=self._rng)
                if chosen is not None:
                    chosen.outstanding += 1
                    return chosen, chosen.epoch
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    states = ", ".join(f"{i.name} ({i.state()})" for i in self.instances)
                    raise NoInstance(f"service {self.service!r}: no instance free: {states}")
                self._cv.wait(timeout=min(remaining, 0.5) if remaining else 0.5)

    def _release(self, inst: Instance, ok: bool, error: Exception | None = None,
                 rtt: float | None = None, epoch: int | None = None) -> None:
        with self._cv:
            inst.outstanding -= 1
            if ok:
                inst.served += 1
                inst.failures = 0
                # a reply held up while the link was down would starve the instance for long
                if rtt is not None and epoch == inst.epoch:
                    inst.rtt = rtt if inst.rtt == 0 else inst.rtt + 0.2 * (rtt - inst.rtt)
            else:
                inst.failed += 1
                inst.failures += 1
                inst.last_error = str(error)[:200]
                if inst.failures >= self.fail_threshold and not inst.cooling and inst.probe:
                    self._cool(inst)
                    log.warning("service %s: %s cools down after %d failures: %s",
                                self.service, inst.name, inst.failures, inst.last_error)
            self._cv.notify_all()

    def _cool(self, inst: Instance) -> None:
        inst.cooling = True
        inst.epoch += 1
        inst.history.append((time.time(), "cooling"))

    # -- calling -------------------------------------------------------------------------------
    def call(self, method: str, payload: Any, timeout: float | None = None,
             request_id: str | None = None) -> RemoteResult:
        request_id_headers(request_id)  # a malformed id is the caller's error, no instance's
        deadline = None if timeout is None else time.monotonic() + timeout
        tried: set[str] = set()
        for attempt in range(self.retries + 1):
            inst, epoch = self._pick(tried, deadline, method=method)
            tried.add(inst.name)
            start = time.perf_counter()
            try:
                left = None if deadline is None else max(0.001, deadline - time.monotonic())
                got = inst.call(method, payload, left,
                                **_id_kwargs(inst.call_takes_id, request_id))
            except (RemoteAuthError, RemoteModelError) as exc:
                self._release(inst, False, exc)
                raise
            except Exception as exc:  # noqa: BLE001 - sorted by whether a model saw it
                self._release(inst, False, exc)
                if getattr(exc, "reached", True) or attempt == self.retries:
                    raise
                log.info("service %s: %s did not take the request (%s); trying another",
                         self.service, inst.name, exc)
                time.sleep(BACKOFF_S * 2 ** attempt)
                continue
            rtt = time.perf_counter() - start
            self._release(inst, True, rtt=rtt, epoch=epoch)
            return self._timed(inst, got, rtt)
        raise AssertionError("unreachable")

    def _timed(self, inst: Instance, got: RemoteResult, rtt: float) -> RemoteResult:
        """The answer with `instance` always named (a local replica's id, else the
        instance's name) and its round trip split."""
        if got.server_reported:
            return RemoteResult(got.result, got.inference_s, got.service_s, got.round_trip_s,
                                True, getattr(got, "instance", None) or inst.name)
        # no server timing: the network's share is what the probe round trip takes
        network = min(inst.probe_rtt or 0.0, rtt)
        return RemoteResult(got.result, rtt - network, 0.0, rtt, False, inst.name)

    def stream(self, method: str, payload: Any, request_id: str | None = None
               ) -> Iterator[str]:
        """Pieces from one instance. Before the first piece, an instance that is unreachable
        or cannot stream `method` (a NOOP replica) is left for another; after it, a failure
        is raised (the pieces already given cannot be taken back)."""
        request_id_headers(request_id)
        tried = {i.name for i in self.instances if method in i.cannot_stream or i.stream is None}
        for attempt in range(len(self.instances) + self.retries):
            inst, _ = self._pick(tried, None, strict=True, method=method)
            assert inst.stream is not None  # those without one are in `tried`, never picked
            tried.add(inst.name)
            started = False
            try:
                for piece in inst.stream(method, payload,
                                         **_id_kwargs(inst.stream_takes_id, request_id)):
                    started = True
                    yield piece
            except ServiceRequestError as exc:
                self._release(inst, True)
                if started or "cannot stream" not in str(exc):
                    raise
                inst.cannot_stream.add(method)
                continue
            except RemoteUnavailable as exc:
                self._release(inst, False, exc)
                if started:
                    raise
                time.sleep(BACKOFF_S * 2 ** min(attempt, 4))
                continue
            except Exception as exc:
                self._release(inst, False, exc)
                raise
            self._release(inst, True)
            return
        raise NoInstance(f"service {self.service!r}: no instance can stream {method!r}")

    # -- health --------------------------------------------------------------------------------
    def _probe_forever(self) -> None:
        while not self._stop.wait(self.probe_s):
            for inst in self.instances:
                if inst.probe is None:
                    continue
                try:
                    took = inst.probe(self.probe_s)
                except Exception as exc:  # noqa: BLE001 - down: out until a probe answers
                    with self._cv:
                        inst.last_error = str(exc)[:200]
                        if not inst.cooling:
                            self._cool(inst)
                            log.warning("service %s: %s does not answer its probe: %s",
                                        self.service, inst.name, inst.last_error)
                    continue
                with self._cv:
                    inst.probe_rtt = took if inst.probe_rtt is None else \
                        min(took, inst.probe_rtt * 1.05)
                    if inst.cooling:
                        inst.cooling, inst.failures = False, 0
                        inst.epoch += 1
                        inst.rtt = took  # start afresh from what the link takes now
                        inst.history.append((time.time(), "back"))
                        log.warning("service %s: %s answers again", self.service, inst.name)
                        self._cv.notify_all()

    def describe(self) -> list[dict[str, Any]]:
        return [{"instance": i.name, "kind": i.kind, "cap": i.cap, "weight": i.weight,
                 "outstanding": i.outstanding, "served": i.served, "failed": i.failed,
                 "cooling": i.cooling, "rtt_s": i.rtt, "probe_rtt_s": i.probe_rtt,
                 "last_error": i.last_error} for i in self.instances]

    def close(self) -> None:
        self._stop.set()
