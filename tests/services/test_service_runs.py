"""Services in real runs: real Ray, real Serve, started by `hpcray up` before the driver."""

from __future__ import annotations

import json

import pytest

import hpcray
from hpcray.rundir import read_json
from hpcray.services.ledger import ClientLedger, read_executed, reconcile
from tests.conftest import FIXTURES, ONE_NODE, ray_processes, run_beside, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DRIVER = (f"driver:\n  function: drive_services:main\n  cwd: {FIXTURES / 'services'}\n"
          "  args:\n    services: {{{services}}}\n")


# one node whose replicas keep request ledgers (hpcray/services/ledger.py)
ONE_NODE_LEDGERS = ONE_NODE.replace("walltime: 10m}", "walltime: 10m, env: {HPCRAY_LEDGER: '1'}}")


def run_workflow(tmp_path, run_root, services: str, driver_services: str | None = None, *,
                 driver: str = "", name: str = "svc", timeout: float = 240,
                 header: str = ONE_NODE):
    """Run a workflow whose file sits next to the test's user code; wait for its end and
    check that no process of it is left."""
    text = f"name: {name}\n{header}services:\n{services}{driver}"
    if driver_services is not None:
        text += DRIVER.format(services=driver_services)
    return run_beside("services", tmp_path.name, text, run_root, timeout)


def test_noop_replicas_start_in_parallel_and_are_all_used_and_unhealthy_ones_replaced(
        tmp_path, run_root):
    services = "".join(f"  - {{name: noop{n}, deployment: noop, replicas: {n}, "
                       "resources: {cpus: 0.05}}\n" for n in (1, 2, 4))
    services += ("  - {name: flaky, deployment: 'userclasses:Flaky', resources: {cpus: 0.05},\n"
                 "     health_check_period: 1, health_check_timeout: 2}\n")
    sub, st = run_workflow(tmp_path, run_root, services, driver=(
        "driver:\n  function: drive_services:main_and_flaky\n"
        "  args:\n    services: {noop1: 1, noop2: 2, noop4: 4}\n"), header=ONE_NODE_LEDGERS)
    assert ONE_NODE_LEDGERS != ONE_NODE
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    result = json.loads((sub.run_dir / "driver-result.json").read_text())
    flaky = result["flaky"]
    assert flaky["new"] and flaky["new"] != flaky["first"]  # Serve replaced the replica
    # the driver's ledger against both replicas': nothing lost, timed out or doubled; a
    # failure only as an explicit replica loss; every answer right
    client = ClientLedger("flaky")
    client.merge(flaky["ledger"])
    ledger = reconcile([client], read_executed(sub.run_dir, "flaky"),
                       lost_replicas=[flaky["first"]])
    assert ledger.problems() == [] and ledger.lost == 0, ledger.summary()
    assert ledger.sent == flaky["calls"] and ledger.answered >= 1, ledger.summary()
    assert set(ledger.failed) <= {"replica lost"}, ledger.summary()
    assert flaky["wrong"] == 0
    print(f"flaky replica replaced, ledger: {ledger.summary()}")  # docs/reliability.md
    metrics = json.loads((sub.run_dir / "metrics" / "services.json").read_text())
    for n in (1, 2, 4):
        name = f"noop{n}"
        assert len(result[name]["replicas"]) == n  # every replica served requests
        bt = metrics[name]["bt"]
        assert sorted(b["replica"] for b in bt) == sorted(result[name]["replicas"])
        for b in bt:
            assert b["launch"] > 0 and b["init"] >= 0 and b["publish"] >= 0
            assert b["node"] == st.nodes[0].name
    # one level, one deploy call: all three services were asked for at the same moment
    assert len({metrics[f"noop{n}"]["deploy_at"] for n in (1, 2, 4)}) == 1
    info = read_json(sub.run_dir / "run.json")
    assert info["times"]["services_ready"] <= info["times"]["driver_start"]
    assert {s["state"] for s in info["services"].values()} == {"stopped"}


def test_constructor_error_fails_fast_and_the_driver_never_starts(tmp_path, run_root):
    services = ("  - {name: good, deployment: noop, resources: {cpus: 0.05}}\n"
                "  - {name: model, deployment: 'userclasses:Broken', args: {size: 7},\n"
                "     resources: {cpus: 0.05}, readiness_timeout: 120}\n")
    sub, st = run_workflow(tmp_path, run_root, services, "good: 1")
    assert st.state == "failed"
    assert "service 'model' failed to start" in st.error
    assert "checkpoint of size 7 is corrupt" in st.error  # the constructor's own traceback
    assert "driver_start" not in st.times
    assert "driver_launched" in st.times  # started early, never let go, stopped (no process)
    assert not (sub.run_dir / "driver-result.json").exists()  # its function never ran


def test_resources_no_node_has_and_bad_arguments_fail_before_deploying(tmp_path, run_root):
    from hpcray.errors import ResourceError

    # CPUs are known before submission: refused there, nothing submitted
    services = "  - {name: big, deployment: noop, resources: {cpus: 64}}\n"
    with pytest.raises(ResourceError, match="service 'big': one replica needs 64 CPUs, but a "
                                            "node of the allocation has"):
        run_workflow(tmp_path, run_root, services, "big: 1")
    # a custom resource only Ray knows, and arguments the class does not take: the run
    # fails at start naming both, before anything is deployed or the driver starts
    services = ("  - {name: big, deployment: noop, resources: {resources: {nvme: 1}}}\n"
                "  - {name: c, deployment: 'userclasses:Counter', args: {begin: 1}}\n")
    sub, st = run_workflow(tmp_path, run_root, services, "big: 1, c: 1")
    assert st.state == "failed"
    assert "service 'big' cannot be placed: one replica needs {" in st.error
    assert "'nvme': 1" in st.error
    assert "its parameters: start" in st.error
    assert "driver_start" not in st.times


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    pytest.importorskip("transformers", reason="transformers is installed by the test extra")
    from hpcray.models.tiny import build_tiny_causal_lm, build_tiny_encoder

    root = tmp_path_factory.mktemp("models")
    return build_tiny_causal_lm(root / "tiny-gpt2"), build_tiny_encoder(root / "tiny-bert")


def test_tiny_llm_and_encoder_and_an_executable_over_http(tmp_path, run_root, tiny_models,
                                                         monkeypatch):
    """One run: a tiny GPT-2 and BERT through the handle and the official `openai` client
    (the driver); an executable stage calling a NOOP service over plain HTTP with bad
    requests; a service whose 2 s lifetime ends during the run."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gpt2, bert = tiny_models
    services = (f"  - {{name: llm, deployment: transformers_llm, resources: {{cpus: 0.5}},\n"
                f"     args: {{model_path: '{gpt2}', max_new_tokens: 8}}}}\n"
                f"  - {{name: emb, deployment: embedding, resources: {{cpus: 0.5}},\n"
                f"     args: {{model_path: '{bert}'}}}}\n"
                "  - {name: noop, deployment: noop, replicas: 1, resources: {cpus: 0.05}}\n"
                "  - {name: short, deployment: noop, resources: {cpus: 0.05},\n"
                "     lifetime: {seconds: 2}}\n")
    # the stage outlives `short`'s 2 s lifetime
    sub, st = run_workflow(tmp_path, run_root, services, name="llm", timeout=280, driver=(
        "stages:\n  - {name: http, command: [sh, -c, 'python3 http_client.py && sleep 4'],\n"
        "     resources: {cpus: 0.05}}\n"
        "driver: {function: 'llm_checks:main'}\n"))
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    out = json.loads((sub.run_dir / "driver-result.json").read_text())
    assert out["handle_generate"]["tokens"] == 5 and out["handle_generate"]["replica"]
    assert out["handle_chat"] == 4
    assert 1 <= len(out["handle_stream"]) <= 4 and all(isinstance(p, str)
                                                       for p in out["handle_stream"])
    assert out["handle_embed_dim"] == 32
    assert out["models"] == ["emb", "llm", "noop", "short"]  # every service of the run
    assert out["chat"]["role"] == "assistant" and out["chat"]["usage"] == 5
    assert out["chat_stream_pieces"] >= 1
    assert out["completion_tokens"] == 3
    assert out["embeddings"] == [32, 32]
    status, body = out["missing_messages"]
    assert status == 422 and "messages" in json.dumps(body)
    assert out["wrong_type"][0] == 422 and "content" in json.dumps(out["wrong_type"][1])
    status, body = out["too_long"]
    assert status == 400 and "context of 128 tokens" in body["error"]["message"]
    assert out["unknown_model"][0] == 404 and out["unknown_model"][1]["error"]["param"] == "model"
    bt = json.loads((sub.run_dir / "metrics" / "services.json").read_text())["llm"]["bt"]
    assert bt[0]["init"] > 0  # loading the checkpoint is the init part of BT

    assert read_json(sub.run_dir / "run.json")["services"]["short"]["state"] == "expired"
    assert "service short: expired" in st.summary()
    results = json.loads((sub.run_dir / "http-results.json").read_text())
    head = read_json(sub.run_dir / "head.json")
    # bound to the head's address (loopback here), on the job's own port block
    assert results["url"] == f"http://{head['ip']}:{head['serve_http_port']}/noop"
    assert results["endpoints"]["services"]["noop"]["http"] == results["url"]
    assert results["endpoints"]["openai"] == results["url"].replace("/noop", "/v1")
    status, body = results["ok"]
    assert status == 200 and body["result"] == {"x": 1} and body["id"] == "r1" and body["replica"]
    assert results["missing"] == [400, {"error": "missing field 'method'", "field": "method"}]
    assert results["wrong_type"][0] == 400 and results["wrong_type"][1]["field"] == "method"
    assert results["unknown"][0] == 400 and "methods: echo" in results["unknown"][1]["error"]
    assert results["not_json"][0] == 400
    assert (sub.run_dir / "endpoints.json").exists()
    # not reachable on the machine's other addresses: connect() there fails
    assert results["other_addresses"] and all(results["other_addresses"].values())


def test_cancel_with_services_leaves_no_serve_process(tmp_path, run_root):
    services = "  - {name: noop, deployment: noop, replicas: 2, resources: {cpus: 0.05}}\n"
    path = FIXTURES / "services" / f"{tmp_path.name}.yaml"
    path.write_text("name: cancelme\nallocation: {nodes: 1, walltime: 10m}\n"
                    "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
                    f"services:\n{services}")  # no driver: up until cancelled
    try:
        sub = hpcray.submit(path, run_root=run_root)
        assert wait_until(lambda: hpcray.status(sub.run_dir).state == "running"
                          and "services_ready" in hpcray.status(sub.run_dir).times, 180), \
            hpcray.logs(sub.run_dir)
        cluster = read_json(sub.run_dir / "run.json")["cluster_id"]
        titles = [" ".join(p.cmdline()[:1]) for p in ray_processes(cluster)]
        assert sum("ServeReplica:hpcray-noop" in t for t in titles) == 2  # replicas are up
        st = hpcray.cancel(sub.run_dir, wait_s=120)
    finally:
        path.unlink()
        if not hpcray.status(sub.run_dir).finished:
            hpcray.cancel(sub.run_dir, wait_s=60)
    assert st.state == "cancelled"
    assert wait_until(lambda: not ray_processes(cluster), 30)
    assert {s.state for s in st.services} == {"stopped"}


def test_losing_the_head_with_services_fails_fast_and_cleans_up(tmp_path, run_root):
    import os
    import signal

    services = "  - {name: noop, deployment: noop, resources: {cpus: 0.05}}\n"
    path = FIXTURES / "services" / f"{tmp_path.name}.yaml"
    path.write_text("name: headloss\nallocation: {nodes: 1, walltime: 10m}\n"
                    "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
                    f"services:\n{services}")
    try:
        sub = hpcray.submit(path, run_root=run_root)
        assert wait_until(lambda: "services_ready" in hpcray.status(sub.run_dir).times, 180), \
            hpcray.logs(sub.run_dir)
        head = hpcray.status(sub.run_dir).nodes[0].name
        os.kill(read_json(sub.run_dir / "nodes" / f"{head}.json")["pid"], signal.SIGTERM)
        st = hpcray.wait(sub.run_dir, timeout=90)  # no hang on a Serve that is gone
    finally:
        path.unlink()
    assert st.state == "failed" and "head node" in st.error
    cluster = read_json(sub.run_dir / "run.json")["cluster_id"]
    assert wait_until(lambda: not ray_processes(cluster), 30)


def test_eight_services_a_driver_started_early_and_a_parallel_teardown(tmp_path, run_root):
    """The driver function's process starts while the services come up, and runs only once
    they are all ready; the driver's own services are deleted together and leave nothing in
    Serve; the run's eight go with Serve at the end, and no process is left."""
    names = [f"s{i}" for i in range(8)]
    services = "".join(f"  - {{name: {n}, deployment: noop, resources: {{cpus: 0.05}}}}\n"
                       for n in names)
    driver = (f"driver:\n  function: drive_services:started_early\n"
              f"  args: {{services: [{', '.join(names)}]}}\n")
    sub, st = run_workflow(tmp_path, run_root, services, driver=driver, timeout=280)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    result = json.loads((sub.run_dir / "driver-result.json").read_text())
    times = st.times
    # launched before the services were ready, let go after, and its first line after that
    assert times["driver_launched"] < times["services_ready"] <= times["driver_start"]
    assert times["driver_start"] <= times["driver_entry"] <= result["entry"] + 1e-3
    assert result["seen"] == {n: {"state": "ready", "answer": n} for n in names}
    assert read_json(sub.run_dir / "run.json")["driver_pid"] == result["pid"]
    assert result["own_answered"] == ["own0", "own1"]
    assert result["own_apps_left"] == [] and result["own_actors_left"] == []
    info = read_json(sub.run_dir / "run.json")
    assert {s["state"] for s in info["services"].values()} == {"stopped"}
    assert set(info["phases"]) == {"cluster up", "Serve up", "services ready",
                                   "driver started", "teardown"}
    assert times["teardown_start"] <= times["services_stopped"] <= times["teardown_end"]
    assert "phases (s from the job's start): cluster up" in st.summary()
