"""Job-scoped teardown against real processes: only the job's, re-parented ones included."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from hpcray.runtime.teardown import MARKER, marked_processes, marker_value, teardown

pytestmark = pytest.mark.timeout(60)

SLEEPER = "import time\nwhile True: time.sleep(1)"
# ignores TERM, and says so on stdout once it does (the test waits for that line)
STUBBORN = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ignoring TERM', flush=True)\n" + SLEEPER)
# a child that daemonizes (new session, parent exits): it is re-parented, as Ray workers are
ORPHAN = ("import os, subprocess, sys\n"
          f"subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], start_new_session=True)\n")


def spawn(code: str, marker: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    if marker:
        env[MARKER] = marker
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    if code is STUBBORN:  # a gate, not a sleep: TERM is ignored from here on
        assert proc.stdout is not None and proc.stdout.readline() == "ignoring TERM\n"
    return proc


def wait_for(condition, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        p.kill()
        p.wait()
    for scope in ("jobA", "jobB"):
        for p in marked_processes(scope):
            p.kill()


def test_teardown_kills_only_this_job(procs):
    a_node0 = marker_value("jobA", "n0")
    procs += [spawn(SLEEPER, a_node0), spawn(STUBBORN, a_node0), spawn(ORPHAN, a_node0),
              spawn(SLEEPER, marker_value("jobA", "n1")),
              spawn(SLEEPER, marker_value("jobB", "n0")), spawn(SLEEPER, None)]
    # two sleepers + the re-parented grandchild, once the orphan's parent has exited
    assert wait_for(lambda: procs[2].poll() is not None and len(marked_processes(a_node0)) == 3)
    killed = teardown(a_node0, grace=1.0)
    assert len(killed) >= 3
    assert marked_processes(a_node0) == []
    # the other node of the same job, the other job and unrelated processes are untouched
    assert procs[3].poll() is None and procs[4].poll() is None and procs[5].poll() is None
    # the cluster-wide scope (final sweep of `hpcray up`) takes the remaining node of job A
    teardown("jobA", grace=1.0)
    assert procs[3].wait(timeout=5) is not None
    assert procs[4].poll() is None


def test_stubborn_process_is_killed_after_grace(procs):
    procs.append(spawn(STUBBORN, marker_value("jobA", "n0")))  # returns once TERM is ignored
    start = time.monotonic()
    teardown("jobA", grace=0.5)
    elapsed = time.monotonic() - start
    procs[0].wait(timeout=5)  # (psutil may already have reaped it)
    assert not psutil.pid_exists(procs[0].pid)
    assert 0.5 <= elapsed < 10  # it ignored TERM, so it took the grace period and a KILL


def test_root_tree_is_stopped_first(procs):
    root = spawn(SLEEPER, None)  # no marker: found through the process tree only
    procs.append(root)
    teardown("jobA", roots=[root.pid], grace=1.0)
    assert root.wait(timeout=5) is not None
    assert not psutil.pid_exists(root.pid) or psutil.Process(root.pid).status() == "zombie"


# `ray start --block` as it stops on TERM: its raylet and GCS first, then it waits on its other
# daemons one by one (a second each in Ray; here for ever, and one ignores TERM)
FAKE_RAY_START = f"""
import os, signal, subprocess, sys, time
core = [subprocess.Popen([os.path.join(sys.argv[1], name), "600"])
        for name in ("raylet", "gcs_server")]
monitor = subprocess.Popen([sys.executable, "-c", {STUBBORN!r}])
def on_term(*_):
    for p in core:
        p.terminate()
    for p in core:
        p.wait()
    while True:
        time.sleep(1)
signal.signal(signal.SIGTERM, on_term)
print(monitor.pid, flush=True)
while True:
    time.sleep(1)
"""


def test_ray_start_is_killed_once_its_raylet_and_gcs_are_gone(procs, tmp_path):
    """The grace bounds the wait for raylet and GCS only: what `ray start` would still wait
    on is killed (with a 60 s grace and a 60 s test timeout, waiting it out fails)."""
    import shutil

    for name in ("raylet", "gcs_server"):
        shutil.copy(shutil.which("sleep"), tmp_path / name)
    env = {**os.environ, MARKER: marker_value("jobA", "n0")}
    root = subprocess.Popen([sys.executable, "-c", FAKE_RAY_START, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    procs.append(root)
    assert root.stdout is not None
    monitor = int(root.stdout.readline())
    daemons = psutil.Process(root.pid).children()
    names = sorted(d.name() for d in daemons)
    assert len(daemons) == 3 and names[0] == "gcs_server" and "raylet" in names
    killed = teardown("jobA/n0", roots=[root.pid], grace=60)
    # it never exits by itself once TERMed: gone means killed, not waited out
    assert not psutil.pid_exists(root.pid) or psutil.Process(root.pid).status() == "zombie"
    assert monitor in killed and root.pid in killed
    assert not [d for d in daemons if d.is_running() and d.status() != psutil.STATUS_ZOMBIE]


def test_ray_logs_kept_newest_first_bounded_and_without_secrets(tmp_path):
    """A node's session logs copied before its temp dir goes: newest files first up to the
    bound, a file that does not fit keeps its end from a line's start, older ones are listed
    as left out, the run's tokens never copied; neither the `session_latest` link followed
    nor the session of an earlier job that kept this temp dir (Slurm reuses job ids)."""
    from hpcray.runtime.teardown import LEFT_OUT, keep_ray_logs

    temp = tmp_path / "hr1n0"
    logs = temp / "session_2026-12-02_08-00-00_1_2" / "logs"
    (logs / "serve").mkdir(parents=True)
    (temp / "session_latest").symlink_to(logs.parent)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    token = "f" * 64
    (secrets / "ray-token").write_text(token)
    files = {"old.log": b"o" * 400 + b"\n", "raylet.out": b"x" * 50 + b"\n" + b"y" * 99 + b"\n",
             "serve/replica_hpcray-a_a_1.log": f"auth {token} ok\n".encode()}
    for age, (name, data) in enumerate(files.items()):
        (logs / name).write_bytes(data)
        os.utime(logs / name, (time.time() - 100 + age * 10,) * 2)  # old.log the oldest
    earlier = temp / "session_2026-12-01_08-00-00_1_2" / "logs"
    earlier.mkdir(parents=True)
    (earlier / "raylet.out").write_text("an earlier job's\n")
    os.utime(earlier, (time.time() - 1000,) * 2)
    dest = tmp_path / "run" / "logs" / "ray" / "n0"
    written = keep_ray_logs(temp, dest, limit=139, secrets_dir=secrets, since=time.time() - 500)
    assert (dest / "serve/replica_hpcray-a_a_1.log").read_text() == "auth <redacted> ok\n"
    # 139 - 19 bytes left for raylet.out's 151: its last whole line only
    assert (dest / "raylet.out").read_bytes() == b"y" * 99 + b"\n"
    assert not (dest / "old.log").exists() and not (dest / "session_latest").exists()
    assert sorted(p.name for p in dest.iterdir()) == [LEFT_OUT, "raylet.out", "serve"]
    assert written == 19 + 100
    notes = (dest / LEFT_OUT).read_text()
    assert "raylet.out: 151 bytes, its last 100 kept" in notes
    assert "old.log: 401 bytes, left out" in notes
