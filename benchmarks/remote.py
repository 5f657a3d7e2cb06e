"""Remote endpoints: the handle's overhead over a raw HTTP client, local vs remote vs mixed
throughput with the RT split, and a remote site's link cut under load.

    python benchmarks/remote.py [--requests 400] [--one-way-ms 0.47] [--cut-s 3]
                                [--only link-cut]

A remote site is made on this machine (as root): a network namespace with its own veth link,
a model server inside it behind a proxy that holds each direction's bytes for the paper's
cloud-node latency (0.47 ms each way; this kernel has no netem). "Local" is the same server
on loopback. The handle is hpcray's Federation, the code `hpcray.service(...)` uses for a
service with remote endpoints. Writes benchmarks/results/remote.{csv,png,txt} and the link
cut's figures to benchmarks/results/remote_link_cut.{json,txt} (`--only link-cut`: those
alone).

The link cut is counted with request ledgers (hpcray/services/ledger.py): each client thread
records one outcome per request id it sent, each server records the ids it executed (the
`X-Request-Id` header), and the two are reconciled: lost = timed out + never given an
outcome + answered without any server having executed it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.results_io import RESULTS, pyplot, save  # noqa: E402
from hpcray.remote.federation import Federation, Instance  # noqa: E402
from hpcray.remote.openai import OpenAIEndpoint  # noqa: E402
from hpcray.services.ledger import ANSWERED, read_executed, reconcile  # noqa: E402
from tests.remote.site import (  # noqa: E402
    LEDGER_SERVICE,
    LedgeredLoad,
    executed_file,
    loopback_servers,
    remote_site,
    wait_for,
)

BODY = {"model": "noop", "prompt": "hello", "max_tokens": 4}


def _instance(ep: OpenAIEndpoint) -> Instance:
    return Instance(ep.name, ep.kind, ep.max_concurrency, 1.0, ep.call, ep.stream, ep.probe)


def overhead(url: str, n: int, chunk: int = 50) -> dict:
    """p50 round trip, raw httpx vs the handle, alternating chunks on warm connections."""
    raw = httpx.Client(base_url=url)
    fed = Federation("bench", [_instance(OpenAIEndpoint("remote", url, "noop"))])
    raw_s, handle_s = [], []
    for _ in range(20):  # warm both connections
        raw.post("/completions", json=BODY)
        fed.call("generate", {"prompt": "hello", "max_tokens": 4})
    for _ in range(0, n, chunk):
        for _ in range(chunk):
            t = time.perf_counter()
            reply = raw.post("/completions", json=BODY)
            reply.json()["choices"][0]["text"]
            raw_s.append(time.perf_counter() - t)
        for _ in range(chunk):
            t = time.perf_counter()
            fed.call("generate", {"prompt": "hello", "max_tokens": 4})
            handle_s.append(time.perf_counter() - t)
    fed.close()
    raw.close()
    raw_p50, handle_p50 = statistics.median(raw_s), statistics.median(handle_s)
    return {"raw_p50_ms": raw_p50 * 1e3, "handle_p50_ms": handle_p50 * 1e3,
            "overhead_ms": (handle_p50 - raw_p50) * 1e3,
            "allowed_ms": (0.05 * raw_p50 + 0.0001) * 1e3}


def load(instances: list[Instance], threads: int, n: int) -> dict:
    fed = Federation("bench", instances, probe_s=0.5)
    time.sleep(0.6)  # one probe: the network's share of each link
    results, lock = [], threading.Lock()

    def worker(count: int) -> None:
        for _ in range(count):
            got = fed.call("generate", {"prompt": "x"}, timeout=30)
            with lock:
                results.append(got)

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(n // threads,)) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    fed.close()
    rts = sorted(r.round_trip_s for r in results)
    return {"requests": len(results), "req_per_s": len(results) / wall,
            "p50_ms": rts[len(rts) // 2] * 1e3, "p99_ms": rts[int(len(rts) * 0.99)] * 1e3,
            "inference_ms": statistics.mean(r.inference_s for r in results) * 1e3,
            "communication_ms": statistics.mean(r.round_trip_s - r.inference_s - r.service_s
                                                for r in results) * 1e3,
            "by_instance": {i.name: i.served for i in instances}}


class _Resends(logging.Handler):
    """Counts the federation's resends: a request that never reached an instance's model,
    sent on to another instance under the same id."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "did not take the request" in str(record.msg):
            self.count += 1


CALL_S = 30  # the link cut's endpoint and call timeout


def link_cut(site, near_url: str, ledger_dir: Path, cut_s: float = 3.0, probe_s: float = 0.5,
             threads: int = 8, warm: int = 50) -> dict:
    """8 threads call through `cut_s` seconds of a cut link. The cut starts once both
    instances have answered `warm` requests; the run ends once 'remote' has answered again
    after the restore (and every call in flight has returned). Both servers record into
    `ledger_dir` (executed_file)."""
    # longer than the cut: a request it holds is answered once TCP resends it; a timeout
    # would be counted lost
    near_ep = OpenAIEndpoint("local", near_url, "noop", timeout=CALL_S)
    far_ep = OpenAIEndpoint("remote", site.server.openai(), "noop", timeout=CALL_S)
    fed = Federation(LEDGER_SERVICE, [_instance(near_ep), _instance(far_ep)], probe_s=probe_s)
    far = fed.instances[1]
    resends = _Resends()
    log = logging.getLogger("hpcray.remote")
    level = log.level
    log.addHandler(resends)
    log.setLevel(logging.INFO)
    down = False
    try:
        with LedgeredLoad(fed.call, threads=threads, timeout_s=CALL_S) as load:
            wait_for(lambda: min(load.answered_by()[n] for n in ("local", "remote")) >= warm,
                     60, f"both instances answering {warm} requests")
            cut_wall, cut_mono = time.time(), time.monotonic()
            site.link(up=False)
            down = True
            time.sleep(cut_s)  # the outage's length, the benchmark's parameter
            marked_down = any(event == "cooling" and t >= cut_wall for t, event in far.history)
            up_mono = time.monotonic()
            site.link(up=True)
            down = False
            up_wall = time.time()
            wait_for(lambda: load.answered_since("remote", up_mono), 30,
                     "'remote' answering again after the link came back")
    finally:
        if down:
            site.link(up=True)
        fed.close()
        near_ep.close()
        far_ep.close()
        log.removeHandler(resends)
        log.setLevel(level)
    if load.hung:
        raise RuntimeError(f"link cut: a client thread did not return within {CALL_S + 10} s")
    ledgers, answers = load.ledgers, load.answers
    executed = read_executed(ledger_dir, LEDGER_SERVICE)
    rec = reconcile(ledgers, executed)
    failed_but_executed = sum(1 for ledger in ledgers for rid, o in ledger.outcomes.items()
                              if o.kind != ANSWERED and rid in executed)
    back = [t for t, event in far.history if event == "back" and t >= up_wall]
    summary = rec.summary()
    return {"cut_s": cut_s, "threads": threads, "probe_s": probe_s,
            "sent": summary["sent"], "executed": summary["executed"],
            "answered": summary["answered"], "failed": summary["failed"],
            "failed_but_executed": failed_but_executed,
            "retried": resends.count,
            "executed_twice": len(rec.retried) + len(rec.executed_twice_unexplained),
            "timed_out": summary["timed_out"], "lost": summary["lost"],
            "problems": summary["problems"],
            "answered_by": dict(load.answered_by()),
            # sent to the remote before the cut, answered by it after the restore (TCP resent
            # what the cut held up)
            "held_through_cut": sum(1 for sent, done, who in answers
                                    if who == "remote" and sent < cut_mono and done > up_mono),
            "marked_down_during_cut": marked_down,
            "remote_back_after_s": back[0] - up_wall if back else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--one-way-ms", type=float, default=0.47)
    parser.add_argument("--cut-s", type=float, default=3.0, help="how long the link is down")
    parser.add_argument("--only", choices=("all", "link-cut"), default="all",
                        help="link-cut: only the link cut (remote_link_cut.{json,txt}); the "
                             "throughput files are left as they are")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=120)
    rows: list[dict] = []
    ledger_dir = Path(tempfile.mkdtemp(prefix="hpcray-remote-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, ledger_dir, ignore_errors=True)
        start = stack.enter_context(loopback_servers())
        site = stack.enter_context(
            remote_site(args.one_way_ms, ledger=executed_file(ledger_dir, "remote")))
        near_url = start(ledger=executed_file(ledger_dir, "local")).openai()
        far_url = site.server.openai()
        if args.only == "all":
            console.print("handle overhead ...")
            over = overhead(far_url, args.requests)
            for threads in (1, 4, 16):
                for name, urls in (("local", [near_url]), ("remote", [far_url]),
                                   ("mixed", [near_url, far_url])):
                    instances = [_instance(OpenAIEndpoint(("local", "remote")[u == far_url],
                                                          u, "noop", max_concurrency=16))
                                 for u in urls]
                    r = load(instances, threads, args.requests * 2)
                    rows.append({"instances": name, "threads": threads, **{
                        k: v for k, v in r.items() if k != "by_instance"},
                        "by_instance": " ".join(f"{k}={v}"
                                                for k, v in r["by_instance"].items())})
        console.print("link cut ...")
        cut = link_cut(site, near_url, ledger_dir, cut_s=args.cut_s)

    if args.only == "all":
        table = Table(title=f"Remote endpoints (remote = a network namespace + "
                            f"{args.one_way_ms} ms each way; local = loopback)")
        for col in ("instances", "threads", "req/s", "p50 ms", "p99 ms", "communication ms",
                    "inference ms", "served by"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(r["instances"], str(r["threads"]), f"{r['req_per_s']:.0f}",
                          f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                          f"{r['communication_ms']:.2f}", f"{r['inference_ms']:.2f}",
                          r["by_instance"])
        console.print(table)
        verdict = "met" if over["overhead_ms"] <= over["allowed_ms"] else "NOT met"
        console.print(f"handle over raw httpx, same remote endpoint, p50: "
                      f"{over['handle_p50_ms']:.3f} ms vs {over['raw_p50_ms']:.3f} ms: "
                      f"+{over['overhead_ms']:.3f} ms (allowed {over['allowed_ms']:.3f} ms: "
                      f"{verdict})")
    line = link_cut_line(cut)
    console.print(line)
    if args.only == "all":
        save("remote", rows, console, lambda path: plot(rows, path))
    command = " ".join(["python", "benchmarks/remote.py", *sys.argv[1:]])
    measured = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "remote_link_cut.json").write_text(json.dumps(
        {"command": command, "measured": measured, "one_way_ms": args.one_way_ms, **cut},
        indent=2) + "\n")
    (RESULTS / "remote_link_cut.txt").write_text(f"{measured}: {command}\n{line}\n")
    console.print(f"wrote {RESULTS}/remote_link_cut.{{json,txt}}")
    return 0 if not cut["problems"] and cut["lost"] == 0 else 1


def link_cut_line(cut: dict) -> str:
    failed = ", ".join(f"{n} {cause}" for cause, n in sorted(cut["failed"].items())) or "0"
    back = cut["remote_back_after_s"]
    return (f"link cut {cut['cut_s']:g} s under load ({cut['threads']} threads), reconciled "
            f"with both servers' ledgers: sent {cut['sent']}, executed {cut['executed']}, "
            f"answered {cut['answered']}, failed explicitly {failed} (of those executed "
            f"{cut['failed_but_executed']}), retried on the other instance {cut['retried']}, "
            f"executed twice {cut['executed_twice']}, timed out {cut['timed_out']}, lost "
            f"{cut['lost']}; problems: {'; '.join(cut['problems']) or 'none'}; "
            f"{cut['held_through_cut']} held up by the cut and answered after it; remote "
            + (f"serving again {back:.2f} s after the link came back (probe period "
               f"{cut['probe_s']} s)" if back is not None else "never came back"))


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in ("local", "remote", "mixed"):
        mine = [r for r in rows if r["instances"] == name]
        a.plot([r["threads"] for r in mine], [r["req_per_s"] for r in mine], marker="o",
               label=name)
    a.set_xlabel("client threads")
    a.set_ylabel("requests/s")
    a.set_xscale("log", base=2)
    a.legend()
    a.set_title("Throughput")
    ones = [r for r in rows if r["threads"] == 1]
    b.bar([r["instances"] for r in ones], [r["communication_ms"] for r in ones],
          label="communication")
    b.bar([r["instances"] for r in ones], [r["inference_ms"] for r in ones],
          bottom=[r["communication_ms"] for r in ones], label="inference + server")
    b.set_ylabel("ms per request (1 thread)")
    b.set_title("RT split")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
