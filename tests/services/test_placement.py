"""Replicas larger than one GPU: an engine's tensor x pipeline workers get one placement bundle
per GPU, which may span nodes; checked before submission and before deploying, and (slow) on a
simulated 2-node x 2-GPU Ray cluster with Serve placing a 4-GPU replica."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcray import api
from hpcray.errors import ResourceError, SpecError
from hpcray.runtime.placement import bundles_unplaceable
from hpcray.services.registry import replica_bundles
from hpcray.spec import loads_workflow
from hpcray.spec.services import ServiceSpec
from tests.conftest import FIXTURES


def llm(tp: int, pp: int = 1, gpus: float | None = None, cpus: float = 2) -> ServiceSpec:
    return ServiceSpec(name="llm", deployment="vllm_llm",
                       args={"model_path": "/m", "tensor_parallel_size": tp,
                             "pipeline_parallel_size": pp},
                       resources={"cpus": cpus, "gpus": tp * pp if gpus is None else gpus})


def node(cpus: float, gpus: float, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus}}


def test_one_bundle_per_gpu_after_the_replicas_own():
    assert replica_bundles(llm(1)) is None  # one GPU: the actor holds it
    bundles, strategy = replica_bundles(llm(2, 2))
    assert bundles == [{"CPU": 2}] + [{"GPU": 1.0}] * 4 and strategy == "PACK"
    with pytest.raises(SpecError, match="runs 4 GPU workers .* give it resources.gpus: 4"):
        replica_bundles(llm(2, 2, gpus=1))
    # no GPUs: the CPU engine's ranks are processes of the replica's node, no bundles
    assert replica_bundles(llm(2, 2, gpus=0)) is None


def test_bundles_fit_across_nodes_or_are_refused_with_the_inventory():
    bundles = replica_bundles(llm(4))[0]
    assert bundles_unplaceable(bundles, [node(8, 2), node(8, 2)], "replica") is None
    why = bundles_unplaceable(bundles, [node(8, 2), node(8, 2, alive=False)], "replica")
    assert "needs 5 bundles (2 CPUs and 4 GPUs in all)" in why
    assert "nodes: [{'CPU': 8, 'GPU': 2}]" in why
    assert bundles_unplaceable(bundles, [node(1, 4)], "replica") is not None  # no CPU left


def test_before_submission_a_spread_replica_counts_against_the_allocation(tmp_path):
    def workflow(tp: int, nodes: int) -> str:
        return (f"name: tp\nallocation: {{nodes: {nodes}, account: A, gpus_per_node: 4}}\n"
                f"services:\n  - {{name: llm, deployment: vllm_llm, resources: "
                f"{{cpus: 2, gpus: {tp}}},\n     args: {{model_path: /m, "
                f"tensor_parallel_size: {tp}}}}}\n")

    # 8 GPUs on two 4-GPU Polaris nodes: one replica, spread over both (a run directory
    # on a shared filesystem: Polaris refuses a multi-node run under /tmp)
    shared = Path("/lus/eagle/projects/A/runs")
    text = api.script(loads_workflow(workflow(8, 2), "tp.yaml"), "polaris", run_root=shared)
    assert "#PBS" in text
    with pytest.raises(ResourceError, match="the services need 8 GPUs in all"):
        api.submit(loads_workflow(workflow(8, 1), "tp.yaml"), "polaris", run_root=shared)
    # a replica of a class that does not spread still has to fit one node
    one = ("name: one\nallocation: {nodes: 2, account: A, gpus_per_node: 4}\nservices:\n"
           "  - {name: m, deployment: transformers_llm, resources: {gpus: 8},\n"
           "     args: {model_path: /m}}\n")
    with pytest.raises(ResourceError, match="one replica needs 8 GPUs, but a node of the "
                                            "allocation has 4"):
        api.submit(loads_workflow(one, "one.yaml"), "polaris", run_root=shared)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_four_gpu_replica_spans_two_simulated_two_gpu_nodes(monkeypatch):
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from hpcray.services.handle import ServiceHandle
    from hpcray.services.manager import ServiceManager

    monkeypatch.chdir(FIXTURES / "services")  # userclasses: importable from the workflow dir
    spec = ServiceSpec(name="tp", deployment="userclasses:ParallelProbe", transport="serve",
                       args={"model_path": "/m", "tensor_parallel_size": 2,
                             "pipeline_parallel_size": 2},
                       resources={"cpus": 0.5, "gpus": 4}, readiness_timeout=240)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    manager = None
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2, num_gpus=2)
        ray.init(address=cluster.address, runtime_env={"env_vars": {
            "PYTHONPATH": str(FIXTURES / "services")}})
        cluster.wait_for_nodes()
        manager = ServiceManager([spec])
        manager.start()
        where = ServiceHandle("tp", transport="serve").call("placement").result
        assert where["strategy"] == "PACK"
        assert where["bundles"][0] == {"CPU": 0.5}  # the replica's own actor
        assert [b.get("GPU") for b in where["bundles"][1:]] == [1.0] * 4
        # four GPUs on two 2-GPU nodes: both nodes hold two of the engine's workers
        assert sorted(where["gpu_bundles_per_node"].values()) == [2, 2]
        gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU")}
        assert set(where["gpu_bundles_per_node"]) == gpu_nodes
    finally:
        if manager is not None:
            manager.stop()
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
