"""Ray's private APIs that hpcray relies on, in one place, each behind the public behaviour it
stands for. They are why pyproject.toml pins Ray to one version; tests/runtime/
test_raycompat.py fails on a Ray whose private names or signatures differ, before any run
does."""

from __future__ import annotations

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
