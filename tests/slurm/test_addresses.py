"""Emulated Slurm nodes on their own addresses (tests/slurm/testcluster.py: each node in a
network namespace of its own, its address on hsn0, a bridge between them and this host):
what a run binds and publishes where, and a partition of node2 under load, then its heal.
Skipped, saying why, where the nodes share 127.0.0.1 (no network namespaces)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

import hpcray
from hpcray.rundir import read_json
from hpcray.runtime.ports import BLOCK_SIZE, RAY_PORT_VARIABLES, SERVICE_PORTS, WORKER_OFFSET
from hpcray.runtime.teardown import marked_processes
from hpcray.services.ledger import ANSWERED, TIMED_OUT, ClientLedger, read_executed, reconcile
from hpcray.state import NODE_ENDED
from tests.conftest import FIXTURES, ray_processes, wait_until
from tests.slurm.test_slurm import assert_nothing_left, cancel_and_kill, submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(300)]

PROGRAM = FIXTURES / "services" / "http_program.py"
HEADER = ("allocation: {{nodes: 2, walltime: 10m, gpus_per_node: 0{env}}}\n"
          "ray: {{object_store_memory: 100000000, teardown_grace: 5}}\n")
# 1.2 CPUs of a node's 2: one echo replica per node
ECHO = "  - {name: echo, deployment: noop, replicas: 2, resources: {cpus: 1.2}}\n"


@pytest.fixture(scope="module")
def cluster(slurm_cluster):
    if not slurm_cluster.separate_addresses:
        pytest.skip(reason=f"the test Slurm's nodes share an address: {slurm_cluster.why_shared}")
    return slurm_cluster


# The module's one run: an echo service (a replica on each node), a program service pinned to
# node2 and the HTTP API. Ray declares a node dead after missed health checks (1 s apart, 1 s
# each, 3 missed), and the replicas keep request ledgers. The bind check looks at it first;
# the partition test, which cuts node2 off, comes last and ends it. One bring-up, not two.
ENV = (",\n  env: {RAY_health_check_period_ms: '1000', RAY_health_check_timeout_ms: '1000', "
       "RAY_health_check_failure_threshold: '3', HPCRAY_LEDGER: '1'}")
PROG = (f"  - {{name: prog, command: ['{sys.executable}', '{PROGRAM}', --port, '{{port}}', "
        "--host, '{host}'],\n     readiness: {output: 'listening on'}, "
        "resources: {cpus: 0.05, node: node2}}\n")


@pytest.fixture(scope="module")
def shared_run(cluster, tmp_path_factory):
    from tests.conftest import FIXTURES

    root = tmp_path_factory.mktemp("addresses")
    started: list[Path] = []
    with pytest.MonkeyPatch.context() as env:  # the test sites, as _isolated_sites gives a test
        env.setenv("HPCRAY_SITES_PATH", str(FIXTURES / "sites"))
        env.setenv("XDG_CONFIG_HOME", str(FIXTURES / "no-user-config"))
        try:
            yield _up(root, "addresses", HEADER.format(env=ENV) + "services:\n" + ECHO + PROG,
                      root / "runs", started)
        finally:
            cancel_and_kill(started)


def _up(tmp_path: Path, name: str, text: str, run_root: Path, runs: list[Path]):
    """Submit a workflow with services and no driver; wait until its services are ready."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n{text}")
    sub = submit(path, run_root, runs)
    assert wait_until(lambda: "services_ready" in hpcray.status(sub.run_dir).times
                      or hpcray.status(sub.run_dir).finished, 240), hpcray.logs(sub.run_dir)
    assert hpcray.status(sub.run_dir).state == "running", hpcray.logs(sub.run_dir)
    return sub


def _down(run_dir: Path) -> None:
    st = hpcray.cancel(run_dir, wait_s=120)
    assert st.finished, st.state
    assert_nothing_left(run_dir)


# -- who listens where ---------------------------------------------------------------------

@dataclass(frozen=True)
class Listener:
    host: str   # as bound: an address, or "*" for every interface
    port: int
    pid: int

    @property
    def wildcard(self) -> bool:
        return self.host in ("*", "0.0.0.0", "::")

    @property
    def loopback(self) -> bool:
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(self.host).is_loopback
        return False


def listeners(cluster, node: str) -> list[Listener]:
    """Every listening TCP socket (v4 and v6) in the node's namespace, with its processes."""
    out = subprocess.run([*cluster.on_node(node), "ss", "-ltnpH"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    found = []
    for line in out.splitlines():
        host, _, port = line.split()[3].rpartition(":")
        host = host.strip("[]").split("%")[0].removeprefix("::ffff:")
        found += [Listener(host, int(port), int(pid)) for pid in re.findall(r"pid=(\d+)", line)]
    return found


def run_processes(cluster_id: str, run_dir: Path) -> dict[int, str]:
    """pid -> command line of every process of the run: those carrying its marker
    (HPCRAY_RAY_OF), those naming its run directory (`hpcray up`, the node agents), and all
    their descendants (Ray's agents do not inherit the marker)."""
    roots = {p.pid for p in marked_processes(cluster_id)}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(run_dir) in " ".join(proc.info["cmdline"] or []):
            roots.add(proc.pid)
    out = {}
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    out[proc.pid] = " ".join(proc.cmdline())
    # Slurm's own: the job script's srun (its I/O ports: SrunPortRange, 0.0.0.0) and the
    # step daemons name the run directory too, but they are the batch system's, not the run's
    return {pid: cmd for pid, cmd in out.items()
            if os.path.basename(cmd.split()[0] if cmd else "") not in SLURM_OWN}


SLURM_OWN = ("srun", "slurmstepd", "slurmd")
# Ray's own servers that listen on every interface or on loopback besides the node's address,
# each on its own port; nothing of hpcray's may. (the process, its port: a `ray start` port flag
# of the node's block or a Ray port variable moved into it, and why it is let be)
RAY_EXEMPT = [
    ("gcs_server", "--port", "the GCS's gRPC server, on every interface (token-guarded)"),
    ("raylet", "--node-manager-port", "the raylet's gRPC server, every interface (token-guarded)"),
    ("raylet", "--object-manager-port", "the object manager's gRPC server (token-guarded)"),
    ("ray::DashboardAgent", "--dashboard-agent-grpc-port",
     "the dashboard agent's gRPC server, every interface (token-guarded)"),
    ("ray::DashboardAgent", "--dashboard-agent-listen-port",
     "the dashboard agent's HTTP server: a 127.0.0.1 listener beside the node address"),
    ("ray::DashboardAgent", "--metrics-export-port",
     "the node's Prometheus exporter, 0.0.0.0 hard-coded (read-only metrics, no token)"),
    ("ray.util.client.server", "--ray-client-server-port",
     "the Ray Client server: a 127.0.0.1 listener beside the node address (token-guarded)"),
    # Ray 2.60's AUTOSCALER_METRIC_PORT and DASHBOARD_METRIC_PORT, moved into the job's block
    ("ray/autoscaler/_private/monitor.py", "AUTOSCALER_METRIC_PORT",
     "the autoscaler's Prometheus exporter, 0.0.0.0 hard-coded (read-only metrics, no token)"),
    ("ray/dashboard/dashboard.py", "DASHBOARD_METRIC_PORT",
     "the dashboard head's Prometheus exporter, 0.0.0.0 hard-coded (read-only metrics, "
     "no token)"),
]
WORKER_GRPC = "a Ray worker's core-worker gRPC server, on the node's worker ports (token-guarded)"
SERVE_GRPC = ("Ray Serve's inter-deployment gRPC server of a replica, [::]:0 (one per replica; "
              "made with Ray's auth interceptor)")


def _is(command: str, key: str) -> bool:
    words = command.split()[:4]
    return any(w == key or os.path.basename(w) == key or w.endswith("/" + key) for w in words)


def exemption(listener: Listener, command: str, base: int, serve_grpc_seen: set[int]) -> str | None:
    """Why a wildcard or loopback listener of a run's process is Ray's own, or None."""
    for key, port, why in RAY_EXEMPT:
        offset = SERVICE_PORTS.get(port, RAY_PORT_VARIABLES.get(port))
        if _is(command, key) and listener.port == base + offset:
            return why
    if listener.wildcard and base + WORKER_OFFSET <= listener.port < base + BLOCK_SIZE:
        return WORKER_GRPC
    if listener.wildcard and command.startswith("ray::ServeReplica") \
            and listener.pid not in serve_grpc_seen:
        serve_grpc_seen.add(listener.pid)
        return SERVE_GRPC
    return None


def check_listeners(cluster, run_dir: Path, published: dict[str, set[int]]) -> dict[str, str]:
    """No process of the run listens on a wildcard or loopback address but Ray's own servers
    (RAY_EXEMPT, WORKER_GRPC, SERVE_GRPC); the rest, and hpcray's published ports, listen on
    the node's own address. Returns what was let be, for the test's output."""
    cluster_id = read_json(run_dir / "run.json")["cluster_id"]
    procs = run_processes(cluster_id, run_dir)
    bad, allowed = [], {}
    for node, address in cluster.addresses.items():
        base = read_json(run_dir / "nodes" / f"{node}.json")["port_base"]
        found = listeners(cluster, node)
        ours = [lst for lst in found if lst.pid in procs]
        assert ours, f"no listener of the run found on {node}: {found}"
        for port in published[node]:  # hpcray's sockets: exactly on the node's address
            on = {lst.host for lst in found if lst.port == port}
            assert on == {address}, f"{node}: hpcray's port {port} listens on {on}"
        serve_grpc_seen: set[int] = set()
        for lst in ours:
            if lst.host == address:
                continue
            why = None
            if (lst.wildcard or lst.loopback) and lst.port not in published[node]:
                why = exemption(lst, procs[lst.pid], base, serve_grpc_seen)
            if why is None:
                bad.append(f"{node} {lst.host}:{lst.port} {procs[lst.pid][:120]}")
            else:
                allowed[f"{node} {lst.host}:{lst.port} {procs[lst.pid].split()[0]}"] = why
    assert not bad, "listening off the node's own address:\n" + "\n".join(bad)
    return allowed


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_each_node_binds_and_publishes_its_own_address(cluster, shared_run):
    """The head, the agents, the replicas and the programs name and bind their own node's
    hsn0 address; this host reaches node2's replica over the bridge."""
    import httpx

    from hpcray.services.direct.client import DirectClient

    address = cluster.addresses
    sub = shared_run
    run = sub.run_dir
    head = read_json(run / "head.json")
    assert (head["node"], head["ip"]) == ("node1", address["node1"]), head
    assert head["address"] == f"{address['node1']}:{head['gcs_port']}"
    for node in cluster.nodes:
        assert read_json(run / "nodes" / f"{node}.json")["ip"] == address[node], node
    ep = read_json(run / "endpoints.json")
    echo = {r["node"]: r for r in ep["services"]["echo"]["direct"]["replicas"]}
    assert sorted(echo) == ["node1", "node2"], ep
    for node, replica in echo.items():
        assert replica["address"].startswith(f"tcp://{address[node]}:"), replica
    (prog_direct,) = ep["services"]["prog"]["direct"]["replicas"]
    (program,) = ep["services"]["prog"]["program"]["replicas"]
    assert prog_direct["node"] == program["node"] == "node2"
    assert prog_direct["address"].startswith(f"tcp://{address['node2']}:")
    assert program["url"].startswith(f"http://{address['node2']}:"), program
    http_base = f"http://{address['node1']}:{head['serve_http_port']}"
    assert ep["services"]["echo"]["http"] == f"{http_base}/echo"
    assert ep["openai"] == f"{http_base}/v1"

    # from this host (its own namespace) over the bridge: node2's replica, the proxy on
    # node1, the program on node2
    token = (run / "secrets" / "ray-token").read_text().strip().encode()
    client = DirectClient("echo", addresses={echo["node2"]["replica"]:
                                             echo["node2"]["address"]}, token=token)
    try:
        reply = client.call("echo", "over the bridge", timeout=20)
    finally:
        client.close()
    assert (reply.replica, reply.payload) == (echo["node2"]["replica"], "over the bridge")
    answer = httpx.post(f"{http_base}/echo", json={"method": "echo", "payload": 7},
                        timeout=20)
    assert answer.status_code == 200 and answer.json()["result"] == 7, answer.text
    assert httpx.get(f"{program['url']}/health", timeout=20).status_code == 200

    published = {"node1": {_port(echo["node1"]["address"]), head["serve_http_port"]},
                 "node2": {_port(echo["node2"]["address"]), _port(prog_direct["address"]),
                           _port(program["url"])}}
    allowed = check_listeners(cluster, run, published)
    for where, why in sorted(allowed.items()):
        print(f"let be: {where}: {why}")


# -- partition and heal --------------------------------------------------------------------

CALL_TIMEOUT = 30  # seconds; a call that gets no outcome within it is lost
CLIENTS = 2
# The test's load: a Ray driver of the run in node1's namespace (where a program of the
# allocation would be), calling the echo service through hpcray's handle, which follows the
# replica directory. Every request is written down when sent and with its outcome.
LOAD = '''
import json, os, sys, threading, time
run_dir, out_path, stop_path, timeout, clients = sys.argv[1:6]
import hpcray
from hpcray.services.ledger import cause_of
hpcray.connect(run_dir)
handle = hpcray.service("echo")
out, lock = open(out_path, "a", buffering=1), threading.Lock()

def note(**record):
    record["t"] = time.time()
    with lock:
        out.write(json.dumps(record) + "\\n")

def watch():
    seen = None
    while not os.path.exists(stop_path):
        now = sorted(handle.direct.replicas)
        if now != seen:
            note(kind="table", replicas=now)
            seen = now
        time.sleep(0.05)

def client(c):
    n = 0
    while not os.path.exists(stop_path):
        rid = f"c{c}-{n}"
        n += 1
        note(kind="sent", id=rid)
        try:
            r = handle.call("echo", rid, request_id=rid, timeout=float(timeout))
            note(kind="answered", id=rid, replica=r.replica, right=r.result == rid)
        except Exception as exc:  # its cause as the request ledger names it
            note(kind=cause_of(exc), id=rid, error=f"{type(exc).__name__}: {exc}")
        time.sleep(0.02)

threads = [threading.Thread(target=watch)]
threads += [threading.Thread(target=client, args=(c,)) for c in range(int(clients))]
for t in threads:
    t.start()
for t in threads:
    t.join()
note(kind="done")
os._exit(0)
'''


class Ledger:
    """The load's own record (sent, outcome, the handle's table), read while it runs to gate
    the test's steps; reconciled with the replicas' ledgers at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def answers(self, replica: str, after: float = 0.0) -> int:
        return sum(1 for r in self.records() if r["kind"] == "answered"
                   and r["replica"] == replica and r["t"] > after)

    def table_without(self, replica: str, after: float) -> float | None:
        for r in self.records():
            if r["kind"] == "table" and r["t"] > after and replica not in r["replicas"]:
                return r["t"]
        return None


@pytest.mark.faults
def test_node2_partitioned_under_load_then_healed(cluster, shared_run, tmp_path):
    """node2's link to the bridge goes down while a client calls a 2-replica service (one
    replica per node) without pause, then comes back. Every request gets an outcome; none
    waits out its timeout; once Ray marks node2 dead the handle drops its replica and node1's
    answers; the run goes on (or fails naming node2), and every wait is bounded."""
    run = shared_run.run_dir  # health checks 1 s apart, 3 missed; replicas keep ledgers
    ledger, stop = Ledger(tmp_path / "ledger.jsonl"), tmp_path / "stop-load"
    (tmp_path / "load.py").write_text(LOAD)
    load = None
    events: dict[str, float] = {}
    try:
        replicas = {r["node"]: r["replica"] for r in
                    read_json(run / "endpoints.json")["services"]["echo"]["direct"]["replicas"]}
        assert sorted(replicas) == ["node1", "node2"], replicas
        with open(tmp_path / "load.log", "w") as log:
            load = subprocess.Popen(
                [*cluster.on_node("node1"), sys.executable, str(tmp_path / "load.py"), str(run),
                 str(ledger.path), str(stop), str(CALL_TIMEOUT), str(CLIENTS)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # both replicas answer before the cut
        assert wait_until(lambda: min(ledger.answers(r) for r in replicas.values()) >= 20
                          or load.poll() is not None, 90), (tmp_path / "load.log").read_text()
        assert load.poll() is None, (tmp_path / "load.log").read_text()

        events["cut"] = time.time()
        cluster.link("node2", up=False)
        # the handle drops node2's replica (the directory saw its actor die with the node),
        # and node1's replica answers what follows
        assert wait_until(lambda: ledger.table_without(replicas["node2"], events["cut"]), 60), \
            "the handle kept node2's replica"
        events["dropped"] = ledger.table_without(replicas["node2"], events["cut"]) or 0.0
        assert wait_until(lambda: ledger.answers(replicas["node1"], events["dropped"]) >= 20,
                          30)
        assert wait_until(lambda: "node2" in (read_json(run / "run.json").get("nodes_lost")
                                              or []), 30), read_json(run / "run.json")
        events["lost"] = read_json(run / "run.json")["nodes"]["node2"]["lost"]

        events["heal"] = time.time()
        cluster.link("node2", up=True)
        # what node2 does once it can reach the head again: rejoin (its replica back in the
        # table), or its agent ends (Ray tells a node it marked dead to exit); at most 60 s
        def settled() -> bool:
            back = any(r["kind"] == "table" and r["t"] > events["heal"]
                       and replicas["node2"] in r["replicas"] for r in ledger.records())
            agent = read_json(run / "nodes" / "node2.json", {}).get("state")
            return back or agent in NODE_ENDED or hpcray.status(run).finished
        settled_in = wait_until(settled, 60)
        events["settled"] = time.time()
        assert wait_until(lambda: ledger.answers(replicas["node1"], events["settled"]) >= 10
                          or hpcray.status(run).finished, 30)
    finally:
        cluster.link("node2", up=True)
        stop.write_text("")
        if load is not None:
            try:
                load.wait(CALL_TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                os.killpg(load.pid, signal.SIGKILL)
                load.wait(10)
    st = hpcray.status(run)
    node2 = read_json(run / "nodes" / "node2.json", {})
    print(f"after heal: run {st.state}; node2 agent {node2.get('state')} "
          f"({node2.get('error') or node2.get('reason')}); settled: {settled_in}")
    print("events (s after the cut): " + ", ".join(
        f"{k} {v - events['cut']:+.1f}" for k, v in events.items()))
    records = ledger.records()
    sent = {r["id"] for r in records if r["kind"] == "sent"}
    outcomes = {r["id"]: r for r in records if "id" in r and r["kind"] != "sent"}
    kinds = [r["kind"] for r in outcomes.values()]
    answered, timed_out = kinds.count(ANSWERED), kinds.count(TIMED_OUT)
    print(f"requests {len(sent)}: answered {answered}, timed out {timed_out}, failed "
          f"{len(kinds) - answered - timed_out}")
    for r in outcomes.values():
        if r["kind"] not in (ANSWERED, TIMED_OUT):
            print(f"  {r['kind']} {r['id']} at {r['t'] - events['cut']:+.1f} s: "
                  f"{r['error'][:200]}")
    assert records and records[-1]["kind"] == "done", (tmp_path / "load.log").read_text()
    assert set(outcomes) == sent, sent - set(outcomes)  # nothing without an outcome
    assert kinds.count(TIMED_OUT) == 0, [r for r in outcomes.values() if r["kind"] == TIMED_OUT]
    assert all(r["right"] for r in outcomes.values() if r["kind"] == ANSWERED)
    # the client's outcomes against what both replicas executed: every answer executed by
    # its answerer; an id executed twice only if node2's replica ran it and its reply was cut
    clients = [ClientLedger(f"c{c}") for c in range(CLIENTS)]  # ids c<client>-<n>
    for client in clients:
        mine = [r["id"] for r in records if r["kind"] == "sent"
                and r["id"].startswith(f"{client.prefix}-")]
        client.merge({"sent": mine, "outcomes": {rid: [
            outcomes[rid]["kind"], outcomes[rid].get("replica"), outcomes[rid].get("error", "")]
            for rid in mine if rid in outcomes}})
    rec = reconcile(clients, read_executed(run, "echo"), lost_replicas=[replicas["node2"]])
    assert rec.sent == len(sent) and rec.executed > 0, rec.summary()
    print(f"ledger: {rec.summary()}")  # docs/reliability.md
    assert rec.problems() == [] and rec.lost == 0, rec.summary()
    # a request held by node2 when the link went is resent to node1, not failed
    assert set(rec.failed) <= {"replica lost"}, rec.summary()
    assert settled_in, "node2 neither rejoined nor ended within 60 s of the heal"
    # after the handle dropped node2's replica, node1's answered until the heal
    late = [r for r in outcomes.values() if r["kind"] == "answered"
            and events["dropped"] < r["t"] < events["heal"]]
    assert late and all(r["replica"] == replicas["node1"] for r in late)
    # the run goes on, or failed naming node2
    assert st.state == "running" or (st.state == "failed" and "node2" in (st.error or "")), \
        (st.state, st.error)
    assert [n.name for n in st.nodes if n.lost] == ["node2"]
    _down(run)
    assert not ray_processes(read_json(run / "run.json")["cluster_id"])
    # node2 serves the next tests: Slurm never saw it go (the cut was shorter than
    # SlurmdTimeout)
    assert wait_until(lambda: cluster.idle(["node2"]), 60), \
        cluster.run("sinfo", "-N", check=False)


def test_the_listener_check_refuses_hpcray_sockets_off_the_node_address():
    """No cluster needed: what check_listeners lets be, and what it does not."""
    base = 40000
    replica = "ray::ServeReplica:hpcray-echo:echo"
    assert exemption(Listener("*", 40001, 1), "/x/ray/raylet --a", base, set())
    monitor = "/v/bin/python -u /v/ray/autoscaler/_private/monitor.py"
    assert exemption(Listener("0.0.0.0", base + 11, 1), monitor, base, set())
    assert exemption(Listener("0.0.0.0", 44217, 1), monitor, base, set()) is None  # Ray's own
    assert exemption(Listener("*", base + WORKER_OFFSET, 2), replica, base, set())
    seen: set[int] = set()
    assert exemption(Listener("*", 35001, 3), replica, base, seen) == SERVE_GRPC
    # a second wildcard socket of the same replica (a direct-path socket bound to every
    # interface), the HTTP proxy or a program on 0.0.0.0, anything on a raylet's other ports
    assert exemption(Listener("*", 35002, 3), replica, base, seen) is None
    assert exemption(Listener("0.0.0.0", base + 10, 4), "ray::ProxyActor", base, set()) is None
    assert exemption(Listener("0.0.0.0", base + 20, 5), "/v/bin/python prog.py", base,
                     set()) is None
    assert exemption(Listener("127.0.0.1", base + 9, 6), "/x/ray/raylet", base, set()) is None
