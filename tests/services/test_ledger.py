"""The request ledgers: each disagreement between what clients saw and what replicas executed
is found. A replica SIGKILLed under load and reconciled: tests/services/direct/test_server_client.py
"""

from __future__ import annotations

import pytest

from hpcray.errors import (
    RemoteServerError,
    RemoteTimeout,
    RemoteUnavailable,
    ReplicaLost,
    ServiceCallError,
    ServiceRequestError,
    ServiceTimeout,
)
from hpcray.services import ledger as ledgers
from hpcray.services.ledger import (
    ANSWERED,
    ClientLedger,
    ExecutedLog,
    Outcome,
    cause_of,
    read_executed,
    reconcile,
)


def _client(prefix: str, outcomes: dict[int, Outcome | None]) -> ClientLedger:
    client = ClientLedger(prefix)
    for _ in outcomes:
        client.new_id()
    for i, outcome in outcomes.items():
        if outcome is not None:
            client.record(f"{prefix}-{i}", outcome)
    return client


def _executed(*rows: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    """(id, replica) executed ok, or (id, replica, status)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for rid, replica, *status in rows:
        out.setdefault(rid, []).append((replica, status[0] if status else "ok"))
    return out


def test_agreeing_ledgers_have_no_problem():
    client = _client("c", {1: Outcome(ANSWERED, "r1"), 2: Outcome(ANSWERED, "r2"),
                           3: Outcome(ledgers.REPLICA_LOST)})
    result = reconcile([client], _executed(("c-1", "r1"), ("c-2", "r2")))
    assert result.summary() == {"sent": 3, "executed": 2, "answered": 2,
                                "failed": {"replica lost": 1}, "retried": 0, "timed_out": 0,
                                "lost": 0, "problems": []}


@pytest.mark.parametrize(("outcomes", "executed", "lost_replicas", "problem"), [
    # a timeout is a loss, whatever the replicas did
    ({1: Outcome(ledgers.TIMED_OUT)}, [("c-1", "r1")], (), "1 timed out"),
    # sent and never given an outcome (a client thread that hung or died)
    ({1: None}, [], (), "1 unfinished: c-1"),
    # answered, but no replica executed it
    ({1: Outcome(ANSWERED, "r1")}, [], (), "1 answered unexecuted: c-1"),
    # answered by a replica that has no record of executing it
    ({1: Outcome(ANSWERED, "r2")}, [("c-1", "r1")], (), "1 answered by other: c-1"),
    # executed twice with no replica lost: not a retry
    ({1: Outcome(ANSWERED, "r2")}, [("c-1", "r1"), ("c-1", "r2")], (),
     "1 executed twice unexplained: c-1"),
    # executed twice on the same replica, even if another was lost
    ({1: Outcome(ANSWERED, "r2")}, [("c-1", "r2"), ("c-1", "r2")], ("r1",),
     "1 executed twice unexplained: c-1"),
    # executed with this client's prefix but never sent by it
    ({1: Outcome(ANSWERED, "r1")}, [("c-1", "r1"), ("c-9", "r1")], (),
     "1 executed unsent: c-9"),
    # answered, but the answerer's handler failed on it
    ({1: Outcome(ANSWERED, "r1")}, [("c-1", "r1", "err")], (), "1 answered but failed: c-1"),
    # a handler error no replica recorded as one
    ({1: Outcome(ledgers.HANDLER_ERROR, "r1")}, [("c-1", "r1")], (),
     "1 handler error unexecuted: c-1"),
    # refused, yet executed
    ({1: Outcome(ledgers.REFUSED)}, [("c-1", "r1")], (), "1 refused but executed: c-1"),
    # an exception of no known cause is no explicit failure
    ({1: Outcome("other: KeyError")}, [], (), "1 unclassified: c-1"),
    # run on a lost replica and on two live ones: one live execution too many
    ({1: Outcome(ANSWERED, "r2")}, [("c-1", "r1"), ("c-1", "r2"), ("c-1", "r3")], ("r1",),
     "1 executed twice unexplained: c-1"),
])
def test_each_disagreement_is_reported(outcomes, executed, lost_replicas, problem):
    result = reconcile([_client("c", outcomes)], _executed(*executed), lost_replicas)
    assert result.problems() == [problem]


def test_explicit_failures_that_agree_with_the_replicas_are_no_problem():
    client = _client("c", {1: Outcome(ledgers.HANDLER_ERROR, "r1"),
                           2: Outcome(ledgers.REFUSED), 3: Outcome(ledgers.REPLICA_LOST)})
    result = reconcile([client], _executed(("c-1", "r1", "err"), ("c-3", "r1")), ["r1"])
    assert result.problems() == [] and result.lost == 0
    assert result.failed == {"handler error": 1, "refused": 1, "replica lost": 1}


def test_a_retry_after_a_lost_replica_is_reported_as_such():
    client = _client("c", {1: Outcome(ANSWERED, "r2")})
    result = reconcile([client], _executed(("c-1", "r1"), ("c-1", "r2")), lost_replicas=["r1"])
    assert result.retried == ["c-1"] and result.problems() == [] and result.lost == 0


def test_an_id_given_two_outcomes_is_reported():
    client = _client("c", {1: Outcome(ANSWERED, "r1")})
    client.record("c-1", Outcome(ANSWERED, "r1"))
    result = reconcile([client], _executed(("c-1", "r1")))
    assert result.problems() == ["1 answered twice: c-1"]


def test_other_clients_ids_are_left_out():
    result = reconcile([_client("c", {1: Outcome(ANSWERED, "r1")})],
                       _executed(("c-1", "r1"), ("probe-1", "r1")))
    assert result.problems() == [] and result.executed == 1


def test_ledgers_from_other_processes_merge():
    remote = _client("p1", {1: Outcome(ANSWERED, "r1"), 2: Outcome(ledgers.TIMED_OUT)})
    merged = ClientLedger("p1")
    merged.merge(remote.as_dict())
    result = reconcile([merged], _executed(("p1-1", "r1")))
    assert (result.sent, result.answered, result.timed_out, result.lost) == (2, 1, 1, 1)


def test_causes_are_named():
    assert cause_of(ServiceTimeout("late")) == ledgers.TIMED_OUT
    assert cause_of(TimeoutError()) == ledgers.TIMED_OUT
    assert cause_of(RemoteTimeout("far: timed out waiting for a reply")) == ledgers.TIMED_OUT
    assert cause_of(RemoteUnavailable("far: refused")) == ledgers.UNAVAILABLE
    assert cause_of(RemoteServerError("far: 500")) == ledgers.REMOTE_ERROR
    assert cause_of(ReplicaLost("gone")) == ledgers.REPLICA_LOST
    assert cause_of(ServiceRequestError("bad")) == ledgers.REFUSED
    assert cause_of(ServiceCallError("boom", "r1")) == ledgers.HANDLER_ERROR
    assert cause_of(KeyError("x")) == "other: KeyError"


def test_the_client_ledger_records_each_call_once():
    client = ClientLedger("c")

    def call(x, *, request_id):
        if x == "late":
            raise ServiceTimeout("no reply")

        class Reply:
            replica = "r1"
        return Reply()

    assert client.call(call, "fine") is not None
    assert client.call(call, "late") is None
    assert [o.kind for o in client.outcomes.values()] == [ANSWERED, ledgers.TIMED_OUT]
    assert client.sent == ["c-1", "c-2"]


def test_the_executed_log_is_read_back_per_replica(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCRAY_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("HPCRAY_LEDGER", raising=False)
    assert ledgers.executed_log("svc", "r1") is None  # off by default
    monkeypatch.setenv("HPCRAY_LEDGER", "1")
    log = ledgers.executed_log("svc", "r1")
    assert log is not None
    log.record(b"a-1")
    log.record("a-2", ok=False)
    ExecutedLog(tmp_path / "ledger" / "svc" / "r2.executed").record("a-1")
    log.record(b"two\nlines and spaces")  # any bytes a direct-path id may hold: one line
    assert read_executed(tmp_path, "svc") == {"a-1": [("r1", "ok"), ("r2", "ok")],
                                              "a-2": [("r1", "err")],
                                              "two\\nlines and spaces": [("r1", "ok")]}
