"""The paper's experiment 2 (response time, RT) on this machine.

    python benchmarks/response.py [--requests 1024] [--services 1 2 4 8 16] [--clients 16]

One run on the local site serves a NOOP service with 16 replicas (and a 1-replica one for the
single-replica baselines). Client processes send --requests NOOP requests each, all released
together by a barrier:
  strong scaling: 16 clients on 1, 2, 4, 8, 16 replicas over the direct path
  weak scaling:   1/1, 2/2, 4/4, 8/8, 16/16 clients/replicas over the direct path
and, in the same run, the baselines: raw ZeroMQ REQ/REP between two processes (the floor, and
16 pairs), the Ray Serve DeploymentHandle path and the Ray Serve HTTP path (1/1 and 16/16).
Every direct request's RT is split as in the paper: communication (client round trip minus the
replica's time), service (queue + decode + encode on the replica), inference (the handler).
The cost of that timing is measured by alternating timed and untimed blocks in one client.
Writes benchmarks/results/response.{csv,png,txt}.

The cost of the run's metrics (docs/metrics.md): one client, one replica (noop1), the same
run, rounds with metrics on and off alternating (the replica's and the client's recording
paused through <run>/metrics/paused, each round gated until both report the switch); RT p50
and throughput per arm and their ratio. Writes
benchmarks/results/response_metrics.{csv,json,png,txt}; `--metrics-only` runs only this arm
(a run with noop1 alone).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import hpcray  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
WARMUP = 64
PARTS = ("communication", "service", "inference")


# -- client processes (spawned: no Ray unless the kind needs it) ----------------------------
def client(kind: str, k: int, cfg: dict, barrier, out) -> None:
    try:
        out.put(_client(kind, k, cfg, barrier))
    except Exception as exc:  # noqa: BLE001 - reported by the parent, which then stops
        out.put({"error": f"client {k} ({kind}): {type(exc).__name__}: {exc}"})
        barrier.abort()


def _client(kind: str, k: int, cfg: dict, barrier) -> dict:
    n = cfg["requests"]
    perf = time.perf_counter
    rt, parts = [], {p: [] for p in PARTS}
    if kind == "raw":
        import zmq

        sock = zmq.Context().socket(zmq.REQ)
        sock.connect(cfg["raw"][k % len(cfg["raw"])])
        for _ in range(WARMUP):
            sock.send(b"x")
            sock.recv()
        barrier.wait()
        start = perf()
        for _ in range(n):
            t = perf()
            sock.send(b"x")
            sock.recv()
            rt.append(perf() - t)
        end = perf()
        return {"rt": rt, "parts": None, "start": start, "end": end}
    if kind == "metrics":
        return _metrics_client(cfg)
    if kind in ("direct", "overhead"):
        from hpcray.services.direct.client import DirectClient

        addresses = dict(list(cfg["replicas"].items())[:cfg["services"]])
        c = DirectClient("noop", addresses=addresses, token=cfg["token"])
        for _ in range(WARMUP):
            c.call("noop")
        if kind == "overhead":
            # 1 client, 1 replica, side by side: blocks of raw REQ/REP (the floor), direct with
            # the timing split and without it, interleaved so drift on this shared machine
            # hits all three alike
            import zmq

            raw = zmq.Context().socket(zmq.REQ)
            raw.connect(cfg["raw"][0])
            samples: dict[str, list[float]] = {"raw": [], "timed": [], "untimed": []}
            barrier.wait()
            for _ in range(24):
                for name in samples:
                    target = samples[name]
                    if name == "raw":
                        for _ in range(n // 24):
                            t = perf()
                            raw.send(b"x")
                            raw.recv()
                            target.append(perf() - t)
                        continue
                    c.timing = name == "timed"
                    for _ in range(n // 24):
                        t = perf()
                        c.call("noop")
                        target.append(perf() - t)
            return samples
        barrier.wait()
        return measure(lambda: c.call("noop").timing, n)
    if kind == "serve":
        import logging

        hpcray.connect(cfg["run"], log_to_driver=False)
        logging.getLogger("ray.serve").setLevel(logging.ERROR)  # per-request warnings under load
        from hpcray.services.handle import ServiceHandle

        h = ServiceHandle(cfg["service"], transport="serve")
        for _ in range(WARMUP // 4):
            h.call("noop")
        barrier.wait()
        return measure(lambda: h.call("noop"), n)
    if kind == "http":
        import http.client
        from urllib.parse import urlsplit

        url = urlsplit(cfg["http"])
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        body = json.dumps({"method": "noop"})

        def post() -> dict:
            conn.request("POST", url.path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
            return json.loads(data)

        for _ in range(WARMUP // 4):
            post()
        barrier.wait()
        start = perf()
        for _ in range(n):
            t = perf()
            out = post()
            total = perf() - t
            rt.append(total)
            parts["service"].append(out["service_s"])
            parts["inference"].append(out["inference_s"])
            parts["communication"].append(max(0.0, total - out["service_s"]
                                              - out["inference_s"]))
        end = perf()
        return {"rt": rt, "parts": parts, "start": start, "end": end}
    raise ValueError(kind)


def _metrics_client(cfg: dict) -> dict:
    """Rounds of `requests` NOOP calls, metrics on and off in turn (the order flipped every
    round so drift hits both arms alike). Before each round, the switch is made and waited
    for: the replica's sample says whether it records, and so does this process's recorder."""
    import os

    os.environ["HPCRAY_RUN_DIR"] = cfg["run"]  # this client records as a driver of the run
    from hpcray.metrics.recorder import client_metrics
    from hpcray.services.direct.client import DirectClient

    run = Path(cfg["run"])
    paused = run / "metrics" / "paused"
    (replica, address), = cfg["replicas1"].items()
    sample = run / "metrics" / "replicas" / "noop1" / f"{replica}.json"
    c = DirectClient("noop1", addresses={replica: address}, token=cfg["token"])
    for _ in range(WARMUP):
        c.call("noop")
    recorder = client_metrics()
    assert recorder is not None, "metrics are off in this run (HPCRAY_METRICS)"
    perf = time.perf_counter
    out: dict[str, dict[str, list[float]]] = {arm: {"rt": [], "spans": []}
                                              for arm in ("on", "off")}
    for k in range(cfg["rounds"]):
        for arm in (("on", "off") if k % 2 == 0 else ("off", "on")):
            if arm == "off":
                paused.write_text("")
            else:
                paused.unlink(missing_ok=True)
            deadline = time.monotonic() + 30
            while True:  # gate: both sides see the switch (within one 2-s sample)
                try:
                    recording = json.loads(sample.read_text()).get("recording")
                except (OSError, ValueError):
                    recording = None
                if recording == (arm == "on") and recorder.on == (arm == "on"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"metrics did not switch {arm} within 30 s")
                time.sleep(0.05)
                c.call("noop")  # keeps the connection warm while waiting
            rt = out[arm]["rt"]
            start = perf()
            for _ in range(cfg["requests"]):
                t = perf()
                c.call("noop")
                rt.append(perf() - t)
            out[arm]["spans"].append(perf() - start)
    paused.unlink(missing_ok=True)
    c.close()
    return out


def measure(call, n: int) -> dict:
    """n calls in a row; each returns something with the RT split (a Timing or a Response)."""
    perf = time.perf_counter
    rt: list[float] = []
    parts: dict[str, list[float]] = {p: [] for p in PARTS}
    start = perf()
    for _ in range(n):
        r = call()
        rt.append(r.round_trip_s)
        parts["communication"].append(r.communication_s)
        parts["service"].append(r.service_s)
        parts["inference"].append(r.inference_s)
    return {"rt": rt, "parts": parts, "start": start, "end": perf()}


def raw_server(out) -> None:
    import zmq

    sock = zmq.Context().socket(zmq.REP)
    sock.bind("tcp://127.0.0.1:0")
    out.put(sock.last_endpoint.decode())
    while True:
        sock.send(sock.recv())


def run_clients(kind: str, clients: int, cfg: dict) -> list[dict]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(clients), ctx.Queue()
    procs = [ctx.Process(target=client, args=(kind, k, cfg, barrier, out)) for k in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise SystemExit("\n".join(errors))
    return results


# -- statistics -----------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(label: str, scaling: str, kind: str, clients: int, services: int,
              results: list[dict]) -> dict:
    rt = [x for r in results for x in r["rt"]]
    row = {"experiment": label, "scaling": scaling, "path": kind, "clients": clients,
           "services": services, "requests": len(rt),
           "rt_p50_ms": pct(rt, 0.5) * 1e3, "rt_p99_ms": pct(rt, 0.99) * 1e3,
           "rt_mean_ms": statistics.fmean(rt) * 1e3}
    for part in PARTS:
        values = [x for r in results if r["parts"] for x in r["parts"][part]]
        row[f"{part}_p50_ms"] = pct(values, 0.5) * 1e3 if values else None
        row[f"{part}_p99_ms"] = pct(values, 0.99) * 1e3 if values else None
        row[f"{part}_mean_ms"] = statistics.fmean(values) * 1e3 if values else None
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    row["throughput_rps"] = len(rt) / span
    return row


# -- the run --------------------------------------------------------------------------------
def start_run(work: Path, metrics_only: bool = False):
    wf = work / "rt.yaml"
    wf.write_text("name: rt\nallocation: {nodes: 1, walltime: 60m}\n"
                  "ray: {object_store_memory: 200000000, teardown_grace: 5}\n"
                  "services:\n"
                  + ("" if metrics_only else
                     "  - {name: noop, deployment: noop, replicas: 16, resources: {cpus: 0.01},\n"
                     "     readiness_timeout: 600}\n")
                  + "  - {name: noop1, deployment: noop, replicas: 1, resources: {cpus: 0.01}}\n")
    sub = hpcray.submit(wf, run_root=work / "runs")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        st = hpcray.status(sub.run_dir)
        if st.finished:
            raise SystemExit(f"the run ended: {st.state}: {st.error}")
        if "services_ready" in st.times:
            return sub.run_dir
        time.sleep(1)
    raise SystemExit("services not ready within 900 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1024, help="per client")
    parser.add_argument("--services", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--clients", type=int, default=16, help="strong scaling")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw response.png from response.json")
    parser.add_argument("--metrics-only", action="store_true",
                        help="only the metrics on/off arm (a run with noop1 alone)")
    parser.add_argument("--metrics-rounds", type=int, default=12,
                        help="rounds per arm of the metrics on/off comparison")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((RESULTS / "response.json").read_text())["rows"],
             RESULTS / "response.png")
        return 0

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console(record=True, width=120)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hpcray-rt-") as tmp:
        work = Path(tmp)
        console.print("starting a run with NOOP services "
                      f"({'1' if args.metrics_only else '16 + 1'} replicas) ...")
        run_dir = start_run(work, args.metrics_only)
        try:
            endpoints = json.loads((run_dir / "endpoints.json").read_text())["services"]
            direct = endpoints["noop1"]["direct"]
            token_file = direct["auth"]["password_file"]
            cfg = {"requests": args.requests, "run": str(run_dir),
                   "replicas1": {r["replica"]: r["address"] for r in direct["replicas"]},
                   "token": Path(token_file).read_bytes().strip() if token_file else b"",
                   "urls": {name: e.get("http") for name, e in endpoints.items()}}
            metrics = run_clients("metrics", 1, {**cfg, "rounds": args.metrics_rounds,
                                                 "requests": max(args.requests, 2000)})[0]
            if args.metrics_only:
                return report_metrics(console, metrics, args)
            direct = endpoints["noop"]["direct"]
            cfg["replicas"] = {r["replica"]: r["address"] for r in direct["replicas"]}
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            raw = [ctx.Process(target=raw_server, args=(q,), daemon=True) for _ in range(16)]
            for p in raw:
                p.start()
            cfg["raw"] = [q.get(timeout=60) for _ in raw]
            max_n = max(args.services)
            plan = [("floor", "-", "raw", 1, 1), ("floor", "-", "raw", max_n, max_n)]
            plan += [("strong", "strong", "direct", args.clients, n) for n in args.services]
            plan += [("weak", "weak", "direct", n, n) for n in args.services]
            plan += [("baseline", "-", "serve", 1, 1), ("baseline", "-", "serve", max_n, max_n),
                     ("baseline", "-", "http", 1, 1), ("baseline", "-", "http", max_n, max_n)]
            with Progress(console=console) as progress:
                task = progress.add_task("experiment 2", total=len(plan) + 1)
                for label, scaling, kind, clients, services in plan:
                    progress.update(task, description=f"{kind} {clients}/{services}")
                    service = "noop1" if services == 1 else "noop"
                    c = {**cfg, "services": services, "service": service,
                         "http": cfg["urls"][service]}
                    if kind == "raw" and clients == 1:
                        c["raw"] = cfg["raw"][:1]
                    results = run_clients(kind, clients, c)
                    rows.append(summarize(label, scaling, kind, clients, services, results))
                    progress.advance(task)
                progress.update(task, description="1/1 side by side: raw, timed, untimed")
                over = run_clients("overhead", 1, {**cfg, "services": 1,
                                                   "requests": max(8 * args.requests, 4800)})[0]
                progress.advance(task)
        finally:
            hpcray.cancel(run_dir, wait_s=120)

    timed_p50, untimed_p50 = pct(over["timed"], 0.5), pct(over["untimed"], 0.5)
    raw_p50 = pct(over["raw"], 0.5)

    def find(path: str, clients: int, services: int, scaling: str | None = None) -> dict:
        return next(r for r in rows if r["path"] == path and r["clients"] == clients
                    and r["services"] == services and (scaling is None or r["scaling"] == scaling))

    max_n = max(args.services)
    floor = find("raw", 1, 1)
    one = find("direct", 1, 1, "weak") if 1 in args.services else None
    top = find("direct", max_n, max_n)
    serve_top = find("serve", max_n, max_n)
    targets = {
        "rt_p50_1x1_over_raw_floor": timed_p50 / raw_p50,
        "rt_p50_1x1_over_raw_floor_separate_runs":
            (one["rt_p50_ms"] / floor["rt_p50_ms"]) if one else None,
        f"throughput_{max_n}x{max_n}_over_serve_handle":
            top["throughput_rps"] / serve_top["throughput_rps"],
        "timing_overhead_on_rt_p50": timed_p50 / untimed_p50 - 1,
    }

    table = Table(title=f"Experiment 2: NOOP response time, {args.requests} requests per "
                        "client (ms; throughput in requests/s)")
    for col in ("experiment", "path", "clients/services", "RT p50", "RT p99", "comm p50",
                "service p50", "inference p50", "throughput"):
        table.add_column(col, justify="right" if col not in ("experiment", "path") else "left")

    def ms(v):
        return "-" if v is None else f"{v:.3f}"

    for r in rows:
        table.add_row(r["experiment"], r["path"], f"{r['clients']}/{r['services']}",
                      ms(r["rt_p50_ms"]), ms(r["rt_p99_ms"]), ms(r["communication_p50_ms"]),
                      ms(r["service_p50_ms"]), ms(r["inference_p50_ms"]),
                      f"{r['throughput_rps']:.0f}")
    console.print(table)
    overhead = targets["timing_overhead_on_rt_p50"]
    console.print(f"timing breakdown: RT p50 {timed_p50 * 1e3:.4f} ms timed vs "
                  f"{untimed_p50 * 1e3:.4f} ms untimed ({overhead:+.1%}, target <= +5%)")
    console.print(f"RT p50 1/1, interleaved in one client: direct {timed_p50 * 1e3:.4f} ms vs "
                  f"raw ZeroMQ REQ/REP floor {raw_p50 * 1e3:.4f} ms = "
                  f"{targets['rt_p50_1x1_over_raw_floor']:.2f}x (target <= 1.5x)")
    if one:
        console.print(f"  (separate runs in the table: {one['rt_p50_ms']:.3f} vs "
                      f"{floor['rt_p50_ms']:.3f} ms = "
                      f"{targets['rt_p50_1x1_over_raw_floor_separate_runs']:.2f}x)")
    key = f"throughput_{max_n}x{max_n}_over_serve_handle"
    console.print(f"throughput {max_n}/{max_n}: direct {top['throughput_rps']:.0f}/s vs Serve "
                  f"handle {serve_top['throughput_rps']:.0f}/s = {targets[key]:.1f}x "
                  "(target >= 10x)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "response.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (RESULTS / "response.json").write_text(json.dumps(
        {"rows": rows, "targets": targets, "timed_p50_ms": timed_p50 * 1e3,
         "raw_interleaved_p50_ms": raw_p50 * 1e3,
         "untimed_p50_ms": untimed_p50 * 1e3, "requests_per_client": args.requests},
        indent=2))
    plot(rows, RESULTS / "response.png")
    (RESULTS / "response.txt").write_text(console.export_text())
    console.print(f"wrote {RESULTS}/response.{{csv,json,png,txt}}")
    report_metrics(console, metrics, args)
    return 0


def report_metrics(console, metrics: dict, args) -> int:
    """The metrics on/off table, its ratio against the 5% target, and its result files."""
    from rich.table import Table

    rows = []
    for arm in ("on", "off"):
        rt, spans = metrics[arm]["rt"], metrics[arm]["spans"]
        rows.append({"metrics": arm, "requests": len(rt), "rounds": len(spans),
                     "rt_p50_ms": pct(rt, 0.5) * 1e3, "rt_p99_ms": pct(rt, 0.99) * 1e3,
                     "rt_mean_ms": statistics.fmean(rt) * 1e3,
                     "throughput_rps": len(rt) / sum(spans)})
    on, off = rows
    # paired by round (a round on and its neighbour off ran seconds apart): the median of
    # the per-round p50 ratios, less sensitive to this shared machine's drift
    n = on["requests"] // on["rounds"]
    paired = [pct(metrics["on"]["rt"][k * n:(k + 1) * n], 0.5)
              / pct(metrics["off"]["rt"][k * n:(k + 1) * n], 0.5) for k in range(on["rounds"])]
    ratio = {"rt_p50_on_over_off": on["rt_p50_ms"] / off["rt_p50_ms"],
             "rt_p50_on_over_off_paired_median": statistics.median(paired),
             "throughput_on_over_off": on["throughput_rps"] / off["throughput_rps"]}
    table = Table(title="Metrics cost: NOOP over the direct path, 1 client / 1 replica, one "
                        f"run, {on['rounds']} alternating rounds per arm (ms; requests/s)")
    for col in ("metrics", "requests", "RT p50", "RT p99", "RT mean", "throughput"):
        table.add_column(col, justify="left" if col == "metrics" else "right")
    for r in rows:
        table.add_row(r["metrics"], str(r["requests"]), f"{r['rt_p50_ms']:.4f}",
                      f"{r['rt_p99_ms']:.4f}", f"{r['rt_mean_ms']:.4f}",
                      f"{r['throughput_rps']:.0f}")
    console.print(table)
    overhead = ratio["rt_p50_on_over_off"] - 1
    console.print(f"metrics on/off: RT p50 {ratio['rt_p50_on_over_off']:.3f}x "
                  f"({overhead:+.1%}, target <= +5%); paired by round (median) "
                  f"{ratio['rt_p50_on_over_off_paired_median']:.3f}x; throughput "
                  f"{ratio['throughput_on_over_off']:.3f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    per_round = [{"on_p50_ms": pct(metrics["on"]["rt"][k * n:(k + 1) * n], 0.5) * 1e3,
                  "off_p50_ms": pct(metrics["off"]["rt"][k * n:(k + 1) * n], 0.5) * 1e3,
                  "on_rps": n / metrics["on"]["spans"][k],
                  "off_rps": n / metrics["off"]["spans"][k]}
                 for k in range(on["rounds"])]
    (RESULTS / "response_metrics.json").write_text(json.dumps(
        {"rows": rows, "ratio": ratio, "target_rt_p50_overhead": 0.05, "per_round": per_round,
         "requests_per_round": rows[0]["requests"] // max(1, rows[0]["rounds"]),
         "metrics_only_run": bool(args.metrics_only)}, indent=2))
    (RESULTS / "response_metrics.txt").write_text(console.export_text())
    with open(RESULTS / "response_metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["round", *per_round[0]])
        writer.writeheader()
        writer.writerows({"round": k, **r} for k, r in enumerate(per_round))
    plot_metrics(per_round, ratio, RESULTS / "response_metrics.png")
    console.print(f"wrote {RESULTS}/response_metrics.{{csv,json,png,txt}}")
    return 0


def plot_metrics(per_round: list[dict], ratio: dict, path: Path) -> None:
    """Each round's RT p50 with metrics on and off (the arms alternate), and the ratio: the
    spread between rounds against the difference between arms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = range(len(per_round))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, color in (("on", "#dd8452"), ("off", "#4c72b0")):
        left.plot(rounds, [r[f"{arm}_p50_ms"] * 1e3 for r in per_round], "o-", color=color,
                  label=f"metrics {arm}")
    left.set(xlabel="round", ylabel="RT p50 (µs)", title="NOOP RT p50 per round")
    left.legend()
    right.plot(rounds, [r["on_p50_ms"] / r["off_p50_ms"] for r in per_round], "o",
               color="#55a868")
    right.axhline(1.05, color="#c44e52", linestyle="--", label="target 1.05")
    right.axhline(ratio["rt_p50_on_over_off"], color="#333333",
                  label=f"pooled {ratio['rt_p50_on_over_off']:.3f}x")
    right.set(xlabel="round", ylabel="on / off", title="RT p50 ratio per round")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(rows: list[dict], path: Path) -> None:
    """Stacked mean RT components per configuration (as the paper's Figures 4 and 5), and
    throughput, for strong scaling, weak scaling and the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("strong scaling (direct)", [r for r in rows if r["scaling"] == "strong"]),
              ("weak scaling (direct)", [r for r in rows if r["scaling"] == "weak"]),
              ("baselines", [r for r in rows if r["experiment"] in ("floor", "baseline")])]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    colors = {"communication": "#4c72b0", "service": "#dd8452", "inference": "#55a868"}
    for col, (title, group) in enumerate(groups):
        labels = [f"{r['path']}\n{r['clients']}/{r['services']}" for r in group]
        bottom = [0.0] * len(group)
        ax = axes[0][col]
        for part in PARTS:
            values = [r[f"{part}_mean_ms"] if r[f"{part}_mean_ms"] is not None
                      else (r["rt_mean_ms"] if part == "communication" else 0.0) for r in group]
            ax.bar(labels, values, bottom=bottom, label=part, color=colors[part])
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_title(title)
        ax.set_ylabel("mean RT (ms)")
        if title == "baselines":  # Serve's paths are 100x the others: a log axis shows both
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.01)
            axes[1][col].set_yscale("log")
        ax.tick_params(axis="x", labelsize=8)
        axes[1][col].bar(labels, [r["throughput_rps"] for r in group], color="#8172b3")
        axes[1][col].set_ylabel("throughput (requests/s)")
        axes[1][col].tick_params(axis="x", labelsize=8)
    axes[0][0].legend()
    fig.suptitle("Experiment 2: NOOP response time (clients/services); raw rows have no split")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
