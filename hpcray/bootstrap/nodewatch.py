"""While the run is up: notice every node whose agent stops or that Ray marks dead. A lost
worker is recorded (Ray retries its tasks elsewhere; the driver sees failures it cannot
recover); losing the head loses the cluster, so the run stops as failed."""

from __future__ import annotations

import logging
import threading
import time

from hpcray.bootstrap.plan import ClusterPlan, NodePlan
from hpcray.bootstrap.resolved import tail
from hpcray.bootstrap.signals import Stop
from hpcray.rundir import RunDir, read_json
from hpcray.state import NODE_ENDED

log = logging.getLogger("hpcray.up")


def dead_in_ray(ray_node_ids: dict[str, str]) -> dict[str, str]:
    """Nodes of this run that Ray's control store has marked dead, with Ray's reason."""
    if not ray_node_ids:
        return {}
    import ray

    try:
        table = {n["NodeID"]: n for n in ray.nodes()}
    except Exception as exc:  # noqa: BLE001 - the head itself may be going; its agent says
        log.debug("cannot read Ray's node table: %s", exc)
        return {}
    dead = {}
    for name, node_id in ray_node_ids.items():
        entry = table.get(node_id)
        if entry is not None and not entry.get("Alive", True):
            why = entry.get("DeathReasonMessage") or "no reason given"
            dead[name] = f"Ray marked the node dead ({why})"
    return dead


class NodeWatch:
    """Two daemon threads until the run stops: one reads the agents' state files, one Ray's
    node table (apart, since with the head gone a call to Ray's control store blocks for a
    long time, and the head's own agent must still be seen stopping)."""

    def __init__(self, run: RunDir, plan: ClusterPlan, stop: Stop,
                 ray_node_ids: dict[str, str], interval: float = 1.0) -> None:
        self.run = run
        self.plan = plan
        self.stop = stop
        self.ray_node_ids = ray_node_ids
        self.interval = interval
        self.lost: set[str] = set()
        self.dead_in_ray: dict[str, str] = {}

    def start(self) -> threading.Thread:
        threading.Thread(target=self._poll_ray, name="hpcray-ray-nodes", daemon=True).start()
        thread = threading.Thread(target=self._watch, name="hpcray-node-watch", daemon=True)
        thread.start()
        return thread

    def _running(self) -> bool:
        return not self.stop.event.wait(self.interval) and not self.run.stop_file.exists()

    def _poll_ray(self) -> None:
        while self._running():
            self.dead_in_ray.update(dead_in_ray(self.ray_node_ids))

    def _watch(self) -> None:
        while self._running():
            for node in self.plan.nodes:
                if node.name in self.lost:
                    continue
                state = read_json(self.run.node_state_file(node.name), {})
                if state.get("state") in NODE_ENDED:
                    self._mark_lost(node, state.get("error") or state.get("reason")
                                    or "agent stopped")
                elif node.name in self.dead_in_ray:  # killed outright: no agent to say so
                    self._mark_lost(node, self.dead_in_ray[node.name])

    def _mark_lost(self, node: NodePlan, reason: str) -> None:
        self.lost.add(node.name)
        log.error("node %s left the cluster: %s\n%s", node.name, reason,
                  tail(self.run.node_log(node.name), 5))
        self.run.update_node(node.name, lost=time.time(), lost_reason=reason)
        self.run.add_lost(node.name)  # merged under the run's lock: the elastic watch adds too
        if node.index == 0:
            self.stop.head_lost(node.name)
