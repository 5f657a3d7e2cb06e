"""`report.html`: one self-contained page per run, what a scientist opens after it. The
timeline is inline SVG (a tooltip per bar), the figures are PNGs inlined as data: URIs; no
script, stylesheet or font is fetched, so the page opens from a laptop after the allocation
and its network are gone. Sizes are bounded: at most MAX_BARS bars are drawn (the rest are
counted on the page), and the pipeline's figures are report.pipeline_plots' few."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from hpcray.views.report import Item, Report, colours, lanes, redact, stack

MAX_BARS = 6000
WIDTH = 1300
LABEL_W = 170
ROW_H = 14      # one sub-row of a lane, in pixels
LANE_GAP = 8


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _tint(colour: str) -> str:
    """The group's colour halfway to white: an actor's lifetime, its calls in full colour."""
    r, g, b = (int(colour[k:k + 2], 16) for k in (1, 3, 5))
    return "#{:02x}{:02x}{:02x}".format(*((c + 255) // 2 for c in (r, g, b)))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def timeline_svg(rep: Report, nodes: list[str]) -> tuple[str, int]:
    """The timeline as SVG, and how many bars were left out to keep the page bounded."""
    colour = colours(rep)
    rows = lanes(rep, nodes)
    end = max((i.end for i in rep.items), default=rep.t0 + 1)
    span = max(end - rep.t0, 1e-3)
    scale = (WIDTH - LABEL_W - 20) / span
    parts: list[str] = []
    y = 24
    drawn = left_out = 0
    for node, lane in rows:
        placed = stack([i for i in rep.items if i.node == node and lane in i.lanes])
        depth = max((s for _, s in placed), default=0) + 1
        height = depth * ROW_H
        parts.append(f'<text x="4" y="{y + min(height, 3 * ROW_H) / 2 + 4:.0f}" '
                     f'class="lane">{_e(node)} {_e(lane)}</text>'
                     f'<line x1="{LABEL_W}" x2="{WIDTH - 10}" y1="{y + height + LANE_GAP / 2}" '
                     f'y2="{y + height + LANE_GAP / 2}" stroke="#ddd"/>')
        for item, slot in placed:
            if drawn >= MAX_BARS:
                left_out += 1
                continue
            drawn += 1
            parts.append(_bar(item, slot, y, scale, rep.t0, colour[item.group]))
        y += height + LANE_GAP
    ticks = []
    step = _tick_step(span)
    t = 0.0
    while t <= span:
        x = LABEL_W + t * scale
        ticks.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="18" y2="{y}" stroke="#eee"/>'
                     f'<text x="{x:.1f}" y="12" class="tick">{t:g}s</text>')
        t += step
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" id="timeline" width="{WIDTH}" '
           f'height="{y + 4}" viewBox="0 0 {WIDTH} {y + 4}">'
           '<style>.lane{font:11px sans-serif}.tick{font:10px sans-serif;fill:#666}</style>'
           + "".join(ticks) + "".join(parts) + "</svg>")
    return svg, left_out


def _tick_step(span: float) -> float:
    for step in (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600):
        if span / step <= 12:
            return float(step)
    return 7200.0


def _bar(item: Item, slot: int, y: float, scale: float, t0: float, colour: str) -> str:
    x = LABEL_W + (item.start - t0) * scale
    w = max((item.end - item.start) * scale, 1.0)
    top = y + slot * ROW_H
    tip = (f"{item.label} ({item.group}, {item.kind}) on {item.node}: "
           f"{item.start - t0:.2f}s to {item.end - t0:.2f}s"
           + (f", {item.calls} call(s)" if item.kind == "actor" else "")
           + (f", {item.cpus:g} CPU" if item.cpus else "")
           + (f", {item.gpus:g} GPU" if item.gpus else "")
           + (f", {item.state}" if item.state else ""))
    fill = _tint(colour) if item.kind == "actor" else colour
    out = (f'<g><title>{_e(tip)}</title><rect x="{x:.1f}" y="{top + 1}" width="{w:.1f}" '
           f'height="{ROW_H - 2}" fill="{fill}"/>')
    for start, end in item.call_spans:
        cx = LABEL_W + (start - t0) * scale
        out += (f'<rect x="{cx:.1f}" y="{top + 2}" width="{max((end - start) * scale, 1.0):.1f}"'
                f' height="{ROW_H - 4}" fill="{colour}"/>')
    return out + "</g>"


def _pair(mean: float | None, p50: float | None) -> str:
    return " / ".join("-" if v is None else f"{v * 1e3:.2f}" for v in (mean, p50))


def _png(path: str | Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}"/>' \
           f'<figcaption>{_e(alt)}</figcaption></figure>'


def _table(head: list[str], rows: list[list[object]]) -> str:
    if not rows:
        return "<p>none</p>"
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>"
                      for row in rows) + "</table>")


def page(rep: Report, nodes: list[str]) -> str:
    colour = colours(rep)
    svg, left_out = timeline_svg(rep, nodes)
    legend = "".join(f'<span class="key"><i style="background:{c}"></i>{_e(g)}</span>'
                     for g, c in colour.items())
    held = (f"{rep.held_cpu_s:.0f} CPU-s, {rep.held_gpu_s:.0f} GPU-s over "
            f"{rep.run_window_s:.1f} s" if rep.run_window_s else "-")
    used = (f"{rep.used_cpu_s:.1f} CPU-s ({rep.used_cpu_s / rep.held_cpu_s:.1%}), "
            if rep.held_cpu_s else f"{rep.used_cpu_s:.1f} CPU-s, ")
    used += (f"{rep.used_gpu_s:.1f} GPU-s ({rep.used_gpu_s / rep.held_gpu_s:.1%})"
             if rep.held_gpu_s else f"{rep.used_gpu_s:.1f} GPU-s")
    ev = rep.events
    source = (f"Ray's events: {ev.get('tasks_kept', 0)} task(s) of {ev.get('tasks_seen', 0)}, "
              f"{ev.get('actors_kept', 0)} actor(s) of {ev.get('actors_seen', 0)}, "
              f"{ev.get('actor_calls_kept', 0)} actor call(s) of "
              f"{ev.get('actor_calls_seen', 0)} kept" if ev else
              "no Ray events were kept for this run: stage records only")
    parts = [
        f"<h1>{_e(rep.run)}</h1>",
        f"<p>{rep.nodes} node(s), {rep.cpus:g} CPUs, {rep.gpus:g} GPUs. The run held {held}; "
        f"its tasks and actors reserved {used}. {_e(source)}.</p>",
        "<h2>Timeline</h2>",
        "<p>One lane per node and GPU; a bar per task, a pale bar per actor's lifetime with "
        "its method calls in full colour. Hover a bar for what it is.</p>",
        svg, f'<p class="legend">{legend}</p>',
        f"<p>{left_out} bar(s) not drawn (page bounded at {MAX_BARS}).</p>" if left_out
        else "",
    ]
    use_png = Path(rep.timeline).parent / "use.png" if rep.timeline else None
    if use_png and use_png.exists():
        parts.append(_png(use_png, "CPUs and GPUs reserved over time, against what was held"))
    parts += ["<h2>What it belongs to</h2>",
              _table(["group", "items", "CPU-s", "GPU-s"],
                     [[g.group, g.items, f"{g.cpu_s:.1f}", f"{g.gpu_s:.1f}"]
                      for g in rep.groups]),
              "<h2>Service replicas: BT</h2>",
              _table(["service", "replica", "node", "launch s", "init s", "publish s",
                      "alive s", "from"],
                     [[r.service, r.replica, r.node or "?", _seconds(r.launch_s),
                       _seconds(r.init_s), _seconds(r.publish_s), _seconds(r.alive_s),
                       r.source] for r in rep.replicas]),
              "<h2>Service calls: RT split</h2>",
              _table(["service", "calls", "communication ms (mean / p50)",
                      "service ms (mean / p50)", "inference ms (mean / p50)"],
                     [[r.service, r.calls, _pair(r.communication_mean_s, r.communication_p50_s),
                       _pair(r.service_mean_s, r.service_p50_s),
                       _pair(r.inference_mean_s, r.inference_p50_s)] for r in rep.rt]),
              "<h2>Stages</h2>",
              _table(["stage", "attempts", "failed", "median task s", "busy CPU-s"],
                     [[s.stage, s.attempts, s.failed, _seconds(s.task_s_median),
                       f"{s.busy_cpu_s:.1f}"] for s in rep.stages])]
    if rep.plots:
        parts.append("<h2>The pipeline's figures</h2>")
        parts += [_png(p, Path(p).name) for p in rep.plots]
    style = ("body{font:14px sans-serif;margin:16px;max-width:1340px}"
             "table{border-collapse:collapse;margin:6px 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
             ".key{margin-right:14px;white-space:nowrap}"
             ".key i{display:inline-block;width:12px;height:12px;margin-right:4px}"
             "figure{margin:8px 0}img{max-width:100%}")
    return ("<!doctype html><html><head><meta charset=\"utf-8\">"
            f"<title>hpcray report: {_e(rep.run)}</title><style>{style}</style></head><body>"
            + "".join(parts)
            + f"<p><small>written {time.strftime('%Y-%m-%d %H:%M:%S')} by hpcray report"
            "</small></p></body></html>")


def write_html(rep: Report, path: Path, secrets: list[str] | None = None) -> Path:
    """The page, with none of `secrets` (the run's tokens) in it."""
    nodes = list(dict.fromkeys([i.node for i in rep.items if i.node != "?"]))
    nodes = sorted(rep.node_gpus) if rep.node_gpus else nodes
    path.write_text(redact(page(rep, nodes), secrets or []))
    return path
