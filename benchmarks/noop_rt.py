"""Driver of benchmarks/bootstrap_vs_rp.py's hpcray runs: when its first line ran, and the
NOOP round trip to one service on the direct path (the client side of RP's echo)."""

from __future__ import annotations

import statistics
import time

import hpcray


def main(calls: int = 1000, warmup: int = 50) -> dict:
    entry = time.time()
    handle = hpcray.service("s0")
    rts = []
    for i in range(warmup + calls):
        t0 = time.perf_counter()
        assert handle.call("echo", i).result == i
        if i >= warmup:
            rts.append(1e3 * (time.perf_counter() - t0))
    rts.sort()
    return {"entry": entry, "rt_p50_ms": statistics.median(rts),
            "rt_p99_ms": rts[int(0.99 * (len(rts) - 1))], "calls": calls}
