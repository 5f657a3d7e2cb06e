"""Request ledgers, for proving that nothing was lost: each replica writes the id of every
request it executed, each client records one outcome per id it sent, and `reconcile` compares
the two. A count kept on one side only cannot show a loss (a timeout looks like any other
failure, a reply without an execution looks like success); ids kept on both sides can.

Off by default: `HPCRAY_LEDGER=1` in a run's environment (`allocation.env`) turns on the
replicas' side for every service, `HPCRAY_LEDGER=a,b` for services a and b. A test and
benchmark facility: on the replica it costs one `write(2)` of about 30 bytes per request,
on the client a dict entry (benchmarks/sustained.py measures both on RT p50).

Replica side: `<run dir>/ledger/<service>/<replica>.executed`, one line per request
(`<id> ok|err`), appended with O_APPEND by a single `write(2)`, so lines of concurrent threads
do not interleave and a SIGKILLed replica keeps every line it wrote."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcray import env
from hpcray.errors import (
    NoInstance,
    RemoteError,
    RemoteUnavailable,
    ReplicaLost,
    ServiceCallError,
    ServiceRequestError,
    ServiceTimeout,
)

LEDGER_DIR = "ledger"
ANSWERED = "answered"
TIMED_OUT = "timed out"
# explicit failures, by the cause a client can name
REPLICA_LOST = "replica lost"
REFUSED = "refused"
HANDLER_ERROR = "handler error"
UNAVAILABLE = "no instance reachable"
REMOTE_ERROR = "remote endpoint error"


def enabled(service: str) -> bool:
    """HPCRAY_LEDGER: "1" for every service, or the names of some, comma-separated (a
    benchmark compares a service with its ledger against one without, in one run)."""
    value = os.environ.get(env.LEDGER, "")
    return value == "1" or service in value.split(",")


class ExecutedLog:
    """The replica's side: one line per request it executed, written before the reply."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def record(self, request_id: bytes | str, ok: bool = True) -> None:
        rid = request_id.encode() if isinstance(request_id, str) else request_id
        if b"\n" in rid:  # one line per request, whatever the id holds
            rid = rid.replace(b"\n", b"\\n")
        os.write(self._fd, rid + (b" ok\n" if ok else b" err\n"))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def executed_log(service: str, replica: str) -> ExecutedLog | None:
    """This replica's log when the run keeps ledgers, else None (the default)."""
    run_dir = env.run_dir()
    if not enabled(service) or run_dir is None:
        return None
    return ExecutedLog(run_dir / LEDGER_DIR / service / f"{replica}.executed")


def read_executed(run_dir: str | Path, service: str) -> dict[str, list[tuple[str, str]]]:
    """id -> [(replica, 'ok'|'err'), ...] over every replica the service ever had."""
    executed: dict[str, list[tuple[str, str]]] = {}
    for path in sorted((Path(run_dir) / LEDGER_DIR / service).glob("*.executed")):
        replica = path.name[: -len(".executed")]
        for line in path.read_text().splitlines():
            rid, _, status = line.rpartition(" ")
            if rid:
                executed.setdefault(rid, []).append((replica, status))
    return executed


def cause_of(exc: BaseException) -> str:
    """The outcome a client records for an exception: a timeout is a loss, the rest are
    explicit failures named by their cause."""
    if isinstance(exc, (ServiceTimeout, TimeoutError)):
        return TIMED_OUT
    if isinstance(exc, ReplicaLost):
        return REPLICA_LOST
    if isinstance(exc, ServiceRequestError):
        return REFUSED
    if isinstance(exc, (RemoteUnavailable, NoInstance)):
        return UNAVAILABLE
    if isinstance(exc, RemoteError):
        return REMOTE_ERROR
    if isinstance(exc, ServiceCallError) or type(exc).__name__.startswith("RayTaskError"):
        return HANDLER_ERROR  # the handler raised (direct path; Serve path, wrapped by Ray)
    return f"other: {type(exc).__name__}"


@dataclass(slots=True)
class Outcome:
    kind: str                    # ANSWERED, TIMED_OUT or an explicit failure's cause
    replica: str | None = None   # who answered
    detail: str = ""             # the failure's message


class ClientLedger:
    """The client's side: ids it sent and one outcome per id. Thread-safe; ids carry a prefix
    so that several clients' ledgers can be reconciled against one service's."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._counter = itertools.count(1)
        self._lock = threading.Lock()  # merges and copies; a call needs none (below)
        self.sent: list[str] = []
        self.outcomes: dict[str, Outcome] = {}
        self.recorded_twice: list[str] = []

    def new_id(self) -> str:
        """Lock-free, as on a call's path it must be cheap: `next` of a count, list.append
        and dict.setdefault are each one step that threads cannot interleave."""
        rid = f"{self.prefix}-{next(self._counter)}"
        self.sent.append(rid)
        return rid

    def record(self, request_id: str, outcome: Outcome) -> None:
        if self.outcomes.setdefault(request_id, outcome) is not outcome:
            self.recorded_twice.append(request_id)
            self.outcomes[request_id] = outcome

    def call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any | None:
        """`call(*args, request_id=<new id>, **kwargs)` with its outcome recorded: the reply,
        or None after an exception (recorded with its cause, never raised)."""
        rid = self.new_id()
        try:
            reply = call(*args, request_id=rid, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every exception is an outcome, by cause
            self.record(rid, Outcome(cause_of(exc), getattr(exc, "replica", None),
                                     f"{type(exc).__name__}: {exc}"[:300]))
            return None
        # who answered: a replica (a handle's Response), else an instance (a RemoteResult)
        self.record(rid, Outcome(ANSWERED, getattr(reply, "replica", None)
                                 or getattr(reply, "instance", None)))
        return reply

    def merge(self, other: dict[str, Any]) -> None:
        """Add a ledger sent from another process (`as_dict`)."""
        with self._lock:
            self.sent.extend(other["sent"])
            for rid, (kind, replica, detail) in other["outcomes"].items():
                self.record(rid, Outcome(kind, replica, detail))
            self.recorded_twice.extend(other.get("recorded_twice", []))

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            outcomes = list(self.outcomes.items())  # one step: calls may add meanwhile
            return {"sent": list(self.sent), "recorded_twice": list(self.recorded_twice),
                    "outcomes": {r: [o.kind, o.replica, o.detail] for r, o in outcomes}}


@dataclass
class Reconciliation:
    """Both ledgers side by side. `lost` counts ids with no good outcome on either side: timed
    out, never given an outcome, or answered without any replica having executed them."""

    sent: int = 0
    answered: int = 0
    failed: dict[str, int] = field(default_factory=dict)   # explicit failures by cause
    timed_out: int = 0
    unfinished: list[str] = field(default_factory=list)    # sent, no outcome recorded
    executed: int = 0                                        # distinct ids executed
    retried: list[str] = field(default_factory=list)       # executed twice, one on a lost replica
    executed_twice_unexplained: list[str] = field(default_factory=list)
    answered_unexecuted: list[str] = field(default_factory=list)
    answered_by_other: list[str] = field(default_factory=list)  # no execution on the answerer
    answered_twice: list[str] = field(default_factory=list)
    executed_unsent: list[str] = field(default_factory=list)
    answered_but_failed: list[str] = field(default_factory=list)  # the answerer recorded err
    handler_error_unexecuted: list[str] = field(default_factory=list)  # no err execution
    refused_but_executed: list[str] = field(default_factory=list)
    unclassified: list[str] = field(default_factory=list)  # an exception of no known cause

    @property
    def lost(self) -> int:
        """What no one can vouch for: timed out, no outcome, an answer no replica produced,
        or a failure of no known cause."""
        return (self.timed_out + len(self.unfinished) + len(self.answered_unexecuted)
                + len(self.unclassified))

    def problems(self) -> list[str]:
        """Every way the two ledgers disagree; empty when nothing was lost or doubled."""
        out = []
        for name in ("unfinished", "executed_twice_unexplained", "answered_unexecuted",
                     "answered_by_other", "answered_twice", "executed_unsent",
                     "answered_but_failed", "handler_error_unexecuted",
                     "refused_but_executed", "unclassified"):
            ids = getattr(self, name)
            if ids:
                out.append(f"{len(ids)} {name.replace('_', ' ')}: {', '.join(ids[:5])}")
        if self.timed_out:
            out.append(f"{self.timed_out} timed out")
        return out

    def summary(self) -> dict[str, Any]:
        return {"sent": self.sent, "executed": self.executed, "answered": self.answered,
                "failed": dict(self.failed), "retried": len(self.retried),
                "timed_out": self.timed_out, "lost": self.lost,
                "problems": self.problems()}


def reconcile(clients: Iterable[ClientLedger], executed: dict[str, list[tuple[str, str]]],
              lost_replicas: Iterable[str] = ()) -> Reconciliation:
    """Compare what the clients saw with what the replicas executed: an answer must come from
    an `ok` execution on the replica that answered, a handler error from an `err` one, a
    refused request from none. An id executed more than once is a retry only when every
    execution but at most one was on a replica that was lost (its reply never came back, so
    the client resent it); any other repeat is reported."""
    lost_set = set(lost_replicas)
    result = Reconciliation()
    prefixes = []
    seen: set[str] = set()
    for ledger in clients:
        prefixes.append(f"{ledger.prefix}-")
        result.answered_twice.extend(ledger.recorded_twice)
        for rid in ledger.sent:
            if rid in seen:
                result.answered_twice.append(rid)
                continue
            seen.add(rid)
            result.sent += 1
            outcome = ledger.outcomes.get(rid)
            runs = executed.get(rid, [])
            if outcome is None:
                result.unfinished.append(rid)
            elif outcome.kind == ANSWERED:
                result.answered += 1
                by_answerer = [status for replica, status in runs
                               if outcome.replica is None or replica == outcome.replica]
                if not runs:
                    result.answered_unexecuted.append(rid)
                elif not by_answerer:
                    result.answered_by_other.append(rid)
                elif "ok" not in by_answerer:
                    result.answered_but_failed.append(rid)
            elif outcome.kind == TIMED_OUT:
                result.timed_out += 1
            elif outcome.kind.startswith("other: "):
                result.unclassified.append(rid)
            else:
                result.failed[outcome.kind] = result.failed.get(outcome.kind, 0) + 1
                if outcome.kind == HANDLER_ERROR and "err" not in {s for _, s in runs}:
                    result.handler_error_unexecuted.append(rid)
                elif outcome.kind == REFUSED and runs:
                    result.refused_but_executed.append(rid)
    for rid, runs in executed.items():
        if not any(rid.startswith(p) for p in prefixes):
            continue  # another client's (a health probe, a warm-up call)
        result.executed += 1
        if rid not in seen:
            result.executed_unsent.append(rid)
        if len(runs) > 1:
            on_live = [replica for replica, _ in runs if replica not in lost_set]
            (result.retried if len(on_live) <= 1 and len(set(r for r, _ in runs)) == len(runs)
             else result.executed_twice_unexplained).append(rid)
    return result
