"""What a node is using right now (CPU, memory, GPUs) and how fast a replica is serving:
small samples written into the run dir, so `hpcray status` reads them without joining Ray."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from hpcray.rundir import read_json, write_json_atomic

SAMPLE_S = 2.0


def node_usage() -> dict[str, Any]:
    """Host CPU busy % since the previous call, memory, load, and NVIDIA GPUs if present.
    (Emulated local nodes share one host, so each reports the whole host.)"""
    mem = psutil.virtual_memory()
    out: dict[str, Any] = {"time": time.time(), "cpu_percent": psutil.cpu_percent(None),
                           "cpus": psutil.cpu_count(), "memory_used": mem.total - mem.available,
                           "memory_total": mem.total, "load1": psutil.getloadavg()[0]}
    gpus = nvidia_gpus()
    if gpus is not None:
        out["gpus"] = gpus
    return out


def nvidia_gpus() -> list[dict[str, float]] | None:
    """Per-GPU utilisation and memory from nvidia-smi; None where there is no nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total",
             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5,
            check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in text.strip().splitlines():
        util, used, total = (float(x) for x in line.split(","))
        gpus.append({"util_percent": util, "memory_used": used * 2**20,
                     "memory_total": total * 2**20})
    return gpus


class RequestCounter:
    """Counts a replica's requests and writes its rate every SAMPLE_S to
    `<run>/metrics/replicas/<service>/<replica>.json` (read by `hpcray status`)."""

    def __init__(self, run_dir: str | None, service: str, replica: str,
                 node: str | None, served=None) -> None:
        self.count = 0
        self._served = served or (lambda: self.count)
        self.path = Path(run_dir, "metrics", "replicas", service, f"{replica}.json") \
            if run_dir else None
        self.node = node
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = threading.Thread(target=self._write_forever, name="hpcray-rate",
                                            daemon=True)
            self._writer.start()

    def _write_forever(self) -> None:
        last, since = self._served(), time.monotonic()
        while not self._stop.wait(SAMPLE_S):
            now, served = time.monotonic(), self._served()
            assert self.path is not None  # the writer runs only with a path
            try:
                write_json_atomic(self.path, {
                    "time": time.time(), "node": self.node, "served": served,
                    "rate": (served - last) / (now - since)})
            except OSError:
                return  # the run dir is gone: the run is over
            last, since = served, now

    def stop(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=5)  # a write in flight would bring the file back
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def replica_rates(run_path: Path, service: str, fresh_s: float = 3 * SAMPLE_S) -> dict[str, Any]:
    """The service's live replicas' request rates (req/s) and counts, from their samples."""
    now, rate, served, replicas = time.time(), 0.0, 0, 0
    for path in sorted(Path(run_path, "metrics", "replicas", service).glob("*.json")):
        sample = read_json(path, None)
        if not sample or now - sample.get("time", 0) > fresh_s:
            continue
        replicas += 1
        rate += sample["rate"]
        served += sample["served"]
    return {"rate": rate, "served": served, "reporting": replicas}
