"""Runs one program and ends its whole process tree when its owner goes away.

A program service's replica starts its program through this guard (`python guard.py OWNER_PID
GRACE -- ARGV...`, run as a file: it imports nothing of hpcray, so it starts in a few tens of
milliseconds). A replica that is stopped gracefully TERMs the guard's process group; one that
is killed outright (SIGKILL, a lost actor) cannot, so the guard watches its owner and stops
the program itself. Either way every descendant goes, including those that left the
process group, TERM first and KILL after GRACE seconds. The guard exits with the program's
exit status, so its owner sees the program's own exit."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
# what the program left running gets this long to end by itself before it is stopped: a
# container's monitor (podman's conmon) still removes the container after the program exited
LEFTOVER_WAIT_S = 5.0
PR_SET_CHILD_SUBREAPER = 36  # orphans of the program re-parent to the guard, not to init


def _stop_tree(root: psutil.Process, grace: float) -> None:
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: guard.py OWNER_PID GRACE -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    owner, grace, command = int(argv[0]), float(argv[1]), argv[3:]
    stopping = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    # not Linux: descendants in the group are still stopped
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        child = subprocess.Popen(command)  # noqa: S603 - an argv list from the workflow file
    except OSError as exc:
        print(f"hpcray: cannot start {command[0]!r}: {exc}", file=sys.stderr, flush=True)
        return 127
    me = psutil.Process()
    while child.poll() is None:
        if stopping or not psutil.pid_exists(owner) or os.getppid() != owner:
            with contextlib.suppress(psutil.NoSuchProcess):
                _stop_tree(psutil.Process(child.pid), grace)
            break
        time.sleep(POLL_S)
    code = child.wait()
    with contextlib.suppress(psutil.NoSuchProcess):  # daemons the program left behind
        _, lingering = psutil.wait_procs(me.children(recursive=True),
                                         timeout=min(grace, LEFTOVER_WAIT_S))
        for leftover in lingering:
            _stop_tree(leftover, grace)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
