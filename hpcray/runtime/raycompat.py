"""Ray's private APIs that hpcray relies on, in one place, each behind the public behaviour it
stands for. They are why pyproject.toml pins Ray to one version; tests/runtime/
test_raycompat.py fails on a Ray whose private names or signatures differ, before any run
does."""

from __future__ import annotations

import time
from typing import Any

# the release these calls were written against; the test compares the installed Ray with it
RAY_VERSION = "2.60.0"


def serve_controller() -> Any:
    """The running Serve controller actor (private: Serve has no public handle to it)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None  # raise_if_no_controller_running defaults to True
    return client._controller


def delete_app(name: str, wait: bool = True) -> None:
    """Delete a Serve application; `wait=False` returns without waiting for its replicas to
    stop (`_blocking`, private: after a lost node Serve would wait out the graceful timeout
    of replicas that will never answer)."""
    from ray import serve

    serve.delete(name, _blocking=wait)


def set_replica_count(app_name: str, deployment: str, replicas: int) -> None:
    """Change one deployment's target replica count without redeploying it: Serve's
    external-scaler call, what its REST API's scale endpoint does (a second `serve.run`
    would restart every replica)."""
    import ray
    from ray.serve._private.common import DeploymentID

    ray.get(serve_controller().update_deployment_replicas.remote(
        DeploymentID(name=deployment, app_name=app_name), replicas))


def task_events() -> list[Any]:
    """Every task event the GCS holds, of every job (`gcs_pb2.TaskEvents`): what `ray list
    tasks --detail` shows, read from the GCS itself through the connected worker's state
    accessor (what `ray.timeline()` reads). The public state API asks the dashboard, which a
    run starts only when its workflow asks for it."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    # the generated module makes its classes at import: mypy does not see them
    events = gcs_pb2.TaskEvents  # type: ignore[attr-defined]
    return [events.FromString(raw) for raw in accessor.get_task_events()]


def actor_table() -> list[Any]:
    """Every actor the GCS knows, dead ones included (`gcs_pb2.ActorTableData`): where each
    ran, its lifetime, the resources it held and which GPU ids (`resource_mapping`), which
    `ray.util.state.list_actors` would ask the dashboard for."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    # made at import, as above
    table = gcs_pb2.ActorTableData  # type: ignore[attr-defined]
    return [table.FromString(raw) for raw in accessor.get_actor_table(None, None)]


# -- the GCS seen without joining as a driver (elastic runs: docs/elastic.md) ------------------
# A worker job's `hpcray up` and the elastic controller read the node table, drain nodes and
# read the pending demand through a GCS client alone: what `ray drain-node` and Ray's
# autoscaler (v2) do, with no core worker started. Token auth is read from the environment
# (runtime/auth.py's variables), so the caller sets them first.

def gcs_client(address: str) -> Any:
    from ray._raylet import GcsClient  # type: ignore[attr-defined] # compiled, no stub

    return GcsClient(address=address)


def gcs_nodes(client: Any, timeout: float = 10) -> dict[str, dict[str, Any]]:
    """Every node the GCS knows, alive or dead, by hex NodeID: `alive`, `resources` (total),
    and for a dead one Ray's reason (`death`: e.g. drained, "AUTOSCALER_DRAIN_PREEMPTED")."""
    from ray.core.generated import common_pb2, gcs_pb2

    # the generated modules make their classes at import: mypy does not see them
    alive = gcs_pb2.GcsNodeInfo.GcsNodeState.Value("ALIVE")  # type: ignore[attr-defined]
    reasons = common_pb2.NodeDeathInfo.Reason  # type: ignore[attr-defined]
    out = {}
    for node_id, info in client.get_all_node_info(timeout=timeout).items():
        dead = info.state != alive
        out[node_id.hex()] = {
            "alive": not dead, "resources": dict(info.resources_total),
            "death": (f"{reasons.Name(info.death_info.reason)}: "
                      f"{info.death_info.reason_message}".rstrip(": ") if dead else "")}
    return out


def drain_node(client: Any, node_id: str, message: str, deadline_s: float | None) -> str | None:
    """Ask Ray to drain a node as for a preemption: its raylet takes no new task or actor
    (they go to other nodes), Serve starts replicas elsewhere before it stops those there,
    and once nothing runs on it the raylet exits by itself. `deadline_s`: when it will be
    stopped anyway (None: no deadline). Returns None, or why Ray refused."""
    from ray.core.generated import autoscaler_pb2

    reason = autoscaler_pb2.DrainNodeReason.Value(  # type: ignore[attr-defined]
        "DRAIN_NODE_REASON_PREEMPTION")
    deadline_ms = 0 if deadline_s is None else int((time.time() + deadline_s) * 1000)
    accepted, why = client.drain_node(node_id, reason, message, deadline_ms)
    return None if accepted else (why or "refused")


def cluster_demand(client: Any) -> tuple[list[tuple[dict[str, float], int]],
                                         dict[str, dict[str, Any]]]:
    """What Ray's autoscaler sees: the resource shapes waiting for a node (tasks, actors and
    placement groups no node can take now, with their counts), and each node's status and
    how long it has been idle (`idle_s`), by hex NodeID (`status`: RUNNING, IDLE, DRAINING,
    DEAD)."""
    from ray.autoscaler.v2.sdk import get_cluster_resource_state
    from ray.core.generated import autoscaler_pb2

    status = autoscaler_pb2.NodeStatus  # type: ignore[attr-defined]
    state = get_cluster_resource_state(client)
    pending: list[tuple[dict[str, float], int]] = []
    for request in state.pending_resource_requests:
        shape = dict(request.request.resources_bundle)
        pending.append((shape, int(request.count)))
    for gang in state.pending_gang_resource_requests:
        for bundle in gang.requests:
            pending.append((dict(bundle.resources_bundle), 1))
    nodes = {ns.node_id.hex(): {"status": status.Name(ns.status),
                                "idle_s": ns.idle_duration_ms / 1000,
                                "total": dict(ns.total_resources),
                                "available": dict(ns.available_resources)}
             for ns in state.node_states}
    return pending, nodes
