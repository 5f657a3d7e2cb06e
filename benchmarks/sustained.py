"""Sustained load: NOOP at 80% of its measured maximum throughput for a long time, watching
errors, p99 per window, and the memory of every process of the run.

    python benchmarks/sustained.py [--minutes 10] [--share 0.8] [--threads 4]

One run on the local site serves NOOP with 2 replicas (direct path) and no driver. This
process connects as a user's program would, measures the maximum rate with all threads
sending as fast as they can (10 s), then paces the same threads at `share` of it. Per 10 s
window it records requests, errors and p99, and the resident memory of every process of the
run (found by hpcray's teardown marker). Memory growth is measured from the end of the first
minute (warm-up). Writes benchmarks/results/sustained.{csv,png,txt}; with `--share 0` (no
requests: what grows by itself), sustained_idle.{csv,png,txt}.

Request ledgers (hpcray/services/ledger.py): the loaded service's replicas record every
request they execute and each sending thread records every outcome; at the end the two are
reconciled (executed, answered, failed by cause, retried, timed out, lost). Before the
load, the ledger's own cost: NOOP round trips on `bare` (no ledger) and `kept` (ledger on
both ends), 1 replica each, in alternating rounds of the same run; RT p50 of each and their
ratio, in benchmarks/results/ledger_cost.{csv,png,txt} (`--only ledger-cost`: that alone).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import hpcray  # noqa: E402
from benchmarks.results_io import pyplot, save  # noqa: E402
from hpcray.rundir import read_json  # noqa: E402
from hpcray.runtime.teardown import marked_processes  # noqa: E402
from hpcray.services.ledger import ClientLedger, read_executed, reconcile  # noqa: E402

WINDOW_S = 10.0
CALLS_PER_ROUND = 500


NAMES: dict[int, str] = {}


def rss_of_run(cluster: str) -> dict[int, int]:
    out = {}
    for proc in marked_processes(cluster):
        try:
            out[proc.pid] = proc.memory_info().rss
            if proc.pid not in NAMES:
                name = proc.name()  # raylet, gcs_server, ray::ServeReplica:...
                if name.startswith("python"):
                    name = " ".join(Path(a).name for a in proc.cmdline()[1:3])
                NAMES[proc.pid] = name[:60]
        except Exception:  # noqa: BLE001 - gone meanwhile
            continue
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--share", type=float, default=0.8,
                        help="share of the maximum to send; 0: no requests, the run's memory "
                        "with no load (the baseline for what grows by itself)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--cost-rounds", type=int, default=20,
                        help="alternating rounds of the ledger's cost measurement")
    parser.add_argument("--only", choices=("all", "ledger-cost"), default="all",
                        help="ledger-cost: only the ledger's cost (ledger_cost.*)")
    args = parser.parse_args()

    from rich.console import Console

    console = Console(record=True, width=110)
    console.print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python "
                  f"benchmarks/sustained.py {' '.join(sys.argv[1:])}".rstrip())
    with tempfile.TemporaryDirectory(prefix="hpcray-sustained-") as tmp:
        wf = Path(tmp) / "sustained.yaml"
        wf.write_text("name: sustained\nallocation: {nodes: 1, walltime: 2h,"
                      " env: {HPCRAY_LEDGER: 'noop,kept'}}\n"
                      "ray: {object_store_memory: 100000000, teardown_grace: 5}\n"
                      "services:\n  - {name: noop, deployment: noop, replicas: 2,"
                      " resources: {cpus: 0.25}}\n"
                      "  - {name: bare, deployment: noop, resources: {cpus: 0.05}}\n"
                      "  - {name: kept, deployment: noop, resources: {cpus: 0.05}}\n")
        sub = hpcray.submit(wf, run_root=Path(tmp) / "runs")
        try:
            deadline = time.monotonic() + 240
            while "services_ready" not in hpcray.status(sub.run_dir).times:
                if hpcray.status(sub.run_dir).finished or time.monotonic() > deadline:
                    raise SystemExit(hpcray.logs(sub.run_dir)[-3000:])
                time.sleep(0.5)
            cluster = read_json(sub.run_dir / "run.json")["cluster_id"]
            hpcray.connect(sub.run_dir)
            if args.share > 0:
                ledger_cost(args.cost_rounds, console)
            if args.only == "ledger-cost":
                return 0
            handle = hpcray.service("noop")
            clients = [ClientLedger(f"t{k}") for k in range(args.threads)]
            windows = measure(handle, args, cluster, console, clients)
            reconciled = reconcile(clients, read_executed(sub.run_dir, "noop"))
        finally:
            hpcray.cancel(sub.run_dir)
    report(windows, args, console, reconciled)
    return 0


def ledger_cost(rounds: int, console) -> None:
    """RT p50 of NOOP without a ledger and with one on both ends, rounds alternating so that
    the machine's load falls on both alike."""
    bare, kept = hpcray.service("bare"), hpcray.service("kept")
    client = ClientLedger("cost")
    for _ in range(200):  # warm both paths
        bare.call("echo", 1)
        client.call(kept.call, "echo", 1)
    lat: dict[str, list[float]] = {"bare": [], "kept": []}
    rows = []
    for r in range(rounds):
        for name in (("bare", "kept") if r % 2 == 0 else ("kept", "bare")):
            got = []
            for _ in range(CALLS_PER_ROUND):
                start = time.perf_counter()
                if name == "bare":
                    bare.call("echo", 1)
                else:
                    client.call(kept.call, "echo", 1)
                got.append(time.perf_counter() - start)
            got.sort()
            lat[name] += got
            rows.append({"round": r, "service": name, "p50_us": got[len(got) // 2] * 1e6,
                         "p99_us": got[int(len(got) * 0.99)] * 1e6})
    p50 = {n: sorted(v)[len(v) // 2] * 1e6 for n, v in lat.items()}
    lost = [o for o in client.outcomes.values() if o.kind != "answered"]
    console.print(f"ledger cost: NOOP RT p50 {p50['bare']:.0f} us without, {p50['kept']:.0f} us "
                  f"with ledgers on both ends ({p50['kept'] / p50['bare']:.3f}x, "
                  f"{rounds} alternating rounds of {CALLS_PER_ROUND} calls each); "
                  f"{len(lost)} of the ledgered calls not answered")
    save("ledger_cost", rows, console, lambda path: plot_cost(rows, p50, path))
    console.print("python benchmarks/sustained.py, continued: the sustained load")


def plot_cost(rows: list[dict], p50: dict[str, float], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, label in (("bare", "no ledger"), ("kept", "ledgers on both ends")):
        mine = [r for r in rows if r["service"] == name]
        ax.plot([r["round"] for r in mine], [r["p50_us"] for r in mine], marker="o",
                label=f"{label} (p50 {p50[name]:.0f} us)")
    ax.set_xlabel("round")
    ax.set_ylabel("RT p50 (us)")
    ax.set_title("NOOP round trip with and without request ledgers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def measure(handle, args, cluster: str, console, clients: list) -> list[dict]:
    stop = threading.Event()
    lock = threading.Lock()
    lat: list[float] = []
    counts = {"ok": 0, "errors": 0}
    errors: list[str] = []

    def fast() -> None:
        while not stop.is_set():
            handle.call("echo", 1)
            with lock:
                counts["ok"] += 1

    if args.share > 0:
        threads = [threading.Thread(target=fast) for _ in range(args.threads)]
        for t in threads:
            t.start()
        time.sleep(2)
        with lock:
            counts["ok"] = 0
        time.sleep(10)
        with lock:
            peak = counts["ok"] / 10
        stop.set()
        for t in threads:
            t.join()
        rate = peak * args.share
        console.print(f"maximum {peak:.0f} req/s; sustaining {rate:.0f} req/s for "
                      f"{args.minutes:g} min with {args.threads} threads")
    else:
        console.print(f"no load: the run's memory alone for {args.minutes:g} min")
    stop.clear()
    counts.update(ok=0, errors=0)
    interval = args.threads / rate if args.share > 0 else 0.0

    def paced(ledger: ClientLedger) -> None:
        """Each outcome goes into the thread's ledger; the window's counts are a view."""
        nxt = time.monotonic()
        while not stop.is_set():
            nxt += interval
            start = time.perf_counter()
            reply = ledger.call(handle.call, "echo", 1, timeout=10)
            took = time.perf_counter() - start
            with lock:
                if reply is not None:
                    counts["ok"] += 1
                    lat.append(took)
                else:
                    counts["errors"] += 1
                    errors.append(ledger.outcomes[ledger.sent[-1]].detail)
            pause = nxt - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    threads = [threading.Thread(target=paced, args=(clients[k],))
               for k in range(args.threads if interval else 0)]
    for t in threads:
        t.start()
    windows = []
    end = time.monotonic() + args.minutes * 60
    try:
        while time.monotonic() < end:
            time.sleep(WINDOW_S)
            with lock:
                got, lat[:] = sorted(lat), []
                ok, bad = counts["ok"], counts["errors"]
                counts.update(ok=0, errors=0)
            rss = rss_of_run(cluster)
            windows.append({"t_s": len(windows) * WINDOW_S + WINDOW_S, "req_per_s": ok / WINDOW_S,
                            "errors": bad, "p50_ms": got[len(got) // 2] * 1e3 if got else None,
                            "p99_ms": got[int(len(got) * 0.99)] * 1e3 if got else None,
                            "rss_total_mb": sum(rss.values()) / 2**20, "processes": len(rss),
                            "rss": rss})
            w = windows[-1]
            console.print(f"  {w['t_s']:5.0f} s: {w['req_per_s']:6.0f} req/s, errors {bad}, "
                          f"p99 {w['p99_ms'] or 0:.2f} ms, run RSS {w['rss_total_mb']:.0f} MB")
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        console.print(f"first error: {errors[0]}")
    return windows


def report(windows: list[dict], args, console, reconciled) -> None:
    from rich.table import Table

    warm = min(len(windows) - 1, int(60 / WINDOW_S) - 1)
    base, last = windows[warm]["rss"], windows[-1]["rss"]
    growth = {pid: (last[pid] - base[pid]) / base[pid] for pid in base if pid in last}
    worst = max(growth.values()) if growth else 0.0
    grower = max(growth, key=growth.get) if growth else None
    p99 = [w["p99_ms"] for w in windows[warm:] if w["p99_ms"] is not None]
    # a leak keeps growing; an allocator settling grows early and then stops
    series = [w["rss"].get(grower, 0) / 2**20 for w in windows[warm:]]
    mid = len(series) // 2
    halves = (f"{series[mid] - series[0]:+.1f} / {series[-1] - series[mid]:+.1f}"
              if grower is not None and len(series) > 2 else "-")
    for w in windows:
        w["grower_rss_mb"] = w["rss"].get(grower, 0) / 2**20 if grower is not None else None
    errors = sum(w["errors"] for w in windows)
    table = Table(title=f"Sustained NOOP load, {args.minutes:g} min at {args.share:.0%} of the "
                        "maximum" if args.share > 0 else f"NOOP run with no load, "
                        f"{args.minutes:g} min")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in [
            ("requests/s (mean)", f"{sum(w['req_per_s'] for w in windows) / len(windows):.0f}"),
            ("errors", str(errors)),
            ("p99 after warm-up: min / max (ms)",
             f"{min(p99):.2f} / {max(p99):.2f}" if p99 else "- (no load)"),
            ("processes of the run", str(windows[-1]["processes"])),
            ("run RSS after warm-up / at the end (MB)",
             f"{windows[warm]['rss_total_mb']:.0f} / {windows[-1]['rss_total_mb']:.0f}"),
            ("largest growth of one process after warm-up",
             f"{worst:+.1%} ({NAMES.get(grower, grower)}, "
             f"{base.get(grower, 0) / 2**20:.1f} -> {last.get(grower, 0) / 2**20:.1f} MB)"),
            ("its growth in the first / second half after warm-up (MB)", halves),
            *ledger_rows(reconciled),
            ("target", "no errors, p99 stable, every process within 5%")]:
        table.add_row(name, value)
    console.print(table)
    fields = [k for k in windows[0] if k != "rss"]
    save("sustained" if args.share > 0 else "sustained_idle",
         [{k: w[k] for k in fields} for w in windows], console,
         lambda path: plot(windows, path))


def ledger_rows(r) -> list[tuple[str, str]]:
    """The two ledgers reconciled: what the replicas executed against what the threads saw."""
    failed = ", ".join(f"{n} {cause}" for cause, n in r.failed.items()) or "0"
    return [("ledger: sent / executed / answered", f"{r.sent:,} / {r.executed:,} / "
             f"{r.answered:,}"),
            ("ledger: failed explicitly (by cause)", failed),
            ("ledger: retried after a lost replica / timed out / lost",
             f"{len(r.retried)} / {r.timed_out} / {r.lost}"),
            ("ledger: disagreements", "; ".join(r.problems()) or "none")]


def plot(windows: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    t = [w["t_s"] for w in windows]
    a.plot(t, [w["p99_ms"] for w in windows], label="p99")
    a.plot(t, [w["p50_ms"] for w in windows], label="p50")
    a.set_xlabel("s")
    a.set_ylabel("ms")
    a.legend()
    a.set_title("Latency per 10 s window")
    b.plot(t, [w["rss_total_mb"] for w in windows])
    b.set_xlabel("s")
    b.set_ylabel("MB")
    b.set_title("Resident memory of the run's processes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
