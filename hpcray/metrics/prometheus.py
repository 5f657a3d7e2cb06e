"""The run's Prometheus endpoint: the head's node agent serves `/metrics` (the text exposition
format, 0.0.4) on the job's own metrics port (offset 13 of the head's port block), bound to
the head's allocation address, never all interfaces.

Every scrape renders what the run dir holds at that moment: the replicas' samples
(`metrics/replicas/<service>/<replica>.json`: requests, errors, service and inference
histograms, in flight), the clients' (`metrics/clients/<host>-<pid>.json`: communication
histograms), the node agents' (`nodes/<node>.json`: CPU, memory, GPUs), and run.json (service
and stage states, stage tasks). So a scrape never reaches Ray, a replica or a client, and
costs the run nothing while nobody scrapes. `hpcray status` reads the same snapshot
(`collect`).

`/ray-targets` answers Prometheus' HTTP service discovery with every node's Ray metrics
exporter (`ray start --metrics-export-port`, in each node's port block), so one scrape
config follows Ray's own metrics as nodes join. With `endpoints.token`, both need the run's
HTTP bearer token, as the rest of the run's HTTP API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hpcray.metrics.recorder import BOUNDS_S, SAMPLE_S, merge, quantile
from hpcray.rundir import RunDir, read_json

log = logging.getLogger("hpcray.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FRESH_S = 3 * SAMPLE_S  # a replica's sample older than this is of a replica gone

# name -> (type, help): every metric hpcray exports (docs/metrics.md lists them)
METRICS: dict[str, tuple[str, str]] = {
    "hpcray_run_state": ("gauge", "1 for the run's current state"),
    "hpcray_service_state": ("gauge", "1 for each service's current state"),
    "hpcray_service_replicas": ("gauge", "replicas of the service reporting now"),
    "hpcray_service_replicas_desired": ("gauge", "replicas the workflow asks for"),
    "hpcray_requests_total": ("counter", "requests answered by the replica"),
    "hpcray_request_errors_total": ("counter",
                                    "requests the replica failed or refused"),
    "hpcray_requests_in_flight": ("gauge",
                                  "requests received by the replica, not answered yet "
                                  "(its queue depth)"),
    "hpcray_service_seconds": ("histogram",
                               "time on the replica outside the handler: queue, decode, "
                               "encode"),
    "hpcray_inference_seconds": ("histogram", "time in the service's handler"),
    "hpcray_communication_seconds": ("histogram",
                                     "round trip at the client minus the replica's time"),
    "hpcray_node_cpu_percent": ("gauge", "CPU busy on the node's host"),
    "hpcray_node_cpus": ("gauge", "CPUs of the node's host"),
    "hpcray_node_memory_used_bytes": ("gauge", "memory in use on the node's host"),
    "hpcray_node_memory_total_bytes": ("gauge", "memory of the node's host"),
    "hpcray_node_load1": ("gauge", "1-minute load average of the node's host"),
    "hpcray_gpu_utilization_percent": ("gauge", "GPU busy (nvidia-smi, rocm-smi, xpu-smi)"),
    "hpcray_gpu_memory_used_bytes": ("gauge", "GPU memory in use"),
    "hpcray_gpu_memory_total_bytes": ("gauge", "GPU memory"),
    "hpcray_stage_tasks": ("gauge", "a stage's tasks by state"),
    "hpcray_stage_retries_total": ("counter", "a stage's tasks sent again after a failure"),
}
STAGE_TASK_STATES = ("pending", "running", "done", "failed")


# -- the snapshot: what the run dir says now --------------------------------------------------
def collect(run_path: Path, now: float | None = None) -> dict[str, Any]:
    """Everything a scrape and `hpcray status` show, from the run dir's files."""
    now = time.time() if now is None else now
    run = RunDir(Path(run_path))
    data = run.read()
    workflow = (read_json(run.resolved, {}) or {}).get("workflow", {})
    states = data.get("services", {})
    services: dict[str, dict[str, Any]] = {}
    for spec in workflow.get("services", []):
        services[spec["name"]] = {"desired": int(spec.get("replicas", 1))}
    root = run.path / "metrics" / "replicas"
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            services.setdefault(folder.name, {})
    for name, entry in services.items():
        entry["state"] = states.get(name, {}).get("state", "pending")
        replicas = {}
        for path in sorted((root / name).glob("*.json")):
            sample = read_json(path, None)
            if sample and now - sample.get("time", 0) <= FRESH_S:
                replicas[path.stem] = sample
        entry["replicas"] = replicas
        entry["communication_seconds"] = {}
    for path in sorted((run.path / "metrics" / "clients").glob("*.json")):
        sample = read_json(path, None) or {}
        host = str(sample.get("host", "?"))
        for name, got in sample.get("services", {}).items():
            by_host = services.setdefault(name, {"state": states.get(name, {}).get(
                "state", "pending"), "replicas": {}, "communication_seconds": {}})
            by_host["communication_seconds"].setdefault(host, []).append(
                got.get("communication_seconds", {}))
    for entry in services.values():
        entry["communication_seconds"] = {h: merge(parts) for h, parts in
                                          entry["communication_seconds"].items()}
    nodes = {name: agent.get("usage") for name, agent in run.node_states().items()
             if agent.get("usage") and agent.get("state") != "stopped"}
    stages = {name: got for name, got in data.get("stages", {}).items()}
    return {"time": now, "run_id": data.get("run_id", run.path.name),
            "state": data.get("state"), "services": services, "nodes": nodes,
            "stages": stages}


def service_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """One service's figures over its live replicas and every client (`hpcray status`)."""
    replicas = entry.get("replicas", {}).values()
    service = merge([r["service_seconds"] for r in replicas if "service_seconds" in r])
    inference = merge([r["inference_seconds"] for r in replicas if "inference_seconds" in r])
    comm = merge(list(entry.get("communication_seconds", {}).values()))
    return {"reporting": len(entry.get("replicas", {})),
            "rate": sum(r.get("rate", 0.0) for r in replicas),
            "served": sum(r.get("served", 0) for r in replicas),
            "errors": sum(r.get("errors", 0) for r in replicas),
            "in_flight": sum(r.get("in_flight", 0) for r in replicas),
            "p50_s": {"communication": quantile(comm, 0.5), "service": quantile(service, 0.5),
                      "inference": quantile(inference, 0.5)}}


# -- the exposition text ----------------------------------------------------------------------
def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Text:
    """Samples grouped under their metric's HELP and TYPE, as the format requires."""

    def __init__(self) -> None:
        self.samples: dict[str, list[str]] = {name: [] for name in METRICS}

    def add(self, name: str, labels: dict[str, Any], value: float | None) -> None:
        if value is not None:
            self.samples[name].append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, labels: dict[str, Any], hist: dict[str, Any]) -> None:
        counts = hist.get("counts") or [0] * (len(BOUNDS_S) + 1)
        seen = 0
        for bound, count in zip(BOUNDS_S, counts, strict=False):
            seen += count
            self.samples[name].append(
                f"{name}_bucket{_labels({**labels, 'le': repr(bound)})} {seen}")
        total = hist.get("count", 0)
        self.samples[name].append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {total}")
        self.samples[name].append(f"{name}_sum{_labels(labels)} "
                                  f"{_number(float(hist.get('sum', 0.0)))}")
        self.samples[name].append(f"{name}_count{_labels(labels)} {total}")

    def text(self) -> str:
        out = []
        for name, (kind, help_text) in METRICS.items():
            if not self.samples[name]:
                continue
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(self.samples[name])
        return "\n".join(out) + "\n"


def render(snapshot: dict[str, Any]) -> str:
    """The snapshot in Prometheus' text format."""
    t = _Text()
    if snapshot.get("state"):
        t.add("hpcray_run_state", {"state": snapshot["state"]}, 1)
    for name, entry in snapshot["services"].items():
        t.add("hpcray_service_state", {"service": name, "state": entry.get("state")}, 1)
        t.add("hpcray_service_replicas", {"service": name}, len(entry.get("replicas", {})))
        t.add("hpcray_service_replicas_desired", {"service": name}, entry.get("desired"))
        for replica, sample in entry.get("replicas", {}).items():
            labels = {"service": name, "replica": replica, "node": sample.get("node") or ""}
            t.add("hpcray_requests_total", labels, sample.get("served", 0))
            t.add("hpcray_request_errors_total", labels, sample.get("errors", 0))
            t.add("hpcray_requests_in_flight", labels, sample.get("in_flight", 0))
            for metric in ("service_seconds", "inference_seconds"):
                if metric in sample:
                    t.histogram(f"hpcray_{metric}", labels, sample[metric])
        for host, hist in entry.get("communication_seconds", {}).items():
            t.histogram("hpcray_communication_seconds", {"service": name, "host": host}, hist)
    for node, usage in snapshot["nodes"].items():
        labels = {"node": node}
        t.add("hpcray_node_cpu_percent", labels, usage.get("cpu_percent"))
        t.add("hpcray_node_cpus", labels, usage.get("cpus"))
        t.add("hpcray_node_memory_used_bytes", labels, usage.get("memory_used"))
        t.add("hpcray_node_memory_total_bytes", labels, usage.get("memory_total"))
        t.add("hpcray_node_load1", labels, usage.get("load1"))
        for i, gpu in enumerate(usage.get("gpus") or []):
            g = {"node": node, "gpu": str(gpu.get("index", i)), "vendor": gpu.get("vendor", "")}
            t.add("hpcray_gpu_utilization_percent", g, gpu.get("util_percent"))
            t.add("hpcray_gpu_memory_used_bytes", g, gpu.get("memory_used"))
            t.add("hpcray_gpu_memory_total_bytes", g, gpu.get("memory_total"))
    for stage, got in snapshot["stages"].items():
        done, failed, running = (int(got.get(k, 0)) for k in ("done", "failed", "running"))
        pending = max(0, int(got.get("total", 0)) - done - failed - running)
        for state, value in zip(STAGE_TASK_STATES, (pending, running, done, failed),
                                strict=True):
            t.add("hpcray_stage_tasks", {"stage": stage, "state": state}, value)
        t.add("hpcray_stage_retries_total", {"stage": stage}, int(got.get("retried", 0)))
    return t.text()


def ray_targets(run_path: Path, ray_metrics_offset: int) -> list[dict[str, Any]]:
    """Prometheus HTTP service discovery: each running node's Ray metrics exporter."""
    out = []
    for name, agent in RunDir(Path(run_path)).node_states().items():
        ip, base = agent.get("ip"), agent.get("port_base")
        if not ip or base is None or agent.get("state") in ("stopped", "failed"):
            continue
        host = f"[{ip}]" if ":" in ip else ip
        out.append({"targets": [f"{host}:{int(base) + ray_metrics_offset}"],
                    "labels": {"node": name, "hpcray_component": "ray"}})
    return out


# -- the server --------------------------------------------------------------------------------
class MetricsServer:
    """`/metrics` and `/ray-targets` over HTTP on one address, from a daemon thread of the
    head's node agent. `token_file`: the run's HTTP bearer token; when `token_required`,
    a request without it (or before the file exists) is refused."""

    def __init__(self, run_path: Path, host: str, port: int, *, ray_metrics_offset: int,
                 token_file: Path | None = None, token_required: bool = False) -> None:
        self.run_path = Path(run_path)
        self.ray_metrics_offset = ray_metrics_offset
        self.token_file = token_file
        self.token_required = token_required
        self._token_sha256: str | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a connection that sends nothing does not hold a thread for good

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server._answer(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # a scrape a second is no news; errors are logged by _answer

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.5}, name="hpcray-metrics", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _authorized(self, header: str | None) -> bool:
        if not self.token_required:
            return True
        if self._token_sha256 is None:
            try:
                token = self.token_file.read_text().strip() if self.token_file else ""
            except OSError:
                return False  # not written yet: nothing is served before it
            if not token:
                return False
            self._token_sha256 = hashlib.sha256(token.encode()).hexdigest()
        if not header or not header.startswith("Bearer "):
            return False
        presented = hashlib.sha256(header[len("Bearer "):].strip().encode()).hexdigest()
        return hmac.compare_digest(presented, self._token_sha256)

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if path not in ("/metrics", "/ray-targets"):
            self._send(request, 404, "text/plain", b"not found: /metrics, /ray-targets\n")
            return
        if not self._authorized(request.headers.get("Authorization")):
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Bearer realm="hpcray"')
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        try:
            if path == "/metrics":
                body = render(collect(self.run_path)).encode()
                self._send(request, 200, CONTENT_TYPE, body)
            else:
                body = json.dumps(ray_targets(self.run_path, self.ray_metrics_offset)).encode()
                self._send(request, 200, "application/json", body)
        except Exception as exc:  # noqa: BLE001 - a scrape fails, the agent goes on
            log.warning("metrics scrape failed: %s: %s", type(exc).__name__, exc)
            self._send(request, 500, "text/plain", f"{type(exc).__name__}\n".encode())

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, code: int, kind: str, body: bytes) -> None:
        request.send_response(code)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
