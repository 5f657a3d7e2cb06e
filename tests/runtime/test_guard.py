"""The guard a program service's replica starts its program through: the whole tree goes
when the owner goes, however it goes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from hpcray.runtime import guard
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

# A program that starts a child in a new session (it leaves the process group) and prints
# both pids, then waits.
PROGRAM = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(600)
""")

# An owner that starts the guard as a program service's replica does, prints the guard's pid
# and then the program's two pids, and waits.
OWNER = textwrap.dedent("""
    import os, subprocess, sys, time
    guard, program = sys.argv[1], sys.argv[2]
    proc = subprocess.Popen([sys.executable, guard, str(os.getpid()), "2", "--",
                             sys.executable, "-c", program], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    print(proc.pid, flush=True)
    print(proc.stdout.readline().strip(), flush=True)
    time.sleep(600)
""")


def _start_owner() -> tuple[subprocess.Popen, list[int]]:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, guard.__file__, PROGRAM],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    guard_pid = int(owner.stdout.readline())
    grandchild = int(owner.stdout.readline())
    program = [p.pid for p in psutil.Process(guard_pid).children()]
    return owner, [guard_pid, *program, grandchild]


def _gone(pids: list[int]) -> bool:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return not alive


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_the_programs_whole_tree_goes_when_its_owner_dies(how):
    owner, pids = _start_owner()
    try:
        assert len(pids) == 3 and not _gone(pids)
        owner.send_signal(how)  # a replica killed outright, or stopped
        owner.wait(10)
        assert wait_until(lambda: _gone(pids), 20), [p for p in pids if psutil.pid_exists(p)]
    finally:
        owner.kill()
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


def test_the_guard_exits_with_the_programs_status_and_reports_a_missing_program():
    me = str(os.getpid())  # the guard's owner: this process
    done = subprocess.run([sys.executable, guard.__file__, me, "1", "--", sys.executable,
                           "-c", "raise SystemExit(7)"], timeout=30)
    assert done.returncode == 7
    missing = subprocess.run([sys.executable, guard.__file__, me, "1", "--",
                              "/nonexistent/server"], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 127 and "cannot start '/nonexistent/server'" in missing.stderr
