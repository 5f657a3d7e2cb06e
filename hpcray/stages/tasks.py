"""What runs inside a Ray worker for one task attempt. Both kinds return a dict describing
the attempt instead of raising, so every failure is recorded with its details; only a lost
worker or a cancelled task surfaces as a Ray error."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcray import env
from hpcray import env as hpcray_env
from hpcray.errors import SpecError, TaskTimeout
from hpcray.runtime.containers import GPU_VARS, RANK_VARS, container_argv
from hpcray.runtime.targets import load_target
from hpcray.runtime.teardown import stop_group

TAIL = 2000  # characters of stderr kept in a failure record


def _where() -> dict[str, Any]:
    return {"node": env.current_node(), "pid": os.getpid(),
            "started": time.time()}


def run_function(call: tuple[str, dict[str, Any], bool, float | None],
                 item: Any) -> dict[str, Any]:
    """`call` is (target, args, has_item, timeout), the same for every task of a stage."""
    target, args, has_item, timeout = call

    def run():
        fn = load_target(target)
        return fn(item, **args) if has_item else fn(**args)

    return _attempt(run, timeout)


def _attempt(call: Callable[[], Any], timeout: float | None) -> dict[str, Any]:
    info = _where()
    try:
        with _deadline(timeout):
            output = call()
        return {**info, "ok": True, "output": output, "ended": time.time()}
    except TaskTimeout as exc:
        return {**info, "ok": False, "ended": time.time(), "timed_out": True,
                "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - recorded, the runner decides on retries
        return {**info, "ok": False, "ended": time.time(),
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-TAIL:]}


class StageActor:
    """A stateful stage's worker: builds the user's class once, then calls the instance once
    per task. Failures come back as the same records as `run_function`'s; a constructor that
    raises kills the actor, and its tasks see that as a lost worker (retried, then reported)."""

    def __init__(self, target: str, args: dict[str, Any]) -> None:
        self.instance = load_target(target)(**args)

    def run(self, item: Any, has_item: bool, timeout: float | None = None) -> dict[str, Any]:
        return _attempt(lambda: self.instance(item) if has_item else self.instance(), timeout)


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


def in_container(container: Any, argv: list[str], env: dict[str, str], cwd: str,
                 ranks: bool = False) -> list[str]:
    """`argv` in the stage's image, run from this Ray worker: the run and workflow
    directories bound, and the task's environment passed in: its `env`, the GPUs Ray gave
    it and every HPCRAY_* variable (the job's teardown marker included, which finds what a
    runtime starts outside this process tree). `ranks`: each MPI rank's own variables pass
    through from the launcher's step."""
    # a rank's own variables (its rank, node, GPUs) are the launcher's step's, set per
    # rank: passed by name, never as this worker's values
    per_rank = [*RANK_VARS, hpcray_env.RANK, hpcray_env.LOCAL_RANK, hpcray_env.NRANKS,
                hpcray_env.NODE_NAME, *GPU_VARS] if ranks else []
    passed = {k: v for k, v in os.environ.items()
              if (k.startswith("HPCRAY_") or k in GPU_VARS) and k not in per_rank}
    run_dir = env.get(hpcray_env.RUN_DIR) or os.environ.get(hpcray_env.RUN_DIR)
    binds = [d for d in (run_dir, cwd) if d]
    given = {k: v for k, v in env.items() if k not in per_rank}
    return container_argv(container, argv, binds=binds, env={**passed, **given}, workdir=cwd,
                          inherit=list(dict.fromkeys(per_rank)))


def run_command(argv: list[str], env: dict[str, str], stem: str,
                where: tuple[str, float | None],
                launch: dict[str, Any] | None = None,
                container: Any = None) -> dict[str, Any]:
    """The executable in its own process group, so a timeout kills all of it. With `launch`
    ({"launcher": name, "placement_group": pg, "per_node": k}), the site's launcher starts
    it k times on each node the placement group reserved. With `container` (a resolved
    ContainerSpec) it runs in that image (each rank, with `launch`). Output goes to
    `stem`.out and .err; `where` is (cwd, timeout), the same for every task of a stage."""
    cwd, timeout = where
    out, err = f"{stem}.out", f"{stem}.err"
    info = _where()
    if container is not None:
        try:
            argv = in_container(container, argv, env, cwd, ranks=launch is not None)
        except SpecError as exc:  # an unresolved spec: recorded like a failed start
            return {**info, "ok": False, "ended": time.time(), "exit_code": None,
                    "error": f"container: {exc}"}
    commands: list[tuple[list[str], dict[str, str]]] = [(argv, {})]
    if launch is not None:
        hosts = placed_hosts(launch["placement_group"])
        info["hosts"] = hosts
        commands = launched(launch["launcher"], hosts, argv, launch.get("per_node", 1))
    try:
        fo = open(out, "wb")  # noqa: SIM115 - closed below, with fe
    except FileNotFoundError:  # the runner makes the directory; on another filesystem, here
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fo = open(out, "wb")  # noqa: SIM115
    with fo, open(err, "wb") as fe:
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
                codes.append(_wait(proc, deadline))
            except subprocess.TimeoutExpired:
                for other in procs:
                    stop_group(other, 3)
                return {**info, "ok": False, "ended": time.time(), "exit_code": proc.returncode,
                        "timed_out": True, "error": f"timed out after {timeout:g}s",
                        "stderr_tail": _tail(err)}
        size = os.fstat(fo.fileno()).st_size
    ended = time.time()
    code = next((c for c in codes if c != 0), 0)
    if code != 0:
        return {**info, "ok": False, "ended": ended, "exit_code": code,
                "error": f"exit code {code}", "stderr_tail": _tail(err)}
    if size > 65536:  # a large output stays in its file; the record names it
        return {**info, "ok": True, "ended": ended, "exit_code": 0, "output": out}
    text = Path(out).read_text(errors="replace") if size else ""
    return {**info, "ok": True, "ended": ended, "exit_code": 0, "output": text.strip()}


def _wait(proc: subprocess.Popen, deadline: float | None) -> int:
    """Popen.wait(timeout) polls with growing sleeps (about 0.7 ms lost on a short command);
    a pidfd wakes us the moment the process exits."""
    if deadline is None:
        return proc.wait()
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: Python's polling wait
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1e3):
            raise subprocess.TimeoutExpired(proc.args, deadline)
    finally:
        os.close(fd)
    return proc.wait()


def _tail(path: str) -> str:
    try:
        data = Path(path).read_bytes()[-TAIL:]
    except OSError:
        return ""
    return data.decode(errors="replace")


def node_names_by_id() -> dict[str, str]:
    """Ray NodeID -> hpcray node name, for the nodes Ray lists with their resources."""
    import ray

    by_id = {}
    for node in ray.nodes():
        names = [k.split(":", 1)[1] for k in node.get("Resources", {})
                 if k.startswith("hpcray-node:")]
        if names:
            by_id[node["NodeID"]] = names[0]
    return by_id


_NODE_ID = re.compile(r"node ID: ([0-9a-f]{56})")


def node_named_in(error: str, names_by_id: dict[str, str]) -> str | None:
    """The hpcray node a Ray error names by its NodeID (NodeDiedError and the like)."""
    found = _NODE_ID.search(error)
    return names_by_id.get(found.group(1)) if found else None


def placed_hosts(pg: Any) -> list[str]:
    """The hpcray node names of a placement group's bundles, in bundle order."""
    import ray
    from ray.util import placement_group_table

    ray.get(pg.ready())
    by_id = node_names_by_id()
    bundles = placement_group_table(pg)["bundles_to_node_id"]
    return [by_id.get(bundles[i], bundles[i]) for i in sorted(bundles)]


def launched(launcher_name: str, hosts: list[str], argv: list[str], per_node: int = 1):
    """[(command, extra env)]: one launcher command, or each process of an emulated one."""
    from hpcray.launchers import LaunchRequest, get_launcher

    launcher = get_launcher(launcher_name)
    req = LaunchRequest(hosts=tuple(hosts), argv=tuple(argv), per_node=per_node)
    per_process = launcher.per_process_env(req)
    if per_process is not None:
        return [(launcher.command(req), extra) for extra in per_process]
    return [(launcher.command(req), {})]
