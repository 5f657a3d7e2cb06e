"""RADICAL-Pilot's side of the side-by-side service bootstrap benchmark.

    bash benchmarks/rp_env.sh      # once: RP in its own venv, benchmarks/.rp-venv
    benchmarks/.rp-venv/bin/python benchmarks/rp_services.py --services N --calls 1000 \
        --out result.json

One RP session on `local.localhost` (fork launcher; RP 1.103 needs no MongoDB): a pilot with
one core per service and N service tasks (TaskDescription mode TASK_SERVICE), each running
benchmarks/rp_noop_service.py, a ZeroMQ echo whose address RP's service wrapper picks up with
`info_pattern`. Times are seconds from just before `rp.Session()` (t_submit): pilot_active
(pilot reaches PMGR_ACTIVE) and services_ready (every service's address known to the
client); then the round trip of --calls echoes to one service (after --warmup calls not
counted) and the teardown (`session.close(download=False)`). Every sandbox, log and profile
goes to one temp dir, removed afterwards (kept, and named on stderr, on failure or --keep).

RP's console report and profiles are off unless RADICAL_REPORT / RADICAL_PROFILE are set;
RP's logs keep their default level (ERROR) and go to files in the temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import zmq

SERVICE = Path(__file__).resolve().parent / "rp_noop_service.py"
ADDRESS = re.compile(r"^tcp://127\.0\.0\.1:\d+$")
# RP's service wrapper matches `^.*(<regex>).*$` on each stdout line and reports the last group.
INFO_PATTERN = r"stdout:tcp://127\.0\.0\.1:[0-9]+"


class BenchmarkError(RuntimeError):
    """A run that did not measure what it should: reported, exit status 1."""


def _percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank below, as benchmarks/program_rt.py computes its p95."""
    return sorted_ms[int(q * (len(sorted_ms) - 1))]


def round_trips(address: str, calls: int, warmup: int, payload: bytes) -> list[float]:
    """Round trips in ms of `calls` echoes on one REQ socket, each checked for the same bytes."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)  # a dead service fails the run instead of hanging
    sock.connect(address)
    out: list[float] = []
    try:
        for i in range(warmup + calls):
            t0 = time.perf_counter()
            sock.send(payload)
            reply = sock.recv()
            dt = time.perf_counter() - t0
            if reply != payload:
                raise BenchmarkError(f"echo from {address} returned {reply!r}")
            if i >= warmup:
                out.append(1e3 * dt)
    except zmq.Again as e:
        raise BenchmarkError(f"no reply from {address} within 10 s") from e
    finally:
        sock.close()
        ctx.term()
    return out


def our_processes(root: Path) -> list[psutil.Process]:
    """Processes this run may have left: a NOOP service, or anything working under `root`
    (this process and its parents, whose cwd or argv may match too, excepted)."""
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if proc.info["pid"] in skip:
            continue
        argv = proc.info["cmdline"] or []
        cwd = proc.info["cwd"] or ""
        if str(SERVICE) in argv or cwd == str(root) or cwd.startswith(f"{root}{os.sep}"):
            found.append(proc)
    return found


def leftovers(root: Path, grace: float) -> tuple[int, list[psutil.Process]]:
    """How many of our processes outlived the teardown, and those still there `grace` s
    later (RP's own reaping is asynchronous: count only what it does not get to)."""
    at_close = len(our_processes(root))
    end = time.monotonic() + grace
    while (left := our_processes(root)) and time.monotonic() < end:
        time.sleep(0.2)
    return at_close, left


def kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL what teardown left, and reap it."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def service_stderr(task: Any) -> str:
    """The tail of a service's own stderr: RP's service wrapper sends it to a file in the
    task sandbox, so Task.stderr (the wrapper's) does not show why the service died."""
    if not task.task_sandbox:
        return ""
    path = Path(urlparse(str(task.task_sandbox)).path) / f"{task.uid}.stderr"
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-500:].strip()
    return ""


def wait_services(tasks: list[Any], deadline: float, t0: float,
                  failed: Callable[[], str | None]) -> tuple[list[str], list[float]]:
    """Each service's address and its ready time from t0, in submission order (the order
    the agent starts them in); BenchmarkError past the deadline or once `failed` says why.

    `Task.wait_info` returns once RP's `service_up` control message for that task reached
    the client. A service that exits first only gets its info event at a final state, which
    can take long, so short waits alternate with a look at `failed`.
    """
    addresses: list[str] = []
    ready: list[float] = []
    for task in tasks:
        while True:
            with contextlib.suppress(RuntimeError):  # no info yet
                info = task.wait_info(timeout=0.25)
                if info is not None:
                    break
            why = failed()
            now = time.perf_counter()
            if why or now > deadline:
                late = ", ".join(f"{t.uid}: {t.state}" for t in tasks if t.info is None)
                raise BenchmarkError(f"services not ready after {now - t0:.1f}s: "
                                     f"{why or 'timeout'}; not ready: {late}")
        if not ADDRESS.match(str(info)):
            raise BenchmarkError(f"service {task.uid} reported {info!r}, not an address")
        addresses.append(str(info))
        ready.append(time.perf_counter() - t0)
    return addresses, ready


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One session: pilot, N services, round trips, teardown; the JSON record.

    As RP's own examples do, the TaskManager is made and the services are submitted while
    the pilot still boots (RP holds them until it is active), so pilot_active and
    services_ready overlap; pilot_active is taken from a state callback.
    """
    import radical.pilot as rp  # after the RADICAL_* defaults are set

    load = os.getloadavg()[0]  # this 2-core machine is shared: note how busy it was
    t0 = time.perf_counter()
    deadline = t0 + args.timeout
    active: list[float] = []
    session = rp.Session()
    closed = False
    try:
        pmgr = rp.PilotManager(session=session)
        pmgr.register_callback(
            lambda pilot, state: active.append(time.perf_counter() - t0)
            if state == rp.PMGR_ACTIVE else None)
        pilot = pmgr.submit_pilots(rp.PilotDescription({
            "resource": "local.localhost",
            "cores": args.services,
            "runtime": max(10, int(args.timeout / 60) + 10),  # minutes: a bound, not a target
            "sandbox": str(root / "sandbox"),
            "exit_on_error": False,  # RP's default SIGTERMs this process on a failed pilot
        }))
        tmgr = rp.TaskManager(session=session)
        tmgr.add_pilots(pilot)
        tasks = tmgr.submit_tasks([rp.TaskDescription({
            "mode": rp.TASK_SERVICE,
            "uid": f"noop.{i:04d}",
            "executable": sys.executable,
            "arguments": [str(SERVICE)],
            "info_pattern": INFO_PATTERN,
            # tasks get the env the pilot started in, without RP's venv, but RP runs a service
            # through `radical-pilot-service-wrapper` by name: RP's own env has it on PATH
            "named_env": "rp",
            "ranks": 1,
            "cores_per_rank": 1,
            # the agent waits for each service in turn; without this a broken one blocks it
            "startup_timeout": args.timeout,
        }) for i in range(args.services)])

        ended = {rp.TMGR_STAGING_OUTPUT_PENDING, rp.TMGR_STAGING_OUTPUT, *rp.FINAL}

        def failed() -> str | None:
            if pilot.state in rp.FINAL:
                return f"pilot {pilot.uid} {pilot.state} ({pilot.stderr!r})"
            done = [t for t in tasks if t.info is None and t.state in ended]
            return (f"{done[0].uid} ended (stderr: {service_stderr(done[0])!r})" if done
                    else None)

        addresses, ready = wait_services(tasks, deadline, t0, failed)
        services_ready = time.perf_counter() - t0
        if not active:
            raise BenchmarkError(f"services ready, but pilot {pilot.uid} is {pilot.state}")

        rts = sorted(round_trips(addresses[0], args.calls, args.warmup, b"x" * args.payload))

        t_close = time.perf_counter()
        session.close(download=False)
        closed = True
        teardown = time.perf_counter() - t_close
    finally:
        if not closed:
            session.close(download=False)

    at_close, left = leftovers(root, grace=5.0)
    kill_all(left)
    return {
        "system": "radical.pilot",
        "version": rp.version_short,
        "services": args.services,
        "pilot_active": round(active[0], 4),
        "services_ready": round(services_ready, 4),
        "services_ready_after_active": round(services_ready - active[0], 4),
        "service_ready_each": [round(r, 4) for r in ready],
        "calls": len(rts),
        "rt_p50_ms": round(statistics.median(rts), 4),
        "rt_p99_ms": round(_percentile(rts, 0.99), 4),
        "teardown": round(teardown, 4),
        "processes_at_close": at_close,
        "leftover_processes": len(left),
        "leftover_cmdlines": [" ".join(p.info["cmdline"] or ())[:200] for p in left],
        "loadavg_1m_at_start": round(load, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse, run in a temp dir, write the JSON; exit status 1 on any failure."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=1, help="N service tasks")
    ap.add_argument("--calls", type=int, default=1000, help="timed echoes to one service")
    ap.add_argument("--warmup", type=int, default=50, help="echoes before the timed ones")
    ap.add_argument("--payload", type=int, default=16, help="bytes per echo")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds from session creation until all services are ready")
    ap.add_argument("--out", type=Path, help="JSON file (stdout too)")
    ap.add_argument("--keep", action="store_true", help="keep RP's sandbox and logs")
    args = ap.parse_args(argv)
    if args.services < 1 or args.calls < 1:
        ap.error("--services and --calls must be >= 1")

    for var in ("RADICAL_REPORT", "RADICAL_PROFILE"):
        os.environ.setdefault(var, "FALSE")
    # virtenv_mode 'local' (local.localhost) runs the agent in $VIRTUAL_ENV, else in whatever
    # python3 a login shell finds, which lacks radical-pilot-agent_0: act as if activated
    if sys.prefix != sys.base_prefix:
        os.environ["VIRTUAL_ENV"] = sys.prefix
        os.environ["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}"

    root = Path(tempfile.mkdtemp(prefix="rp-bench-"))
    os.environ["RADICAL_BASE"] = str(root)  # RP's id counters and caches, not ~/.radical
    os.environ["TMPDIR"] = tempfile.tempdir = str(root)  # RP's agent config and tarball
    cwd = Path.cwd()
    os.chdir(root)  # RP writes its client sandbox (logs) into $PWD
    os.environ["PWD"] = str(root)
    try:
        result = run(args, root)
    except BaseException as e:
        kill_all(our_processes(root))
        print(f"rp_services: FAILED: {e!r}\nrp_services: RP sandbox and logs kept in {root}",
              file=sys.stderr)
        if isinstance(e, BenchmarkError):
            return 1
        raise  # a traceback, exit status 1
    finally:
        os.chdir(cwd)
        os.environ["PWD"] = str(cwd)
    if args.keep:
        print(f"rp_services: RP sandbox and logs kept in {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)

    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
