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

from hpcray.bootstrap.teardown import MARKER

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
                timeout: float | None) -> dict[str, Any]:
    """The executable in its own process group, so a timeout kills all of it."""
    info = _where()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fo, open(err, "wb") as fe:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdout=fo,
                                    stderr=fe, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return {**info, "ok": False, "ended": time.time(), "exit_code": None,
                    "error": f"cannot start {argv[0]!r}: {exc}"}
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return {**info, "ok": False, "ended": time.time(), "exit_code": proc.returncode,
                    "timed_out": True, "error": f"timed out after {timeout:g}s",
                    "stderr_tail": _tail(err)}
    ended = time.time()
    if code != 0:
        return {**info, "ok": False, "ended": ended, "exit_code": code,
                "error": f"exit code {code}", "stderr_tail": _tail(err)}
    text = Path(out).read_text(errors="replace")
    return {**info, "ok": True, "ended": ended, "exit_code": 0,
            "output": text.strip() if len(text) <= 65536 else out}


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: str) -> str:
    try:
        data = Path(path).read_bytes()[-TAIL:]
    except OSError:
        return ""
    return data.decode(errors="replace")
