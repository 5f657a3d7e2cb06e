"""What a node is using right now (CPU, memory, GPUs: nvidia-smi, rocm-smi or xpu-smi) and how
fast a replica is serving: small samples written into the run dir, so `hpcray status` and the
head's Prometheus endpoint (prometheus.py) read them without joining Ray."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from hpcray.metrics.recorder import SAMPLE_S, ReplicaStats, paused
from hpcray.rundir import write_json_atomic

__all__ = ["SAMPLE_S", "RequestCounter", "amd_gpus", "intel_gpus", "node_usage", "nvidia_gpus"]


def node_usage() -> dict[str, Any]:
    """Host CPU busy % since the previous call, memory, load, and NVIDIA GPUs if present.
    (Emulated local nodes share one host, so each reports the whole host.)"""
    mem = psutil.virtual_memory()
    out: dict[str, Any] = {"time": time.time(), "cpu_percent": psutil.cpu_percent(None),
                           "cpus": psutil.cpu_count(), "memory_used": mem.total - mem.available,
                           "memory_total": mem.total, "load1": psutil.getloadavg()[0]}
    for vendor, read in (("nvidia", nvidia_gpus), ("amd", amd_gpus), ("intel", intel_gpus)):
        gpus = read()
        if gpus is not None:
            out["gpus"] = [{**g, "vendor": vendor} for g in gpus]
            break
    return out


NVIDIA_SMI = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total",
              "--format=csv,noheader,nounits"]
ROCM_SMI = ["rocm-smi", "--showuse", "--showmeminfo", "vram", "--json"]
XPU_SMI_DISCOVERY = ["xpu-smi", "discovery", "--dump", "1,16"]  # device id, memory size
XPU_SMI_METRICS = "0,18"  # GPU utilisation (%), GPU memory used (MiB)


def _tool(argv: list[str]) -> str | None:
    """The tool's output; None where it is not installed or fails (a node without GPUs)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=5,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _number(text: str) -> float | None:
    """A figure of a tool's output: '12.5', '32768.00 MiB'; None for 'N/A' and the like."""
    try:
        return float(text.strip().strip('"').split()[0])
    except (ValueError, IndexError):
        return None


def nvidia_gpus() -> list[dict[str, Any]] | None:
    """Per-GPU utilisation and memory from nvidia-smi; None where there is no nvidia-smi."""
    text = _tool(NVIDIA_SMI)
    return None if text is None else parse_nvidia(text)


def parse_nvidia(text: str) -> list[dict[str, Any]]:
    """`nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total
    --format=csv,noheader,nounits`: one line per GPU, MiB; '[N/A]' where unsupported."""
    gpus: list[dict[str, Any]] = []
    for index, line in enumerate(text.strip().splitlines()):
        fields = [_number(x) for x in line.split(",")]
        if len(fields) != 3:
            continue
        util, used, total = fields
        gpus.append({"index": index, "util_percent": util,
                     "memory_used": None if used is None else used * 2**20,
                     "memory_total": None if total is None else total * 2**20})
    return gpus


def amd_gpus() -> list[dict[str, Any]] | None:
    """Per-GPU utilisation and VRAM from rocm-smi; None where there is no rocm-smi."""
    text = _tool(ROCM_SMI)
    return None if text is None else parse_rocm(text)


def parse_rocm(text: str) -> list[dict[str, Any]]:
    """`rocm-smi --showuse --showmeminfo vram --json`: {"card0": {"GPU use (%)": "3",
    "VRAM Total Memory (B)": "...", "VRAM Total Used Memory (B)": "..."}, ...} (bytes)."""
    try:
        cards = json.loads(text[text.index("{"):])
    except ValueError:
        return []
    gpus: list[dict[str, Any]] = []
    for name, fields in sorted(cards.items(), key=lambda kv: kv[0]):
        if not name.startswith("card") or not isinstance(fields, dict):
            continue
        gpus.append({"index": int(name[4:]) if name[4:].isdigit() else len(gpus),
                     "util_percent": _number(str(fields.get("GPU use (%)", ""))),
                     "memory_used": _number(str(fields.get("VRAM Total Used Memory (B)", ""))),
                     "memory_total": _number(str(fields.get("VRAM Total Memory (B)", "")))})
    return gpus


_xpu_devices: dict[int, float | None] | None = None  # device id -> memory (bytes), asked once


def intel_gpus() -> list[dict[str, Any]] | None:
    """Per-GPU utilisation and memory from xpu-smi; None where there is no xpu-smi."""
    global _xpu_devices
    if _xpu_devices is None:
        text = _tool(XPU_SMI_DISCOVERY)
        if text is None:
            return None
        _xpu_devices = parse_xpu_discovery(text)
    if not _xpu_devices:
        return []
    ids = ",".join(str(d) for d in sorted(_xpu_devices))
    # two samples (about a second apart): utilisation is 'N/A' in the first one
    text = _tool(["xpu-smi", "dump", "-d", ids, "-m", XPU_SMI_METRICS, "-n", "2"])
    return None if text is None else parse_xpu_dump(text, _xpu_devices)


def parse_xpu_discovery(text: str) -> dict[int, float | None]:
    """`xpu-smi discovery --dump 1,16`: a CSV header, then `0,"32768.00 MiB"` per device."""
    devices: dict[int, float | None] = {}
    for line in text.strip().splitlines()[1:]:
        fields = line.split(",")
        if fields and fields[0].strip().isdigit():
            size = _number(fields[1]) if len(fields) > 1 else None
            devices[int(fields[0])] = None if size is None else size * 2**20
    return devices


def parse_xpu_dump(text: str, memory: dict[int, float | None]) -> list[dict[str, Any]]:
    """`xpu-smi dump -d 0,1 -m 0,18 -n 2`: a CSV header ("Timestamp, DeviceId, GPU
    Utilization (%), GPU Memory Used (MiB)"), then one row per device; 'N/A' while a
    figure is not known yet. Columns are found by their header, the last row per device
    kept."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return []
    header = [h.strip() for h in lines[0].split(",")]

    def column(prefix: str) -> int | None:
        return next((i for i, h in enumerate(header) if h.startswith(prefix)), None)

    dev, util, used = column("DeviceId"), column("GPU Utilization"), column("GPU Memory Used")
    rows: dict[int, dict[str, Any]] = {}
    for line in lines[1:]:
        fields = line.split(",")
        if dev is None or dev >= len(fields) or not fields[dev].strip().isdigit():
            continue
        index = int(fields[dev])
        mib = _number(fields[used]) if used is not None and used < len(fields) else None
        rows[index] = {"index": index,
                       "util_percent": _number(fields[util]) if util is not None
                       and util < len(fields) else None,
                       "memory_used": None if mib is None else mib * 2**20,
                       "memory_total": memory.get(index)}
    return [rows[i] for i in sorted(rows)]


class RequestCounter:
    """Counts a replica's requests and writes its rate every SAMPLE_S to
    `<run>/metrics/replicas/<service>/<replica>.json` (read by `hpcray status` and the head's
    Prometheus endpoint), with its ReplicaStats (errors, latency histograms) and what it
    holds now (`in_flight`: received, not answered yet)."""

    def __init__(self, run_dir: str | None, service: str, replica: str,
                 node: str | None, served: Callable[[], int] | None = None,
                 stats: ReplicaStats | None = None,
                 in_flight: Callable[[], int] | None = None) -> None:
        self.count = 0
        self._served = served or (lambda: self.count)
        self.stats = stats
        self._in_flight = in_flight or (lambda: 0)
        self.run_dir = run_dir
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
            sample: dict[str, Any] = {"time": time.time(), "node": self.node, "served": served,
                                      "rate": (served - last) / (now - since),
                                      "in_flight": self._in_flight()}
            if self.stats is not None:
                assert self.run_dir is not None  # a path, so a run dir
                self.stats.switch(not paused(self.run_dir))
                sample.update(self.stats.snapshot(), recording=self.stats.on)
            try:
                write_json_atomic(self.path, sample)
            except OSError:
                return  # the run dir is gone: the run is over
            last, since = served, now

    def stop(self) -> None:
        """No more samples; the live one goes (the replica no longer counts as running) and
        its final numbers stay in `metrics/replicas-stopped/`, for the report's RT split of a
        service stopped before the run ends (one a driver started and stopped itself)."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=5)  # a write in flight would bring the file back
        if self.path is None:
            return
        sample: dict[str, Any] = {"time": time.time(), "node": self.node, "stopped": True,
                                  "served": self._served(), "rate": 0.0, "in_flight": 0}
        if self.stats is not None:
            sample.update(self.stats.snapshot(), recording=self.stats.on)
        stopped = self.path.parents[2] / "replicas-stopped" / self.path.parent.name \
            / self.path.name
        with contextlib.suppress(OSError):  # the run dir is gone: the run is over
            stopped.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(stopped, sample)
        self.path.unlink(missing_ok=True)
