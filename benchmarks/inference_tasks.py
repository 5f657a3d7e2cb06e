"""Driver for benchmarks/inference.py, run inside an hpcray run."""

from __future__ import annotations

import statistics


def split(services: list[str], n: int, max_tokens: int) -> dict:
    """Per service: p50 round trip and the mean RT components of `n` generate calls."""
    import hpcray

    out = {}
    for name in services:
        handle = hpcray.service(name)
        for _ in range(5):  # warm-up
            handle.generate("The cell", max_tokens=max_tokens)
        rs = [handle.generate(f"Radiation dose {i}", max_tokens=max_tokens) for i in range(n)]
        out[name] = {
            "instance": rs[-1].replica, "p50_ms": statistics.median(r.round_trip_s for r in rs)
            * 1e3, "inference_ms": statistics.mean(r.inference_s for r in rs) * 1e3,
            "service_ms": statistics.mean(r.service_s for r in rs) * 1e3,
            "communication_ms": statistics.mean(r.communication_s for r in rs) * 1e3,
            "tokens": rs[-1].result.get("completion_tokens")}
    return out
