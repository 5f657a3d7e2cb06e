"""Teardown: stop the services, disconnect, ask every node agent to stop (the stop file),
and signal the launchers only when that does not end them. Nothing here may stop it half
way: a record that cannot be written is logged."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from hpcray.bootstrap.events import collect_quietly
from hpcray.bootstrap.plan import ClusterPlan
from hpcray.bootstrap.signals import Stop
from hpcray.rundir import RunDir, read_json
from hpcray.runtime.teardown import teardown
from hpcray.state import NODE_ENDED

if TYPE_CHECKING:
    from hpcray.services.manager import ServiceManager

log = logging.getLogger("hpcray.up")


def record(run: RunDir, event: str, **fields: Any) -> None:
    """run.mark that logs instead of raising (a full disk must not stop the teardown)."""
    try:
        run.mark(event, **fields)
    except OSError as exc:
        log.error("cannot record %s in run.json: %s", event, exc)


def nodes_lost(run: RunDir) -> list[str]:
    return read_json(run.run_json, {}).get("nodes_lost") or []


class Shutdown:
    def __init__(self, run: RunDir, stop: Stop, launched: list[subprocess.Popen],
                 grace: float) -> None:
        self.run = run
        self.stop = stop
        self.launched = launched
        self.grace = grace

    def __call__(self, plan: ClusterPlan | None, services: ServiceManager | None) -> None:
        """Each agent tears down its own node gracefully and the launcher exits by itself;
        the launchers are signalled only if that does not happen. Ray's record of what ran
        is kept first, while every service and the cluster are still there (events.py); it
        takes its own time, before teardown_start, so the teardown's length stays its own."""
        if not self.stop.is_head_lost and "ray" in sys.modules:
            # stopped early (a signal, the walltime): less time before the scheduler kills
            collect_quietly(self.run, budget_s=10.0 if self.stop.reason is None else 3.0)
        record(self.run, "teardown_start")
        if services is not None and not self.stop.is_head_lost:  # with the head, Serve went
            # after a lost node Serve would wait out its graceful timeouts (20-30 s) on actors
            # that will never answer; the sweep below stops what is left on every node anyway
            lost = bool(nodes_lost(self.run))
            services.stop(shutdown=not lost, wait=not lost)
            record(self.run, "services_stopped")
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        self._write_stop_file()
        self._end_launchers(plan)
        if plan:
            killed = teardown(plan.cluster_id, grace=self.grace)
            if killed:
                log.info("swept %d leftover process(es) of this job on this host", len(killed))
        record(self.run, "teardown_end")

    def _write_stop_file(self) -> None:
        try:
            self.run.write_with_reserve(lambda: self.run.stop_file.write_text(
                f"{self.stop.reason or 'run finished'}\n"))
        except OSError as exc:  # the agents are signalled below instead
            log.error("cannot write the stop file: %s", exc)

    def _end_launchers(self, plan: ClusterPlan | None) -> None:
        """Wait for the launchers, then SIGTERM, then SIGKILL their process groups."""
        deadline = time.monotonic() + self.grace + 15
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            for proc in self.launched:
                if sig is not None and proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
            if sig is None and self._survivors_stopped_after_a_loss(plan, deadline):
                # the launcher still waits for the lost node's agent, which will never
                # report: nothing is left to wait for
                deadline = time.monotonic() + 5
                continue
            for proc in self.launched:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if all(p.poll() is not None for p in self.launched):
                break
            deadline = time.monotonic() + 5

    def _survivors_stopped_after_a_loss(self, plan: ClusterPlan | None,
                                        deadline: float) -> bool:
        """With a node lost: whether every other node's agent reported stopping (polled up
        to `deadline`); False at once when no node was lost."""
        lost = set(nodes_lost(self.run))
        if not lost or plan is None:
            return False
        others = [n.name for n in plan.nodes if n.name not in lost]
        while time.monotonic() < deadline:
            if all(p.poll() is not None for p in self.launched):
                return False
            if all(read_json(self.run.node_state_file(n), {}).get("state") in NODE_ENDED
                   for n in others):
                return True
            time.sleep(0.2)
        return False
