"""Driver of benchmarks/service_bootstrap.py's round-trip part, run inside the benchmark's
run: the same echo through a class service (`cls`, Noop.echo) and a program service
(`prog`, an HTTP server's POST /echo), on the direct path, interleaved call by call; and the
program's own URL without hpcray in between, for reference."""

from __future__ import annotations

import json
import os
import statistics

import httpx

import hpcray
from hpcray import env


def _summary(rts: list[float], split: list[tuple[float, float]] | None = None) -> dict:
    rts_ms = sorted(1e3 * r for r in rts)
    out = {"n": len(rts_ms), "p50_ms": statistics.median(rts_ms),
           "p95_ms": rts_ms[int(0.95 * (len(rts_ms) - 1))], "mean_ms": statistics.mean(rts_ms)}
    if split:
        out["inference_ms"] = 1e3 * statistics.median(s[0] for s in split)
        out["service_ms"] = 1e3 * statistics.median(s[1] for s in split)
    return out


def main(calls: int = 1000) -> dict:
    cls, prog = hpcray.service("cls"), hpcray.service("prog")
    with open(os.environ[env.ENDPOINTS]) as f:
        url = json.load(f)["services"]["prog"]["program"]["replicas"][0]["url"]
    rt: dict[str, list[float]] = {"class": [], "program": [], "program, plain HTTP": []}
    split: dict[str, list[tuple[float, float]]] = {"class": [], "program": []}
    with httpx.Client(base_url=url) as plain:
        for i in range(calls + 50):
            a = cls.call("echo", {"id": str(i)})
            b = prog.request("POST", "/echo", json={"id": str(i)})
            assert a.result == {"id": str(i)} and b.result["json"]["id"] == str(i)
            reply = plain.post("/echo", json={"id": str(i)})
            assert reply.status_code == 200
            if i < 50:  # warm-up
                continue
            rt["class"].append(a.round_trip_s)
            rt["program"].append(b.round_trip_s)
            rt["program, plain HTTP"].append(reply.elapsed.total_seconds())
            split["class"].append((a.inference_s, a.service_s))
            split["program"].append((b.inference_s, b.service_s))
    return {name: _summary(values, split.get(name)) for name, values in rt.items()}
