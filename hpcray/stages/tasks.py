"""What runs inside a Ray worker for one task attempt. Both kinds return a dict describing
the attempt instead of raising, so every failure is recorded with its details; only a lost
worker or a cancelled task surfaces as a Ray error."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from hpcray.bootstrap.teardown import MARKER, stop_group

TAIL = 2000  # characters of stderr kept in a failure record


def _where() -> dict[str, Any]:
    return {"node": os.environ.get(MARKER, "/").rsplit("/", 1)[-1] or None, "pid": os.getpid(),
            "started": time.time()}


def run_function(target: str, args: dict[str, Any], item: Any, has_item: bool,
                 timeout: float | None = None) -> dict[str, Any]:
    from hpcray.bootstrap.call import load_function

    info = _where()
    try:
        fn = load_function(target)
        with _deadline(timeout):
            output = fn(item, **args) if has_item else fn(**args)
        return {**info, "ok": True, "output": output, "ended": time.time()}
    except TaskTimeout as exc:
        return {**info, "ok": False, "ended": time.time(), "timed_out": True,
                "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - recorded, the runner decides on retries
        return {**info, "ok": False, "ended": time.time(),
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-TAIL:]}


class TaskTimeout(Exception):
    """The function ran past the stage's timeout."""


@contextlib.contextmanager
def _deadline(timeout: float | None):
    """SIGALRM in the worker's main thread (where Ray runs tasks): the timeout counts from the
    task's start, not from its submission, and the worker survives for the next task."""
    if not timeout or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum, _frame):
        raise TaskTimeout(f"timed out after {timeout:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_command(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str,
                timeout: float | None, launch: dict[str, Any] | None = None) -> dict[str, Any]:
    """The executable in its own process group, so a timeout kills all of it. With `launch`
    ({"launcher": name, "placement_group": pg}), the site's launcher starts it once on each
    node the placement group reserved."""
    info = _where()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    commands = [(argv, {})]
    if launch is not None:
        hosts = placed_hosts(launch["placement_group"])
        info["hosts"] = hosts
        commands = launched(launch["launcher"], hosts, argv)
    with open(out, "wb") as fo, open(err, "wb") as fe:
        procs = []
        for cmd, extra in commands:
            try:
                procs.append(subprocess.Popen(
                    cmd, cwd=cwd, env={**os.environ, **env, **extra}, stdout=fo, stderr=fe,
                    stdin=subprocess.DEVNULL, start_new_session=True))
            except OSError as exc:
                for proc in procs:
                    stop_group(proc, 3)
                return {**info, "ok": False, "ended": time.time(), "exit_code": None,
                        "error": f"cannot start {cmd[0]!r}: {exc}"}
        deadline = None if timeout is None else time.monotonic() + timeout
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=None if deadline is None
                                       else max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                for other in procs:
                    stop_group(other, 3)
                return {**info, "ok": False, "ended": time.time(), "exit_code": proc.returncode,
                        "timed_out": True, "error": f"timed out after {timeout:g}s",
                        "stderr_tail": _tail(err)}
    ended = time.time()
    code = next((c for c in codes if c != 0), 0)
    if code != 0:
        return {**info, "ok": False, "ended": ended, "exit_code": code,
                "error": f"exit code {code}", "stderr_tail": _tail(err)}
    text = Path(out).read_text(errors="replace")
    return {**info, "ok": True, "ended": ended, "exit_code": 0,
            "output": text.strip() if len(text) <= 65536 else out}


def _tail(path: str) -> str:
    try:
        data = Path(path).read_bytes()[-TAIL:]
    except OSError:
        return ""
    return data.decode(errors="replace")


def placed_hosts(pg: Any) -> list[str]:
    """The hpcray node names of a placement group's bundles, in bundle order."""
    import ray
    from ray.util import placement_group_table

    ray.get(pg.ready())
    by_id = {}
    for node in ray.nodes():
        names = [k.split(":", 1)[1] for k in node.get("Resources", {})
                 if k.startswith("hpcray-node:")]
        if names:
            by_id[node["NodeID"]] = names[0]
    bundles = placement_group_table(pg)["bundles_to_node_id"]
    return [by_id.get(bundles[i], bundles[i]) for i in sorted(bundles)]


def launched(launcher_name: str, hosts: list[str], argv: list[str]):
    """[(command, extra env)]: one launcher command, or one process per emulated node."""
    from hpcray.launchers import LaunchRequest, get_launcher

    launcher = get_launcher(launcher_name)
    req = LaunchRequest(hosts=tuple(hosts), argv=tuple(argv))
    per_process = launcher.per_process_env(req)
    if per_process is not None:
        return [(launcher.command(req), extra) for extra in per_process]
    return [(launcher.command(req), {})]
