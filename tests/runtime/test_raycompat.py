"""The private Ray names hpcray/runtime/raycompat.py uses still exist with the signatures it
calls them with: a Ray upgrade that changes them fails here, not in a run."""

from __future__ import annotations

import inspect

import ray

from hpcray.runtime import raycompat


def test_the_installed_ray_is_the_one_raycompat_was_written_for():
    assert ray.__version__ == raycompat.RAY_VERSION, (
        f"Ray {ray.__version__} installed, raycompat.py written for {raycompat.RAY_VERSION}: "
        "check each private call there, then update RAY_VERSION and the pin in pyproject.toml")


def test_serve_private_names_and_signatures():
    from ray.serve._private.common import DeploymentID
    from ray.serve._private.controller import ServeController
    from ray.serve.context import _get_global_client

    assert list(inspect.signature(DeploymentID).parameters)[:2] == ["name", "app_name"]
    assert "raise_if_no_controller_running" in inspect.signature(_get_global_client).parameters
    actor_class = getattr(ServeController, "__ray_actor_class__", ServeController)
    params = list(inspect.signature(actor_class.update_deployment_replicas).parameters)
    assert params == ["self", "deployment_id", "target_num_replicas"]
    from ray import serve

    assert "_blocking" in inspect.signature(serve.delete).parameters
    client_class = inspect.signature(_get_global_client).return_annotation
    assert "ServeControllerClient" in str(client_class)
    from ray.serve._private.client import ServeControllerClient

    assert "_controller" in inspect.getsource(ServeControllerClient.__init__)


def test_gcs_state_accessor_names_for_the_run_report():
    """raycompat.task_events and actor_table read the GCS through these."""
    from ray._private.state import GlobalState
    from ray.core.generated import gcs_pb2

    assert hasattr(GlobalState, "_connect_and_get_accessor")
    from ray._raylet import GlobalStateAccessor

    assert hasattr(GlobalStateAccessor, "get_task_events")
    assert hasattr(GlobalStateAccessor, "get_actor_table")
    assert {"state_updates", "task_info", "attempt_number"} <= {
        f.name for f in gcs_pb2.TaskEvents.DESCRIPTOR.fields}
    assert {"resource_mapping", "required_resources", "start_time", "end_time", "node_id"} <= {
        f.name for f in gcs_pb2.ActorTableData.DESCRIPTOR.fields}
