"""A picture of the Grafana dashboard hpcray ships, drawn from a real run's metrics.

    python docs/metrics/dashboard_preview.py [--load-s 75] [--out-dir docs/images]

Grafana is in none of the package registries this project installs from, so it cannot render
its own dashboard here. This script draws docs/metrics/grafana-dashboard.json instead, from
the same data Grafana would read:

1. a local run (`hpcray.submit`) with two `noop` services and a short stage of `sleep` tasks;
2. Debian's `prometheus` scraping the run's metrics endpoint every second, with the
   configuration docs/metrics.md tells a site to write (the run's token file, file_sd);
3. a thread that sends requests at changing rates (steady, ramp, pipelined burst, quiet) and
   a few calls of a method that does not exist, which the replicas count as errors;
4. each panel's PromQL, Grafana's variables filled in, evaluated over the load's window with
   Prometheus' `query_range`, drawn with matplotlib at the panel's `gridPos`.

Writes <out-dir>/metrics-dashboard.png (1600x1000) and <out-dir>/metrics-prometheus.png, a
chromium-headless-shell screenshot of Prometheus' own graph page for the request rate. The
run, Prometheus and its data live in a temporary directory: the run is cancelled and the
directory removed at the end, whatever happened. The run's secrets are read from its files
at run time (Prometheus gets the token file's path) and never printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# the run's processes import the same hpcray as this script
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)

import hpcray  # noqa: E402
from hpcray.errors import HpcrayError  # noqa: E402
from hpcray.metrics.plotting import pyplot  # noqa: E402

DASHBOARD = REPO / "docs" / "metrics" / "grafana-dashboard.json"
SCRAPE_S = 1
# Grafana's $__rate_interval is at least 4 scrape intervals; replicas and clients write their
# numbers every 2 s, so a 10 s window keeps the rates from stepping with those writes
RATE_INTERVAL = "10s"
STAGE_SLEEP_S = 5
STAGE_IN_FLIGHT = 3
GPU_TOOLS = ("nvidia-smi", "rocm-smi", "xpu-smi")
# Grafana's classic palette, in its order
COLORS = ("#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
          "#705DA0", "#37872D", "#FADE2A", "#447EBC", "#C15C17")
BG, PANEL, BORDER, TEXT, MUTED = "#111217", "#181b1f", "#2b2f36", "#ccccdc", "#8e8e9e"

WORKFLOW = """\
name: dashboard-preview
allocation: {{nodes: 1, walltime: 20m}}
ray: {{object_store_memory: 100000000, teardown_grace: 5}}
endpoints: {{token: true}}
services:
  - {{name: echo, deployment: noop, replicas: 2, resources: {{cpus: 0.05}}}}
  - {{name: ping, deployment: noop, replicas: 1, resources: {{cpus: 0.05}}}}
stages:
  - name: sleepers
    command: [sleep, "{sleep}"]
    each: {{items: {items}}}
    resources: {{cpus: 0.25}}
    max_in_flight: {in_flight}
driver: {{command: sleep 3600}}
"""


def log(message: str) -> None:
    """Progress on stderr, with the wall clock: the run takes minutes."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def wait_for(what: str, check: Callable[[], Any], timeout: float,
             detail: Callable[[], str] = lambda: "") -> Any:
    """Poll `check` until it returns something true; a gate, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s. {detail()}")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the load ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    """A stretch of the load from `start` (a fraction of its duration): requests/s to `echo`
    and to `ping`, the share of echo's requests sent to a method that does not exist, and
    whether echo's go in pipelined batches (so that requests queue on its replicas)."""

    start: float
    echo: float
    ping: float
    errors: float = 0.0
    pipelined: bool = False


PHASES = (Phase(0.0, 30, 10), Phase(0.15, 120, 10), Phase(0.3, 300, 25, 0.02),
          Phase(0.45, 800, 25, pipelined=True), Phase(0.58, 15, 0), Phase(0.72, 150, 40, 0.1),
          Phase(0.88, 60, 10))
BATCH = 32  # requests of one pipelined batch, all in flight at once


class Load:
    """Requests from one thread, paced by PHASES, so that every service panel has shape."""

    def __init__(self, clients: dict[str, Any], duration: float) -> None:
        self.clients, self.duration = clients, duration
        self.stop = threading.Event()
        self.sent = self.refused = self.failed = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _call(self, service: str, method: str) -> None:
        try:
            self.clients[service].call(method, {"n": self.sent}, timeout=30)
        except HpcrayError:
            if method == "echo":
                self.failed += 1
            else:
                self.refused += 1
        self.sent += 1

    def _run(self) -> None:
        try:
            start = last = time.monotonic()
            due = {"echo": 0.0, "ping": 0.0}
            error_due = 0.0
            while not self.stop.is_set():
                now = time.monotonic()
                if now - start >= self.duration:
                    return
                phase = [p for p in PHASES if p.start <= (now - start) / self.duration][-1]
                dt, last = now - last, now
                due["echo"] += phase.echo * dt
                due["ping"] += phase.ping * dt
                while phase.pipelined and due["echo"] >= BATCH:
                    due["echo"] -= BATCH
                    self.sent += len(self.clients["echo"].call_many(
                        "echo", range(BATCH), window=BATCH, timeout=30))
                while not phase.pipelined and due["echo"] >= 1:
                    due["echo"] -= 1
                    error_due += phase.errors
                    self._call("echo", "echo")
                    if error_due >= 1:
                        error_due -= 1
                        self._call("echo", "no_such_method")
                while due["ping"] >= 1:
                    due["ping"] -= 1
                    self._call("ping", "noop")
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


# -- Prometheus -------------------------------------------------------------------------------
class Prometheus:
    """Debian's prometheus on a free loopback port, its data in `home`, scraping the run as
    docs/metrics.md tells a site to (one file_sd file per run, the run's token file)."""

    def __init__(self, home: Path, run_dir: Path, endpoints: dict[str, Any]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise SystemExit("prometheus is not installed (Debian: apt-get install prometheus)")
        url, token_file = endpoints["metrics"], endpoints["http_auth"]["token_file"]
        runs = home / "hpcray-runs"
        runs.mkdir(parents=True)
        (runs / f"{run_dir.name}.json").write_text(json.dumps(
            [{"targets": [url.split("/")[2]], "labels": {"run": run_dir.name}}]))
        config = home / "prometheus.yml"
        config.write_text(f"""\
global: {{scrape_interval: {SCRAPE_S}s, evaluation_interval: {SCRAPE_S}s}}
scrape_configs:
  - job_name: hpcray
    metrics_path: /metrics
    authorization: {{credentials_file: {token_file}}}
    file_sd_configs: [{{files: ["{runs}/*.json"]}}]
  - job_name: ray
    scrape_interval: 5s
    http_sd_configs:
      - url: {url.replace('/metrics', '/ray-targets')}
        refresh_interval: 30s
        authorization: {{type: Bearer, credentials_file: {token_file}}}
""")
        self.log = home / "prometheus.log"
        self.api = f"http://127.0.0.1:{free_port()}"
        with self.log.open("w") as err:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
                 f"--web.listen-address={self.api.split('//')[1]}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=err)

    def get(self, path: str, **params: Any) -> Any:
        """One call of the HTTP API: its `data`."""
        url = f"{self.api}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as reply:
            body = json.loads(reply.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus: {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; [] while prometheus is not answering yet."""
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.tail()}")
        try:
            return list(self.get("/api/v1/query", query=expr)["result"])
        except (OSError, urllib.error.URLError):
            return []

    def tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


# -- drawing the dashboard --------------------------------------------------------------------
@dataclass
class Series:
    label: str
    times: list[float]
    values: list[float]


def variables(model: dict[str, Any], run: str) -> dict[str, str]:
    """Values for the dashboard's variables: each query variable at its All value (the
    dashboard's default), and Grafana's built-in intervals for a 1 s step."""
    values = {"__rate_interval": RATE_INTERVAL, "__interval": f"{SCRAPE_S}s", "run": run,
              "__range": "5m", "datasource": "prometheus"}
    for var in model.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            values[var["name"]] = var.get("allValue") or ".*"
    return values


def expand(expr: str, values: dict[str, str]) -> str:
    """Grafana's `$name`, `${name}` and `${name:format}` replaced by their values."""
    def one(m: re.Match[str]) -> str:
        return values.get(m.group(1) or m.group(2), m.group(0))

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def legend(fmt: str | None, metric: dict[str, str]) -> str:
    if not fmt:
        labels = ", ".join(f'{k}="{v}"' for k, v in metric.items() if k != "__name__")
        return f"{metric.get('__name__', '')}{{{labels}}}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt).strip()


def panel_series(prom: Prometheus, panel: dict[str, Any], values: dict[str, str],
                 start: float, end: float) -> list[Series]:
    out = []
    for target in panel.get("targets", []):
        if target.get("hide"):
            continue
        data = prom.get("/api/v1/query_range", query=expand(target["expr"], values),
                        start=f"{start:.3f}", end=f"{end:.3f}", step=f"{SCRAPE_S}s")
        for r in data["result"]:
            out.append(Series(legend(target.get("legendFormat"), r["metric"]),
                              [float(t) for t, _ in r["values"]],
                              [float(v) for _, v in r["values"]]))
    return out


def _short(v: float, suffixes: tuple[str, ...] = ("", " K", " M", " B", " T"),
           base: float = 1000.0) -> str:
    i = 0
    while abs(v) >= base and i < len(suffixes) - 1:
        v, i = v / base, i + 1
    return f"{v:.3g}{suffixes[i]}"


def fmt_value(v: float, unit: str | None) -> str:
    """A value as Grafana shows it for the panel's unit."""
    if not math.isfinite(v):
        return str(v)
    if unit == "reqps":
        return f"{_short(v)} req/s"
    if unit == "s":
        if v == 0:
            return "0 s"
        for scale, name in ((1e-6, "µs"), (1e-3, "ms"), (1.0, "s")):
            if abs(v) < scale * 1000:
                return f"{v / scale:.3g} {name}"
        return f"{v / 60:.3g} min"
    if unit == "percent":
        return f"{v:.3g}%"
    if unit == "percentunit":
        return f"{100 * v:.3g}%"
    if unit == "bytes":
        return _short(v, (" B", " KiB", " MiB", " GiB", " TiB"), 1024.0)
    return _short(v)


def empty_reason(panel: dict[str, Any]) -> str:
    """Why a panel has no data on this machine, where that is known."""
    exprs = " ".join(t.get("expr", "") for t in panel.get("targets", []))
    if "gpu" in exprs:
        found = [t for t in GPU_TOOLS if shutil.which(t)]
        return (f"{found[0]} found no GPU" if found else
                "no GPU on this machine\n(none of nvidia-smi, rocm-smi, xpu-smi)")
    if "stage" in exprs:
        return "no stage in this run"
    return "nothing in this window"


def flat_reason(panel: dict[str, Any]) -> str:
    """Why a panel's series are 0 throughout, where that is known."""
    exprs = " ".join(t.get("expr", "") for t in panel.get("targets", []))
    if "in_flight" in exprs:
        return ("0 throughout: noop's handlers take under 100 µs, so a replica runs them\n"
                "on its socket thread and no request waits on it\n"
                "(requests still in the socket's buffer are not counted)")
    return "0 throughout"


class Canvas:
    """A 1600x1000 figure laid out like Grafana: a 24-column grid of `gridPos` units."""

    def __init__(self, model: dict[str, Any], width: int = 1600, height: int = 1000) -> None:
        self.plt = pyplot()
        self.w, self.h = width, height
        self.fig = self.plt.figure(figsize=(width / 100, height / 100), dpi=100, facecolor=BG)
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in model["panels"])
        self.top, self.margin, self.gap = 58, 8, 4  # px
        self.col = (width - 2 * self.margin) / 24
        self.row = (height - self.top - self.margin) / rows

    def box(self, pos: dict[str, int]) -> tuple[float, float, float, float]:
        """A gridPos as (left, bottom, width, height) in pixels from the bottom left."""
        left = self.margin + pos["x"] * self.col + self.gap / 2
        top = self.top + pos["y"] * self.row + self.gap / 2
        w, h = pos["w"] * self.col - self.gap, pos["h"] * self.row - self.gap
        return left, self.h - top - h, w, h

    def axes(self, left: float, bottom: float, w: float, h: float) -> Any:
        ax = self.fig.add_axes((left / self.w, bottom / self.h, w / self.w, h / self.h))
        ax.set_facecolor(PANEL)
        return ax

    def text_width(self, text: str, size: float) -> float:
        """Pixels that `text` takes at `size` points, measured by the renderer."""
        t = self.fig.text(0, 0, text, fontsize=size)
        width = float(t.get_window_extent(self.fig.canvas.get_renderer()).width)
        t.remove()
        return width

    def header(self, title: str, subtitle: str) -> None:
        self.fig.text(self.margin / self.w, 1 - 20 / self.h, title, color=TEXT, fontsize=14,
                      fontweight="bold", va="center")
        self.fig.text(self.margin / self.w, 1 - 42 / self.h, subtitle, color=MUTED,
                      fontsize=8.5, va="center")

    def row_title(self, panel: dict[str, Any]) -> None:
        left, bottom, _, h = self.box(panel["gridPos"])
        self.fig.text(left / self.w, (bottom + h / 2) / self.h, "\u25be " + panel["title"],
                      color=TEXT, fontsize=10, fontweight="bold", va="center")

    def frame(self, panel: dict[str, Any]) -> tuple[float, float, float, float]:
        """The panel's background and title; the box left for its content."""
        left, bottom, w, h = self.box(panel["gridPos"])
        ax = self.axes(left, bottom, w, h)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(BORDER)
        self.fig.text((left + 8) / self.w, (bottom + h - 12) / self.h, panel["title"],
                      color=TEXT, fontsize=8.5, fontweight="bold", va="center")
        return left, bottom, w, h - 22

    def no_data(self, box: tuple[float, float, float, float], reason: str) -> None:
        left, bottom, w, h = box
        cx, cy = (left + w / 2) / self.w, (bottom + h / 2) / self.h
        self.fig.text(cx, cy + 8 / self.h, "No data", color=TEXT, fontsize=11,
                      ha="center", va="center")
        self.fig.text(cx, cy - 14 / self.h, reason, color=MUTED, fontsize=8,
                      ha="center", va="top", linespacing=1.3)

    def note(self, box: tuple[float, float, float, float], text: str) -> None:
        """A line of explanation over the middle of a panel's plot."""
        left, bottom, w, h = box
        self.fig.text((left + w / 2) / self.w, (bottom + h * 0.6) / self.h, text, color=MUTED,
                      fontsize=8, ha="center", va="center", linespacing=1.3)

    def stat(self, box: tuple[float, float, float, float], series: list[Series],
             unit: str | None) -> None:
        """Stat and gauge panels: each series' last value as big text, as Grafana does."""
        left, bottom, w, h = box
        n = len(series)
        for i, s in enumerate(series):
            last = next((v for v in reversed(s.values) if math.isfinite(v)), math.nan)
            cx = (left + w * (i + 0.5) / n) / self.w
            self.fig.text(cx, (bottom + h * 0.55) / self.h, fmt_value(last, unit),
                          color=COLORS[i % len(COLORS)], fontsize=22, fontweight="bold",
                          ha="center", va="center")
            self.fig.text(cx, (bottom + h * 0.2) / self.h, s.label, color=MUTED, fontsize=8,
                          ha="center", va="center")

    def timeseries(self, box: tuple[float, float, float, float], series: list[Series],
                   panel: dict[str, Any], window: tuple[float, float]) -> None:
        """Lines with a light fill (fillOpacity), stacked where the panel stacks, the legend
        under the plot (Grafana's list legend), the y axis in the panel's unit."""
        from matplotlib import dates
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        custom, unit = defaults.get("custom", {}), defaults.get("unit")
        stacked = custom.get("stacking", {}).get("mode", "none") != "none"
        alpha = custom.get("fillOpacity", 10) / 100
        left, bottom, w, h = box
        # legend columns as wide as the longest label, packed to the left as Grafana does
        col_w = 32 + max(self.text_width(s.label, 7) for s in series)
        ncol = max(1, min(len(series), int((w - 16) // col_w)))
        legend_h = 13 * math.ceil(len(series) / ncol) + 4
        ax = self.axes(left + 58, bottom + legend_h + 16, w - 70, h - legend_h - 22)
        ax.set_facecolor(PANEL)
        below: dict[float, float] = {}
        for i, s in enumerate(series):
            color = COLORS[i % len(COLORS)]
            t = [datetime.fromtimestamp(x, timezone.utc) for x in s.times]
            if stacked:
                base = [below.get(x, 0.0) for x in s.times]
                top = [b + (v if math.isfinite(v) else 0.0)
                       for b, v in zip(base, s.values, strict=True)]
                below.update(zip(s.times, top, strict=True))
                ax.fill_between(t, base, top, color=color, alpha=max(alpha, 0.25), lw=0)
                ax.plot(t, top, color=color, lw=custom.get("lineWidth", 1))
            else:
                ax.plot(t, s.values, color=color, lw=custom.get("lineWidth", 1))
                ax.fill_between(t, 0, s.values, color=color, alpha=alpha, lw=0)
        ax.set_xlim(datetime.fromtimestamp(window[0], timezone.utc),
                    datetime.fromtimestamp(window[1], timezone.utc))
        peak = max((v for s in series for v in s.values if math.isfinite(v)), default=0.0)
        ax.set_ylim(0, None if peak > 0 else 1)  # all 0: a 0-1 axis, as Grafana draws it
        ax.xaxis.set_major_formatter(dates.DateFormatter("%H:%M:%S", tz=timezone.utc))
        # round times, none so near an edge that its label runs into the y axis' labels
        span, ticks = window[1] - window[0], max(2, int(w // 110))
        step = next((n for n in (5, 10, 15, 20, 30, 60, 120, 300) if span / n <= ticks), 600)
        first = math.ceil((window[0] + 0.04 * span) / step) * step
        ax.xaxis.set_major_locator(FixedLocator([
            dates.date2num(datetime.fromtimestamp(x, timezone.utc))
            for x in range(first, int(window[1] - 0.04 * span) + 1, step)]))
        ax.set_axisbelow(True)
        ax.yaxis.set_major_locator(MaxNLocator(4, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_value(v, unit)))
        ax.tick_params(colors=MUTED, labelsize=7, length=0, pad=3)
        ax.grid(color=BORDER, lw=0.6)
        for spine in ax.spines.values():
            spine.set_visible(False)
        # Grafana's list legend: row by row, in the order of the targets
        for i, s in enumerate(series):
            r, c = divmod(i, ncol)
            x, y = left + 8 + c * col_w, bottom + legend_h - 8 - 13 * r
            self.fig.add_artist(Line2D([x / self.w, (x + 12) / self.w], [y / self.h] * 2,
                                       color=COLORS[i % len(COLORS)], lw=3,
                                       transform=self.fig.transFigure))
            self.fig.text((x + 17) / self.w, y / self.h, s.label, color=TEXT, fontsize=7,
                          va="center")

    def save(self, path: Path) -> None:
        self.fig.savefig(path, dpi=100, facecolor=BG)
        self.plt.close(self.fig)


def draw_dashboard(prom: Prometheus, run: str, window: tuple[float, float], out: Path) -> list[str]:
    """Every panel of the shipped dashboard at its gridPos; returns the titles of the panels
    with no data (each says why in the picture)."""
    model = json.loads(DASHBOARD.read_text())
    values = variables(model, run)
    canvas = Canvas(model)
    build = prom.get("/api/v1/status/buildinfo").get("version", "?").split("+")[0]
    start, end = (datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%S") for t in window)
    canvas.header(
        f"{model['title']}: a preview drawn from Prometheus, not by Grafana",
        f"The panels of docs/metrics/grafana-dashboard.json, drawn with matplotlib by "
        f"docs/metrics/dashboard_preview.py from Prometheus {build} scraping a local run every "
        f"{SCRAPE_S} s under load.   service = All, $__rate_interval = {RATE_INTERVAL}, "
        f"{start}-{end} UTC")
    empty = []
    for panel in model["panels"]:
        if panel["type"] == "row":
            canvas.row_title(panel)
            continue
        box = canvas.frame(panel)
        series = panel_series(prom, panel, values, *window)
        if not any(math.isfinite(v) for s in series for v in s.values):
            canvas.no_data(box, empty_reason(panel))
            empty.append(panel["title"])
        elif panel["type"] in ("stat", "gauge"):
            canvas.stat(box, series, panel.get("fieldConfig", {}).get("defaults", {}).get("unit"))
        else:
            canvas.timeseries(box, series, panel, window)
            if all(v == 0 for s in series for v in s.values if math.isfinite(v)):
                canvas.note(box, flat_reason(panel))
    canvas.save(out)
    return empty


def screenshot(prom: Prometheus, expr: str, range_s: float, out: Path, home: Path) -> None:
    """Prometheus' own graph page for `expr`, as chromium-headless-shell renders it."""
    shell = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if shell is None:
        raise SystemExit("chromium-headless-shell is not installed (Debian package of that name)")
    params = {"g0.expr": expr, "g0.tab": "0", "g0.stacked": "0", "g0.show_exemplars": "0",
              "g0.range_input": f"{math.ceil(range_s)}s"}
    url = f"{prom.api}/graph?{urllib.parse.urlencode(params)}"
    out.unlink(missing_ok=True)
    done = subprocess.run(
        [shell, "--no-sandbox", "--headless", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={home / 'chromium'}", "--virtual-time-budget=10000",
         f"--screenshot={out}", "--window-size=1400,900", url],
        capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium: exit {done.returncode}: {done.stderr[-2000:]}")


# -- the whole ------------------------------------------------------------------------------
def preview(load_s: float, out_dir: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="hpcray-dashboard-"))
    run_dir: Path | None = None
    prom: Prometheus | None = None
    load: Load | None = None
    clients: dict[str, Any] = {}
    began = time.monotonic()
    try:
        items = list(range(math.ceil(load_s * STAGE_IN_FLIGHT / STAGE_SLEEP_S)))
        workflow = home / "dashboard-preview.yaml"
        workflow.write_text(WORKFLOW.format(sleep=STAGE_SLEEP_S, items=items,
                                            in_flight=STAGE_IN_FLIGHT))
        sub = hpcray.submit(workflow, run_root=home / "runs")
        run_dir = sub.run_dir
        log(f"submitted {sub.run_id}; waiting for its services")

        def ready() -> bool:
            st = hpcray.status(run_dir)
            return "services_ready" in st.times or st.finished

        wait_for("services ready", ready, 300, lambda: hpcray.logs(run_dir)[-3000:])
        if hpcray.status(run_dir).state != "running":
            raise RuntimeError(f"the run is not running: {hpcray.logs(run_dir)[-3000:]}")
        endpoints = json.loads((run_dir / "endpoints.json").read_text())

        prom = Prometheus(home, run_dir, endpoints)
        log(f"prometheus on {prom.api}; waiting until it scrapes the run")
        wait_for("prometheus scraping the run",
                 lambda: [r for r in prom.query('up{job="hpcray"}') if r["value"][1] == "1"],
                 60, prom.tail)

        # a client in the run (HPCRAY_RUN_DIR), as a driver: its communication part is recorded
        os.environ["HPCRAY_RUN_DIR"] = str(run_dir)
        from hpcray.services.direct.client import DirectClient

        for name in ("echo", "ping"):
            direct = endpoints["services"][name]["direct"]
            clients[name] = DirectClient(
                name, addresses={r["replica"]: r["address"] for r in direct["replicas"]},
                token=Path(direct["auth"]["password_file"]).read_bytes().strip())
        load = Load(clients, load_s)
        t0 = time.time()
        log(f"sending load for {load_s:.0f} s")
        load.thread.start()
        load.thread.join(timeout=load_s + 60)
        t1 = time.time()
        if load.thread.is_alive() or load.error is not None:
            raise RuntimeError(f"the load did not finish: {load.error!r}")
        log(f"load done: {load.sent} requests, {load.refused} to a missing method, "
            f"{load.failed} failed")
        window = (t0 - 5, t1 + 6)
        # the replicas' last numbers are written within 2 s and scraped within 1 s after that
        wait_for("prometheus' scrape after the load's end",
                 lambda: [r for r in prom.query('timestamp(up{job="hpcray"})')
                          if float(r["value"][1]) >= window[1]], 30, prom.tail)

        out_dir.mkdir(parents=True, exist_ok=True)
        dashboard = out_dir / "metrics-dashboard.png"
        empty = draw_dashboard(prom, sub.run_id, window, dashboard)
        log(f"wrote {dashboard}; panels without data: {empty or 'none'}")
        shot = out_dir / "metrics-prometheus.png"
        screenshot(prom, f"sum by (service) (rate(hpcray_requests_total[{RATE_INTERVAL}]))",
                   time.time() - window[0], shot, home)
        log(f"wrote {shot}")
    finally:
        if load is not None:
            load.stop.set()
            load.thread.join(timeout=30)
        for client in clients.values():
            client.close()
        if prom is not None:
            prom.stop()
        if run_dir is not None:
            log("cancelling the run")
            try:
                log(f"run {hpcray.cancel(run_dir, wait_s=120).state}")
            except Exception as exc:  # noqa: BLE001 - the temp dir is removed regardless
                log(f"cancelling {run_dir} failed: {exc!r}")
        shutil.rmtree(home, ignore_errors=True)
        log(f"took {time.monotonic() - began:.0f} s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load-s", type=float, default=75, help="seconds of load (default 75)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "docs" / "images")
    args = ap.parse_args(argv)
    preview(args.load_s, args.out_dir)


if __name__ == "__main__":
    main()
