"""The driver process: the workflow's command or function, run against the cluster with the
run's token, its output copied to driver.log and to the job's output, stopped on request. A
driver function's process starts while the services come up and runs when they are ready."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

from hpcray import env as hpcray_env
from hpcray.bootstrap.plan import ClusterPlan
from hpcray.bootstrap.signals import Stop
from hpcray.rundir import RunDir
from hpcray.runtime.auth import auth_env
from hpcray.runtime.teardown import stop_group
from hpcray.runtime.tempdir import temp_dir_for
from hpcray.spec import Workflow

log = logging.getLogger("hpcray.up")

TAIL_LINES = 20


class DriverProcess:
    def __init__(self, run: RunDir, workflow: Workflow, request: dict[str, Any],
                 stop: Stop) -> None:
        self.run = run
        self.workflow = workflow
        self.request = request
        self.stop = stop
        self.proc: subprocess.Popen | None = None
        self.copier: threading.Thread | None = None
        self.gate: int | None = None  # the write end of an early driver's gate
        self.early_env: dict[str, str] = {}
        self.tail: deque[bytes] = deque(maxlen=TAIL_LINES)

    def command(self) -> list[str] | None:
        """The workflow's command, or a function run through `hpcray.bootstrap.call`."""
        driver = self.workflow.driver
        if driver is None:
            return None
        if driver.command is not None:
            return list(driver.command)
        args_path = self.run.path / "driver-args.json"
        args_path.write_text(json.dumps(driver.args))
        return [self.request["python"], "-m", "hpcray.bootstrap.call", driver.function or "",
                str(args_path)]

    def _launch(self, cmd: list[str], plan: ClusterPlan, head: dict[str, Any],
                env: dict[str, str], gate: int | None = None) -> subprocess.Popen:
        driver = self.workflow.driver
        assert driver is not None
        cwd = str(Path(self.request["workflow_dir"]) / os.path.expandvars(driver.cwd or "."))
        env = {**env, **auth_env(Path(plan.token_path)),
               hpcray_env.RAY_ADDRESS: head["address"], hpcray_env.RUN_DIR: str(self.run.path),
               "PYTHONUNBUFFERED": "1"}
        env.pop(hpcray_env.LAUNCHER, None)
        # the head's short temp dir, as every process Ray starts has (node.py), when the
        # driver runs beside the head (not on a separate launch node)
        head_temp = temp_dir_for(plan.temp_root, plan.job_id, plan.head.index)
        if os.path.isdir(head_temp):
            env[hpcray_env.TMPDIR] = env[hpcray_env.RAY_TMPDIR] = head_temp
        if gate is not None:
            env[hpcray_env.DRIVER_GATE] = str(gate)
        log.info("driver: %s (cwd %s)%s", " ".join(cmd), cwd,
                 "; started early, runs when the services are ready" if gate is not None else "")
        self.proc = proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=(gate,) if gate is not None else ())
        self.run.update(driver_pid=proc.pid)
        self.copier = threading.Thread(target=self._copy_output, args=(proc,), daemon=True)
        self.copier.start()
        return proc

    def start_early(self, plan: ClusterPlan, head: dict[str, Any], env: dict[str, str]) -> None:
        """A driver function's process, started while the services come up: it imports and
        connects, then waits at its gate (bootstrap/call.py) until `run_to_end` lets it go.
        A driver command starts only then: nothing can hold it at a gate."""
        if self.workflow.driver is None or self.workflow.driver.command is not None:
            return
        cmd = self.command()
        assert cmd is not None
        read_end, self.gate = os.pipe()
        try:
            self._launch(cmd, plan, head, env, gate=read_end)
        except OSError:
            os.close(self.gate)
            self.gate = None
            raise
        finally:
            os.close(read_end)
        self.early_env = dict(env)
        self.run.mark("driver_launched")

    def _open_gate(self, env: dict[str, str]) -> None:
        """What the services added to the environment since the early start, then go."""
        assert self.gate is not None
        added = {k: v for k, v in env.items() if self.early_env.get(k) != v}
        gate, self.gate = self.gate, None
        try:  # a file object writes it all, however the pipe takes it
            with os.fdopen(gate, "wb") as pipe:
                pipe.write(json.dumps(added).encode() + b"\n")
        except BrokenPipeError:
            pass  # the driver already exited: its exit code says why

    def discard(self) -> None:
        """An early driver whose run ended before it was let go: close its gate (it exits by
        itself) and stop its process group."""
        if self.gate is not None:
            os.close(self.gate)
            self.gate = None
        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc, self.workflow.ray.teardown_grace)

    def run_to_end(self, plan: ClusterPlan, head: dict[str, Any],
                   env: dict[str, str]) -> int | None:
        """The driver's exit code; None when there is none to run. With neither a driver nor
        stages the cluster stays up until the run is stopped."""
        if self.stop.event.is_set():  # cancelled or out of time before the driver's turn
            self.discard()
            return None
        cmd = self.command() if self.proc is None else []
        if cmd is None and self.workflow.stages:
            return None  # the stages were the workflow: done
        if cmd is None:
            log.info("no driver: the cluster stays up until cancel or the walltime; connect "
                     "with hpcray.connect(%r)", str(self.run.path))
            self.stop.event.wait()
            return None
        self.run.mark("driver_start")
        if self.proc is None:
            proc = self._launch(cmd, plan, head, env)
        else:
            proc = self.proc
            self._open_gate(env)
        while proc.poll() is None:
            if self.stop.event.wait(0.2):
                log.warning("stopping the driver (%s)", self.stop.reason)
                stop_group(proc, self.workflow.ray.teardown_grace)
                break
        code = proc.wait()
        if self.copier is not None:
            self.copier.join(timeout=5)
        self.run.mark("driver_end", driver_exit_code=code)
        log.info("driver exited with code %d", code)
        return code

    def failure(self, code: int) -> str:
        """How the driver ended, and the last line of its output (the exception, usually)."""
        what = f"driver killed by {signal.Signals(-code).name}" if code < 0 \
            else f"driver exited with code {code}"
        tail = b"".join(self.tail).decode(errors="replace")
        last = [line for line in tail.splitlines() if line.strip()]
        return f"{what}: {last[-1].strip()[:300]}" if last else what

    def _copy_output(self, proc: subprocess.Popen) -> None:
        """driver.log and our stdout get every line; the last ones are kept here too, for the
        error when the driver fails (the log may be on a disk that just filled up)."""
        assert proc.stdout is not None
        log_file: BinaryIO | None = open(self.run.logs / "driver.log", "ab")  # noqa: SIM115
        try:
            for line in iter(proc.stdout.readline, b""):
                self.tail.append(line)
                if log_file is not None:
                    try:
                        log_file.write(line)
                        log_file.flush()
                    except OSError as exc:
                        log.error("driver.log: %s; the driver's output goes on to job.out", exc)
                        log_file = None
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
        finally:
            if log_file is not None:
                with contextlib.suppress(OSError):
                    log_file.close()
