"""The run timeline: a waterfall of a run's calls against time, as trace viewers draw one.

Each call is a row (per step, in the order its answers were passed on), and its time is split
into what it was doing:

* **queued**: waiting for a slot under ``max_concurrency`` / ``per_model_concurrency``
  (``moakit.wait.queue_s``), before its first attempt;
* **rate limited**: waiting for a requests/tokens-per-minute budget (``moakit.wait.rate_s``);
* **in flight**: an attempt running at the provider (a failed attempt in red);
* **waiting to retry**: the backoff or Retry-After wait after a failed attempt;
* **reused**: served from the trace store, no time at a provider (drawn as a thin mark);
* a black tick where a streamed answer's first text arrived (``gen_ai.response.time_to_first_chunk``).

Above each step's calls, a grey bar spans the step. The subtitle says where the time and the
money went: each step's share of the run's wall time and of its cost. A batch's timeline has
one row per run, its calls drawn over one another (darker where several were in flight).

Read from ``TraceStore.calls()``, ``attempts()``, ``steps()`` and ``call_timing()`` (or from a
run in flight): the views only add up durations and costs, they estimate nothing.
"""

from __future__ import annotations

from typing import Any, Sequence

from .html import as_float, as_int, money

PHASES = ["step", "queued", "rate limited", "in flight", "failed attempt", "waiting to retry", "reused"]
COLORS = ["#d9d9d9", "#bdbdbd", "#9e9ac8", "#1f5fa8", "#c62828", "#f0a04b", "#2e7d32"]
MEANS = {
    "step": "the step, from its start to its end",
    "queued": "waiting for a free slot (max_concurrency / per_model_concurrency) before the first attempt",
    "rate limited": "waiting for a requests- or tokens-per-minute budget",
    "in flight": "an attempt running at the provider, from request to answer",
    "failed attempt": "an attempt that failed (its error in the tree)",
    "waiting to retry": "the backoff (or the provider's Retry-After) after a failed attempt",
    "reused": "served from the trace store: no time at a provider, not paid for",
}


def _label(c: dict, repeated: set) -> str:
    return f"{c['agent']}#{as_int(c['sample']) or 0}" if c["agent"] in repeated else str(c["agent"])


def _repeated(calls: Sequence[dict]) -> set:
    return {c["agent"] for c in calls if (as_int(c.get("sample")) or 0) > 0}


def call_segments(c: dict, attempts: Sequence[dict], origin: int, row: str, **extra) -> list[dict]:
    """The pieces of one call's time (see the module's docstring), in seconds since ``origin``."""
    s = lambda ns: (int(ns) - origin) / 1e9  # noqa: E731
    base = {"row": row, "agent": c["agent"], "model": c["model"], "step": c["step"],
            "tokens": f"{as_int(c['input_tokens']) or 0:,} in, {as_int(c['output_tokens']) or 0:,} out",
            "cost": money(c["cost_usd"]) if not c["cached"] else "$0 (reused)", "error": c["error"] or "",
            **extra}
    start, end = as_int(c["start_ns"]), as_int(c["end_ns"])
    if start is None or end is None:
        return []
    out = []
    if c["cached"]:
        return [{**base, "phase": "reused", "t0": s(start), "t1": s(end), "seconds": 0.0}]
    queue, rate = as_float(c.get("queue_s")) or 0.0, as_float(c.get("rate_s")) or 0.0
    if rate:
        out.append({**base, "phase": "rate limited", "t0": s(start) - queue - rate, "t1": s(start) - queue,
                    "seconds": rate})
    if queue:
        out.append({**base, "phase": "queued", "t0": s(start) - queue, "t1": s(start), "seconds": queue})
    for a in sorted(attempts, key=lambda a: a["attempt"]):
        a0, a1 = s(a["start_ns"]), s(a["end_ns"])
        out.append({**base, "phase": "failed attempt", "t0": a0, "t1": a1, "seconds": a1 - a0,
                    "error": a.get("error") or ""})
        wait = as_float(a.get("retry_wait_s"))
        if wait:
            out.append({**base, "phase": "waiting to retry", "t0": a1, "t1": a1 + wait, "seconds": wait,
                        "error": a.get("error") or ""})
    last = as_int(c.get("last_attempt_start_ns")) or start
    if attempts and as_int(c.get("last_attempt_start_ns")) is None:  # a failed call: its last attempt is a child too
        last = max(as_int(a["end_ns"]) or start for a in attempts)
    phase = "failed attempt" if c["error"] else "in flight"
    out.append({**base, "phase": phase, "t0": s(last), "t1": s(end), "seconds": (end - last) / 1e9})
    ttft = as_float(c.get("ttft_s"))
    if ttft is not None:
        out.append({**base, "phase": "first token", "t0": s(last) + ttft, "t1": s(last) + ttft, "seconds": ttft})
    return out


def run_segments(data) -> tuple[list[dict], list[str]]:
    """(segments, row order) of one run: a bar per step, then its calls."""
    calls = data.calls
    starts = [as_int(x) for x in [data.run.get("start_ns")] + [c["start_ns"] for c in calls]
              + [s.get("start_ns") for s in data.steps] if as_int(x)]
    if not starts:
        return [], []
    origin = min(starts)
    repeated = _repeated(calls)
    by_call: dict[str, list] = {}
    for a in data.attempts:
        by_call.setdefault(a["call_span_id"], []).append(a)
    segs, order = [], []
    for i in data.step_indexes():
        st = data.step(i)
        head = f"step {i} · {st['step']}"
        order.append(head)
        s0, s1 = as_int(st.get("start_ns")), as_int(st.get("end_ns"))
        step_calls = data.step_calls(i)
        if s0 is None and step_calls:
            s0 = min(as_int(c["start_ns"]) - int((as_float(c.get("queue_s")) or 0) * 1e9) for c in step_calls)
        if s1 is None and step_calls:
            s1 = max(as_int(c["end_ns"]) for c in step_calls)
        if s0 is not None and s1 is not None:
            cost = sum(as_float(c["cost_usd"]) or 0.0 for c in step_calls if not c["cached"])
            segs.append({"row": head, "phase": "step", "t0": (s0 - origin) / 1e9, "t1": (s1 - origin) / 1e9,
                         "seconds": (s1 - s0) / 1e9, "agent": "", "model": "", "step": st["step"],
                         "tokens": f"{len(step_calls)} calls", "cost": money(cost), "error": st.get("error") or ""})
        for c in step_calls:
            row = f"{i} · {_label(c, repeated)}"
            if row not in order:
                order.append(row)
            segs += call_segments(c, by_call.get(c["span_id"], ()), origin, row)
    return segs, order


def batch_segments(datas: Sequence[Any], numbers: Sequence[int]) -> tuple[list[dict], list[str]]:
    """(segments, row order) of many runs: one row per run (``#n pipeline``), its calls on it."""
    starts = [as_int(d.run.get("start_ns")) for d in datas if as_int(d.run.get("start_ns"))]
    starts += [as_int(c["start_ns"]) for d in datas for c in d.calls if as_int(c["start_ns"])]
    if not starts:
        return [], []
    origin = min(starts)
    segs, order = [], []
    for n, d in zip(numbers, datas):
        row = f"#{n} {d.run.get('pipeline') or ''}".strip()
        order.append(row)
        by_call: dict[str, list] = {}
        for a in d.attempts:
            by_call.setdefault(a["call_span_id"], []).append(a)
        for c in d.calls:
            segs += call_segments(c, by_call.get(c["span_id"], ()), origin, row)
    return segs, order


def where_it_went(data) -> list[str]:
    """Lines saying where a run's time and money went: each step's share of the wall time and
    of the cost, and the time its calls spent waiting."""
    wall = data.elapsed_s()
    total = sum(as_float(c["cost_usd"]) or 0.0 for c in data.calls if not c["cached"])
    parts = []
    for i in data.step_indexes():
        st = data.step(i)
        d = as_float(st.get("duration_s"))
        if d is None or not wall:
            continue
        cost = sum(as_float(c["cost_usd"]) or 0.0 for c in data.calls if c["step_index"] == i and not c["cached"])
        money_part = f", {cost / total:.0%} of the cost" if total > 0 else ""
        parts.append(f"{st['step']} {d:.1f} s ({d / wall:.0%}{money_part})")
    lines = []
    if wall:
        lines.append(f"{wall:.1f} s in all: " + "; ".join(parts) if parts else f"{wall:.1f} s in all")
    queued = sum(as_float(c.get("queue_s")) or 0.0 for c in data.calls)
    retry = sum(as_float(a.get("retry_wait_s")) or 0.0 for a in data.attempts)
    waits = []
    if queued:
        waits.append(f"{queued:.1f} s queued for a slot")
    if retry:
        waits.append(f"{retry:.1f} s waiting to retry")
    if waits:
        lines.append("calls spent " + " and ".join(waits) + " (summed over calls)")
    unpriced = data.totals()["calls_unpriced"]
    if unpriced:
        lines.append(f"cost {money(total) if total else 'unknown'}: {unpriced} calls without a price")
    else:
        lines.append(f"cost {money(total)}" + ("" if total else " (free: the embedded model, or every call reused)"))
    return lines


def timeline_chart(segments: list[dict], order: list[str], *, title: str, subtitle: Sequence[str] = (),
                   x_title: str = "seconds since the run started"):
    """The waterfall (an altair chart, the width of the cell, zoomable along time)."""
    import altair as alt
    import pandas as pd

    if not segments:
        return None
    df = pd.DataFrame(segments)
    span = max(1e-3, float(df["t1"].max() - min(0.0, df["t0"].min())))
    df["t1"] = df[["t1", "t0"]].max(axis=1)
    df["t1_drawn"] = df["t1"].where(df["t1"] - df["t0"] >= span / 300, df["t0"] + span / 300)
    df["duration"] = df["seconds"].round(3)
    df["start"] = df["t0"].round(3)
    rows = len(order)
    y = alt.Y("row:N", sort=order, title=None, axis=alt.Axis(labelLimit=240, labelFontSize=11),
              scale=alt.Scale(paddingInner=0.25 if rows < 200 else 0.05))
    tips = [alt.Tooltip("row:N", title="row"), alt.Tooltip("phase:N", title="what the call was doing"),
            alt.Tooltip("step:N", title="step"), alt.Tooltip("agent:N", title="agent"),
            alt.Tooltip("model:N", title="model"),
            alt.Tooltip("start:Q", title="started at (s since start)", format=".3f"),
            alt.Tooltip("duration:Q", title="for (seconds)", format=".3f"),
            alt.Tooltip("tokens:N", title="tokens"), alt.Tooltip("cost:N", title="cost (USD)"),
            alt.Tooltip("error:N", title="error")]
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    bars = alt.Chart(df[df["phase"] != "first token"]).mark_bar(opacity=0.85).encode(
        x=alt.X("t0:Q", title=x_title), x2="t1_drawn:Q", y=y,
        color=alt.Color("phase:N", scale=alt.Scale(domain=PHASES, range=COLORS),
                        legend=alt.Legend(orient="bottom", title=None, direction="horizontal")),
        tooltip=tips).add_params(zoom)
    layers = [bars]
    if (df["phase"] == "first token").any():
        layers.append(alt.Chart(df[df["phase"] == "first token"]).mark_tick(color="black", thickness=2).encode(
            x="t0:Q", y=y, tooltip=[alt.Tooltip("row:N", title="row"),
                                    alt.Tooltip("duration:Q", title="first text after (s)", format=".3f")]))
    height = max(60, min(16 * rows, 2400))
    return alt.layer(*layers).properties(
        width="container", height=height,
        title=alt.TitleParams(title, subtitle=list(subtitle), anchor="start", subtitleColor="#555"))


def _ticks(lo: float, hi: float, n: int = 8) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    import math

    span = max(hi - lo, 1e-9)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step + 1e-9) + 1)]


def timeline_svg(segments: list[dict], order: list[str], *, title: str, subtitle: Sequence[str] = (),
                 x_title: str = "seconds since the run started", width: int = 900) -> str | None:
    """The same waterfall as :func:`timeline_chart`, written as SVG directly: the fallback for
    front ends without a Vega renderer (a saved notebook in nbconvert's HTML, GitHub). Each bar
    carries an SVG ``<title>``, so browsers still show what it is on hover. Drawn here rather
    than by vl-convert because a batch has one bar per call and phase, and rendering hundreds of
    bars through Vega takes seconds where writing them takes milliseconds."""
    from .html import esc as e

    if not segments:
        return None
    lo = min(0.0, min(float(s["t0"]) for s in segments))
    hi = max(max(float(s["t1"]) for s in segments), lo + 1e-3)
    rows = len(order)
    row_h = max(2.0, min(16.0, 2400.0 / max(rows, 1)))
    label_w = 170 if rows <= 400 else 0
    top = 34 + 14 * len(subtitle)
    plot_w = width - label_w - 20
    plot_h = row_h * rows
    legend_y = top + plot_h + 50
    height = legend_y + 24
    x = lambda t: label_w + (float(t) - lo) / (hi - lo) * plot_w  # noqa: E731
    y_of = {r: top + i * row_h for i, r in enumerate(order)}
    color = dict(zip(PHASES, COLORS))
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height:.0f}' "
           f"viewBox='0 0 {width} {height:.0f}' font-family='sans-serif' font-size='11'>",
           f"<text x='4' y='16' font-size='13' font-weight='bold'>{e(title)}</text>"]
    for k, line in enumerate(subtitle):
        out.append(f"<text x='4' y='{31 + 14 * k}' fill='#555'>{e(line)}</text>")
    for t in _ticks(lo, hi):
        xt = x(t)
        out.append(f"<line x1='{xt:.1f}' x2='{xt:.1f}' y1='{top}' y2='{top + plot_h:.1f}' stroke='#e6e6e6' stroke-width='0.6'/>"
                   f"<text x='{xt:.1f}' y='{top + plot_h + 13:.1f}' text-anchor='middle' fill='#555'>{t:g}</text>")
    out.append(f"<text x='{label_w + plot_w / 2:.0f}' y='{top + plot_h + 28:.1f}' text-anchor='middle' "
               f"fill='#333'>{e(x_title)}</text>")
    if label_w:
        for r, yr in y_of.items():
            if row_h >= 8:
                out.append(f"<text x='{label_w - 6}' y='{yr + row_h * 0.72:.1f}' text-anchor='end'>"
                           f"{e(r if len(r) <= 28 else r[:27] + '…')}</text>")
    pad = row_h * (0.12 if rows < 200 else 0.03)
    min_w = plot_w / 300
    for s in segments:
        yr = y_of.get(s["row"])
        if yr is None:
            continue
        tip = (f"{s['row']} · {s['phase']} · step {s['step']} · {s['agent'] or '-'} ({s['model'] or '-'})\n"
               f"started at {float(s['t0']):.3f} s, for {float(s['seconds']):.3f} s · {s['tokens']} · {s['cost']}"
               + (f"\n{s['error']}" if s.get("error") else ""))
        x0 = x(s["t0"])
        if s["phase"] == "first token":
            out.append(f"<line x1='{x0:.1f}' x2='{x0:.1f}' y1='{yr + pad:.1f}' y2='{yr + row_h - pad:.1f}' "
                       f"stroke='black' stroke-width='2'><title>{e(tip)}</title></line>")
            continue
        w = max(x(max(s["t1"], s["t0"])) - x0, min_w)
        out.append(f"<rect x='{x0:.1f}' y='{yr + pad:.1f}' width='{w:.1f}' height='{max(row_h - 2 * pad, 1):.1f}' "
                   f"fill='{color.get(s['phase'], '#999')}' fill-opacity='0.85'><title>{e(tip)}</title></rect>")
    lx = label_w
    for p in PHASES:
        out.append(f"<rect x='{lx}' y='{legend_y - 9}' width='10' height='10' fill='{color[p]}'/>"
                   f"<text x='{lx + 14}' y='{legend_y}'><title>{e(MEANS[p])}</title>{e(p)}</text>")
        lx += 24 + 6.2 * len(p)
    out.append("</svg>")
    return "".join(out)


class HasTimeline:
    """A view with a timeline: it gives :meth:`timeline_args` (segments, row order and titles, or
    None before the first call); the chart and its SVG fallback are drawn from them."""

    def timeline_args(self):  # pragma: no cover - every view with a timeline defines it
        raise NotImplementedError

    def timeline_chart(self):
        args = self.timeline_args()
        return None if args is None else timeline_chart(args[0], args[1], **args[2])

    def timeline_svg(self) -> str | None:
        args = self.timeline_args()
        return None if args is None else timeline_svg(args[0], args[1], **args[2])
