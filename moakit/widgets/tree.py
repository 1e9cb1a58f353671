"""The pipeline tree (one run: run -> steps -> calls) and the batch view (many runs), each with
its timeline.

:class:`PipelineTree` shows one run: a header (what ran, its status, calls paid and reused,
tokens, cost, time, the query and the answer), then each step with what it did (Shuffle's new
order, Dropout's kept and dropped responses, Rank's choice) and its calls, **in the order their
answers were passed to the next step**: agent, model, sample, tokens, time, cost, reused calls
marked, errors in red, and each call's prompt and output folded in an HTML ``<details>``. Below
it, the run's timeline (:mod:`moakit.widgets.timeline`).

:class:`BatchView` shows many runs (a ``run_batch`` DataFrame, trace ids, or a whole store):
totals, a sortable and filterable table of **every** run (numbered from 1, as its labels count),
the tree of the run opened, and the batch's timeline.

Both are :class:`~moakit.widgets.display.View` s: live with a kernel (pages turn, tables sort,
runs open, and with ``moakit.run(..., live=True)`` the tree fills in while the run is in flight)
and a static copy with every run's summary wherever there is no kernel. State for code:
``summary``, ``steps``, ``rows`` (tree); ``summary``, ``rows``, ``table`` (batch).

Data come from :class:`~moakit.store.store.TraceStore` (``runs``, ``steps``, ``calls``,
``attempts``, ``call_timing``, ``call_contents``) or from the recorder's events; nothing here
computes a statistic.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from .display import Part, View
from .html import (BORDER, FONT, GREEN, MUTED, NUM, PRE, RED, REUSED, REUSED_MEANS, TABLE, TD, TH, as_float, as_int,
                   badge, clip, cost, count, esc, isnull, money, seconds, short)
from .table import Column, Table
from .timeline import HasTimeline
from .trace import TraceData, query_text

__all__ = ["PipelineTree", "BatchView", "tree_text", "step_action", "money", "seconds"]

TREE_KEY = [
    ("#", "the position at which the step passed the call's answer on: the order the next step was shown"),
    ("agent", "the agent's name in the pipeline (agent#2: sample 2 of an agent repeated in one step)"),
    ("model", "the model the agent ran on"),
    ("tokens in→out", "input and output tokens of the call"),
    ("time", "from the call's first attempt to its answer, retries and their waits included; the wait for a "
             "free slot is not (the timeline shows it)"),
    ("cost", "US dollars paid for the call: $0 for the embedded model and for reused calls, – when the "
             "provider's price is unknown"),
    (REUSED, REUSED_MEANS),
]


def label_of(agent: str, sample: int, repeated: bool) -> str:
    return f"{agent}#{sample}" if repeated else agent


def labels_by_span(calls) -> dict[str, str]:
    """span id -> the agent label a reader knows it by (``agent#sample`` for repeated agents)."""
    repeated = {c["agent"] for c in calls if (as_int(c["sample"]) or 0) > 0}
    return {c["span_id"]: label_of(c["agent"], as_int(c["sample"]) or 0, c["agent"] in repeated) for c in calls}


def step_action(step: dict, labels: dict[str, str]) -> str:
    """One line saying what a step did, in the reader's terms (agents, not span ids)."""
    kind = step["step"]
    ins = [labels.get(s, s[-8:]) for s in (step.get("responses_in") or [])]
    outs = [labels.get(s, s[-8:]) for s in (step.get("responses_out") or [])]
    perm, kept, choice = step.get("permutation"), step.get("kept"), step.get("rank_choice")
    if step.get("in_flight"):
        return "in flight"
    if kind == "Shuffle" and isinstance(perm, list):
        order = ", ".join(f"{i + 1}. {ins[p] if p < len(ins) else p}" for i, p in enumerate(perm))
        return f"permutation {perm}: new order {order}"
    if kind in ("Dropout", "Sample", "Take", "Filter") and isinstance(kept, list):
        dropped = [a for i, a in enumerate(ins) if i not in set(kept)]
        kept_names = [ins[i] if i < len(ins) else str(i) for i in kept]
        return (f"kept {len(kept)} of {len(ins)}: {', '.join(kept_names) or '(none)'}"
                + (f"; dropped: {', '.join(dropped)}" if dropped else "; dropped none"))
    if kind == "Rank" and isinstance(choice, list):
        picked = ", ".join(f"position {i + 1} ({ins[i] if i < len(ins) else '?'})" for i in choice)
        how = "" if step.get("rank_parsed") is not False else " (the reply held no usable ranking: the first kept)"
        return f"chose {picked} of {len(ins)} shown{how}"
    if kind == "Map":
        return f"mapped {len(ins)} responses"
    if ins:
        return f"{len(ins)} responses in → {len(outs)} out"
    return f"{len(outs)} responses out"


# ---- the text form (the CLI's ``moakit traces show``) --------------------------------------
def tree_text(store, trace_id: str) -> str:
    """The tree as plain text: run, then each step (with what it did), then its calls in the
    order their answers were passed on."""
    data = TraceData.from_store(store, store.resolve_trace_id(trace_id))
    run, t = data.run, data.totals()
    labels = labels_by_span(data.calls)
    lines = [f"run {data.trace_id} {run.get('pipeline') or ''} calls={t['calls']} {REUSED}={t['calls_reused']} "
             f"cost={money(run.get('cost_usd'))} output={short(run.get('output'), 80)!r}"]
    if run.get("error"):
        lines.append(f"  ERROR {run['error']}")
    for i in data.step_indexes():
        st = data.step(i)
        err = f" ERROR {st['error']}" if st.get("error") else ""
        lines.append(f"  step {i} {st['step']} {as_float(st.get('duration_s')) or 0:.2f}s: "
                     f"{step_action(st, labels)}{err}")
        for c in data.step_calls(i):
            flag = f" {REUSED}" if c["cached"] else ""
            err = f" ERROR {c['error']}" if c["error"] else ""
            lines.append(f"    {labels[c['span_id']]} {c['model']} {as_int(c['input_tokens'])}->"
                         f"{as_int(c['output_tokens'])} tok {as_float(c['latency_s']) or 0:.2f}s "
                         f"{money(c['cost_usd'])}{flag}{err}")
    return "\n".join(lines)


def _pager(label, turn):
    """◀ previous / label / next ▶ buttons; ``turn(-1)`` or ``turn(+1)`` changes the page."""
    import ipywidgets as w

    prev = w.Button(description="◀ previous", layout=w.Layout(width="110px"))
    nxt = w.Button(description="next ▶", layout=w.Layout(width="110px"))
    prev.on_click(lambda _b: turn(-1))
    nxt.on_click(lambda _b: turn(+1))
    box = w.HBox([prev, label, nxt])
    box.add_class("moakit-pager")
    return box


def key_html(items) -> str:
    rows = "".join(f"<div><b>{esc(k)}</b>: {esc(v)}</div>" for k, v in items)
    return (f"<details class='moakit-key' style='font-size:11px;color:{MUTED};margin:4px 0 0 16px'>"
            f"<summary style='cursor:pointer'>what the columns mean</summary>"
            f"<div style='border-left:2px solid {BORDER};padding-left:6px'>{rows}</div></details>")


class PipelineTree(HasTimeline, View):
    """The tree of one run. ``PipelineTree(store, trace_id)`` (a unique prefix of the trace id
    is enough; ``store`` may be a path); a live view passes ``data=`` (a
    :class:`~moakit.widgets.trace.TraceData` it fills in).

    State: ``summary`` (the run's totals as shown), ``steps`` (each step, its calls count and
    what it did), ``rows`` (the calls on the pages shown, in the order shown). ``page_size``
    calls are shown per step; :meth:`set_page` turns a step's page."""

    css_class = "moakit-tree"

    def __init__(self, store=None, trace_id: str | None = None, *, page_size: int = 25, max_chars: int = 20_000,
                 data: TraceData | None = None, timeline: bool = True):
        from ..store import open_store

        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.page_size, self.max_chars, self.show_timeline = page_size, max_chars, timeline
        self.store = open_store(store) if (data is None or store is not None) else None
        if data is None:
            data = TraceData.from_store(self.store, self.store.resolve_trace_id(trace_id))
        self.data = data
        self.pages: dict[int, int] = {}
        self.lock = threading.RLock()
        self.parts_widgets: dict[str, Any] = {}

    @property
    def trace_id(self) -> str | None:
        return self.data.trace_id

    def set_data(self, data: TraceData, store=None) -> None:
        """Show other records of the run (a run in flight that ended: its stored records)."""
        with self.lock:
            self.data = data
            if store is not None:
                self.store = store
        self.redraw()

    # ---- state ---------------------------------------------------------------------------
    @property
    def labels(self) -> dict[str, str]:
        return labels_by_span(self.data.calls)

    @property
    def summary(self) -> dict[str, Any]:
        d, r = self.data, self.data.run
        t = d.totals()
        return {"trace_id": d.trace_id, "pipeline": r.get("pipeline"), "query": r.get("query"),
                "seed": r.get("seed"), "ok": not r.get("error") and (d.ended or not d.live),
                "in_flight": d.live and not d.ended, "error": r.get("error"), "output": r.get("output"),
                "steps": len(d.step_indexes()), **t,
                "cost_usd": float(as_float(r.get("cost_usd")) if not isnull(r.get("cost_usd")) else t["cost_usd"]),
                "duration_s": d.elapsed_s()}

    @property
    def steps(self) -> list[dict[str, Any]]:
        out = []
        labels = self.labels
        for i in self.data.step_indexes():
            s = self.data.step(i)
            n = sum(1 for c in self.data.calls if c["step_index"] == i)
            out.append({"step_index": i, "step": s["step"], "duration_s": as_float(s.get("duration_s")), "calls": n,
                        "error": s.get("error"), "action": step_action(s, labels), "page": self.pages.get(i, 0),
                        "pages": max(1, math.ceil(n / self.page_size)), "permutation": s.get("permutation"),
                        "kept": s.get("kept"), "rank_choice": s.get("rank_choice"),
                        "in_flight": bool(s.get("in_flight"))})
        return out

    def page_calls(self, step_index: int) -> list[dict]:
        calls = self.data.step_calls(step_index)
        p = self.pages.get(step_index, 0)
        return calls[p * self.page_size:(p + 1) * self.page_size]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The calls shown (the current page of every step), in the order shown."""
        out = []
        labels = self.labels
        for i in self.data.step_indexes():
            passed = self.data.passed_on(i)
            for c in self.page_calls(i):
                out.append({"span_id": c["span_id"], "step_index": i, "step": c["step"], "agent": c["agent"],
                            "label": labels[c["span_id"]], "model": c["model"], "sample": as_int(c["sample"]),
                            "passed_on": passed.get(c["span_id"]), "attempts": as_int(c["attempts"]),
                            "input_tokens": as_int(c["input_tokens"]), "output_tokens": as_int(c["output_tokens"]),
                            "latency_s": as_float(c["latency_s"]), "cost_usd": as_float(c["cost_usd"]),
                            "reused": bool(c["cached"]), "error": c["error"], "output": c["output"]})
        return out

    def set_page(self, step_index: int, page: int) -> None:
        """Show page ``page`` (0-based, clamped) of a step's calls."""
        n = sum(1 for c in self.data.calls if c["step_index"] == step_index)
        last = max(0, math.ceil(n / self.page_size) - 1)
        self.pages[step_index] = min(max(0, int(page)), last)
        self.redraw()
        self.refresh(["tree"])

    # ---- HTML ------------------------------------------------------------------------------
    def header_html(self) -> str:
        s = self.summary
        d = self.data
        if s["in_flight"]:
            expected = d.expected_calls()
            of = f" of {expected}" if expected else ""
            status = (f"<span style='color:{MUTED};font-weight:bold'>⏳ running: {s['calls']}{of} calls finished"
                      f"</span>")
        elif s["ok"]:
            status = f"<span style='color:{GREEN};font-weight:bold'>✓ ok</span>"
        else:
            status = f"<span style='color:{RED};font-weight:bold'>✗ failed: {esc(s['error'])}</span>"
        failed = f" · <span style='color:{RED}'>{s['calls_failed']} failed</span>" if s["calls_failed"] else ""
        numbers = (f"<b>{s['calls']}</b> calls ({s['calls_paid']} paid, {s['calls_reused']} {REUSED}{failed}) · "
                   f"<b>{s['input_tokens']:,}</b> input + <b>{s['output_tokens']:,}</b> output tokens · "
                   f"<b>{cost(s['cost_usd'], s['calls_unpriced'])}</b> · {seconds(s['duration_s'])}")
        out = s["output"]
        stream = next((v for v in d.streaming.values()), None) if s["in_flight"] else None
        if out is not None:
            answer = (f"<details open><summary><b>answer</b> ({len(out):,} characters)</summary>"
                      f"<div style='{PRE}'>{esc(clip(out, self.max_chars))}</div></details>")
        elif stream is not None:
            answer = (f"<div><b>answer so far</b> <span style='color:{MUTED}'>(streaming from {esc(stream['agent'])})"
                      f"</span></div><div class='moakit-stream' style='{PRE}'>{esc(clip(stream['text'], self.max_chars))}"
                      f"</div>")
        elif s["in_flight"]:
            answer = f"<div style='color:{MUTED}'>no answer yet</div>"
        else:
            answer = f"<div style='color:{RED}'>no answer</div>"
        tid = esc((d.trace_id or "")[:12]) or "…"
        return (f"<div class='moakit-tree-header' style='{FONT};font-size:13px;line-height:1.45'>"
                f"<div><b>run</b> <code>{tid}</code> · <b>{esc(s['pipeline'] or 'pipeline')}</b> · "
                f"{count(s['steps'], 'step')} · seed {esc(s['seed'])} · {status}</div>"
                f"<div>{numbers}</div>"
                f"<div style='color:{MUTED}'>query: {esc(short(s['query'], 200))}</div>{answer}</div>")

    def step_title_html(self, step: dict) -> str:
        err = f" <span style='color:{RED}'>✗ {esc(step['error'])}</span>" if step["error"] else ""
        calls = f" · {count(step['calls'], 'call')}" if step["calls"] else ""
        took = f" · {seconds(step['duration_s'])}" if step["duration_s"] is not None else ""
        return (f"<div style='font-size:13px;line-height:1.4;margin-top:6px;{FONT}'>"
                f"<b>step {step['step_index']} · {esc(step['step'])}</b>{calls}{took} · "
                f"<span style='color:{MUTED}'>{esc(step['action'])}</span>{err}</div>")

    def calls_html(self, step_index: int) -> str:
        page = self.page_calls(step_index)
        pending = self.pending(step_index)
        if not page and not pending:
            return ""
        if self.store is not None:
            self.data.load_contents(self.store, [c["span_id"] for c in page])
        labels, passed = self.labels, self.data.passed_on(step_index)
        heads = [("#", "right"), ("agent", "left"), ("model", "left"), ("tokens in→out", "right"), ("time", "right"),
                 ("cost", "right"), ("", "left"), ("prompt and output", "left")]
        head = "".join(f"<th style='{TH};text-align:{a}'>{h}</th>" for h, a in heads)
        body = []
        for c in page:
            color = f"color:{RED};" if c["error"] else ""
            badges = []
            if c["cached"]:
                badges.append(badge(REUSED, GREEN, REUSED_MEANS))
            if (as_int(c["attempts"]) or 1) > 1:
                badges.append(f"<span style='color:{MUTED}'>{as_int(c['attempts'])} attempts</span>")
            if as_float(c.get("ttft_s")) is not None:
                badges.append(f"<span style='color:{MUTED}' title='streamed: seconds to the first text'>"
                              f"first text {seconds(c['ttft_s'])}</span>")
            pos = passed.get(c["span_id"])
            tin, tout = as_int(c["input_tokens"]), as_int(c["output_tokens"])
            body.append(
                f"<tr class='moakit-call' style='{color}'>"
                f"<td style='{NUM}'>{pos if pos is not None else '–'}</td>"
                f"<td style='{TD};white-space:nowrap'><b>{esc(labels[c['span_id']])}</b></td>"
                f"<td style='{TD};white-space:nowrap'>{esc(c['model'])}</td>"
                f"<td style='{NUM}'>{'–' if tin is None else f'{tin:,}'}→{'–' if tout is None else f'{tout:,}'}</td>"
                f"<td style='{NUM}'>{seconds(c['latency_s'])}</td><td style='{NUM}'>{money(c['cost_usd'])}</td>"
                f"<td style='{TD}'>{' '.join(badges)}</td>"
                f"<td style='{TD};width:50%'>{self.detail_html(c, self.data.contents.get(c['span_id'], {}))}</td></tr>")
        for agent, text in pending:
            body.append(f"<tr class='moakit-pending' style='color:{MUTED}'><td style='{NUM}'></td>"
                        f"<td style='{TD};white-space:nowrap'>{esc(agent)}</td><td style='{TD}' colspan='5'>"
                        f"⏳ in flight</td><td style='{TD}'>{esc(short(text, 90)) if text else ''}</td></tr>")
        return f"<table style='{TABLE};width:100%'><tr>{head}</tr>{''.join(body)}</table>"

    def pending(self, step_index: int) -> list[tuple[str, str]]:
        """(agent label, text so far) of a step's calls still in flight (a live run)."""
        d = self.data
        if not d.live or d.ended:
            return []
        st = d.step(step_index)
        if not st.get("in_flight"):
            return []
        done = {(c["agent"], as_int(c["sample"]) or 0) for c in d.calls if c["step_index"] == step_index}
        planned = d.planned(step_index)
        repeated = {a for a, s in planned if s > 0}
        streams = {v["agent"]: v["text"] for v in d.streaming.values() if v["step_index"] == step_index}
        return [(label_of(a, s, a in repeated), streams.get(a, "")) for a, s in planned if (a, s) not in done]

    def detail_html(self, c: dict, content: dict) -> str:
        if c["error"]:
            summary = f"<span style='color:{RED}'>✗ {esc(short(c['error'], 90))}</span>"
        else:
            summary = esc(short(c["output"], 90)) or f"<i style='color:{MUTED}'>(empty)</i>"
        parts = []
        if c["error"]:
            parts.append(f"<div style='color:{RED}'><b>error</b></div><div style='{PRE};color:{RED}'>{esc(c['error'])}</div>")
        shown = content.get("input_agents") or []
        if shown:
            order = ", ".join(f"{i}. {esc(a)}" for i, a in enumerate(shown, 1))
            parts.append(f"<div style='color:{MUTED}'>responses shown, in order: {order}</div>")
        msgs = content.get("messages") or []
        for m in msgs:
            parts.append(f"<div style='color:{MUTED}'>{esc(m.get('role'))}</div>"
                         f"<div style='{PRE}'>{esc(clip(m.get('content') or '', self.max_chars))}</div>")
        if not msgs:
            parts.append(f"<div style='color:{MUTED}'>(prompt not recorded)</div>")
        params = [f"{k} {content[k]}" for k in ("temperature", "max_tokens") if content.get(k) is not None]
        if content.get("finish_reasons"):
            params.append(f"finish {', '.join(map(str, content['finish_reasons']))}")
        if content.get("replayed_from"):
            params.append(f"replayed from span {content['replayed_from']}")
        for f in content.get("failed_attempts") or []:
            why = "the provider's Retry-After" if f.get("reason") == "retry-after" else "backoff"
            wait = f", retried after {f['wait_s']:.2f} s ({why})" if f.get("wait_s") is not None else ""
            parts.append(f"<div style='color:{RED};font-size:11px'>attempt {f['attempt']} failed: "
                         f"{esc(short(f.get('error') or '', 160))}{wait}</div>")
        params.append(f"span {c['span_id']}")
        if c["output"] is not None:
            parts.append(f"<div style='color:{MUTED}'>output</div><div style='{PRE}'>"
                         f"{esc(clip(c['output'], self.max_chars))}</div>")
        parts.append(f"<div style='color:{MUTED};font-size:11px'>{esc(' · '.join(params))}</div>")
        return f"<details><summary style='cursor:pointer'>{summary}</summary>{''.join(parts)}</details>"

    def pager_text(self, step_index: int) -> str:
        n = sum(1 for c in self.data.calls if c["step_index"] == step_index)
        p = self.pages.get(step_index, 0)
        lo, hi = p * self.page_size + 1, min(n, (p + 1) * self.page_size)
        return f"calls {lo}–{hi} of {n}"

    def tree_html(self) -> str:
        """The whole tree as static HTML: the pages shown, and in words what the others need."""
        with self.lock:
            out = [self.header_html()]
            for st in self.steps:
                i = st["step_index"]
                pages = f"<div style='color:{MUTED};font-size:11px;margin-left:16px'>{self.pager_text(i)}" \
                        f" (other pages need a running kernel)</div>" if st["pages"] > 1 else ""
                out.append(f"<div style='margin-left:16px'>{self.step_title_html(st)}{self.calls_html(i)}</div>{pages}")
            out.append(key_html(TREE_KEY))
            return (f"<div class='moakit-tree-static' style='border:1px solid {BORDER};padding:6px'>{''.join(out)}"
                    f"</div>")

    # ---- the live widget -------------------------------------------------------------------
    def tree_widget(self):
        import ipywidgets as w

        with self.lock:
            box = self.parts_widgets.get("root")
            if box is None:
                self.parts_widgets["header"] = w.HTML(self.header_html())
                self.parts_widgets["steps"] = w.VBox([])
                self.parts_widgets["key"] = w.HTML(key_html(TREE_KEY))
                self.parts_widgets["step"] = {}
                box = self.parts_widgets["root"] = w.VBox(
                    [self.parts_widgets["header"], self.parts_widgets["steps"], self.parts_widgets["key"]],
                    layout=w.Layout(border=f"1px solid {BORDER}", padding="6px"))
                box.add_class("moakit-tree-live")
                self.draw_steps()
            return box

    def draw_steps(self) -> None:
        import ipywidgets as w

        pw = self.parts_widgets
        kids = []
        for st in self.steps:
            i = st["step_index"]
            parts = pw["step"].get(i)
            if parts is None:
                title, calls = w.HTML(), w.HTML()
                label = w.Label()
                pager = _pager(label, lambda delta, i=i: self.set_page(i, self.pages.get(i, 0) + delta))
                parts = pw["step"][i] = {"title": title, "calls": calls, "label": label, "pager": pager,
                                         "box": w.VBox([title, calls], layout=w.Layout(margin="0 0 0 16px"))}
            title_html, calls_html = self.step_title_html(st), self.calls_html(i)
            if parts["title"].value != title_html:
                parts["title"].value = title_html
            if parts["calls"].value != calls_html:
                parts["calls"].value = calls_html
            want = [parts["title"], parts["calls"]] + ([parts["pager"]] if st["pages"] > 1 else [])
            if st["pages"] > 1:
                parts["label"].value = self.pager_text(i)
            if list(parts["box"].children) != want:
                parts["box"].children = want
            kids.append(parts["box"])
        if list(pw["steps"].children) != kids:
            pw["steps"].children = kids

    def redraw(self) -> None:
        """Bring the live widget up to date with the data (from any thread)."""
        with self.lock:
            if "root" not in self.parts_widgets:
                return
            header = self.header_html()
            if self.parts_widgets["header"].value != header:
                self.parts_widgets["header"].value = header
            self.draw_steps()

    # ---- the timeline ----------------------------------------------------------------------
    def timeline_args(self):
        """(segments, row order, titles) of the run's timeline, or None before its first call."""
        from .timeline import run_segments, where_it_went

        with self.lock:
            segs, order = run_segments(self.data)
            if not segs:
                return None
            name = self.data.run.get("pipeline") or "the run"
            return segs, order, dict(title=f"Timeline of {name}: each call, per step and agent",
                                     subtitle=where_it_went(self.data))

    def parts(self) -> list[Part]:
        out = [Part("tree", "live", static=self.tree_html, widget=self.tree_widget)]
        if self.show_timeline:
            out.append(Part("timeline", "chart", chart=self.timeline_chart, svg=self.timeline_svg))
        return out

    def __repr__(self) -> str:
        s = self.summary
        state = "running" if s["in_flight"] else ("ok" if s["ok"] else "failed")
        return (f"PipelineTree({(s['trace_id'] or '')[:12]}, {s['pipeline']}, {s['calls']} calls, "
                f"{s['calls_reused']} {REUSED}, {state})")


# ---- many runs --------------------------------------------------------------------------------
RUN_COLUMNS = [
    Column("n", "#", "the run's number in this view (the batch's prompt order), from 1", "int"),
    Column("status", "status", "ok, failed (its error in the answer column) or running", "text"),
    Column("pipeline", "pipeline or variant", "the name the run was given (run_batch's name=, or the pipeline's)",
           "text"),
    Column("calls", "calls", "logical LLM calls of the run (retries inside them)", "int"),
    Column("calls_paid", "paid", "calls sent to a model (failed ones included)", "int"),
    Column("calls_reused", REUSED, "calls " + REUSED_MEANS, "int"),
    Column("calls_failed", "failed", "calls that finally failed", "int"),
    Column("input_tokens", "input tokens", "tokens sent, summed over the run's calls", "int"),
    Column("output_tokens", "output tokens", "tokens received, summed over the run's calls", "int"),
    Column("cost_usd", "cost", "US dollars paid ($0 for the embedded model and reused calls)", "money"),
    Column("duration_s", "time (s)", "wall time of the run, in seconds", "num", 2),
    Column("prompt", "prompt", "the query's last user turn", "text"),
    Column("answer", "answer", "the run's final answer (or its error)", "text"),
]


class BatchView(HasTimeline, View):
    """Many runs: ``BatchView(store, runs)`` where ``runs`` is a :func:`moakit.run_batch`
    DataFrame, a list of trace ids, or ``None`` for every run in the store (``batch_id=`` keeps
    one batch). Shows the totals, a table of every run (numbered from 1; sortable and filterable
    with a kernel), the tree of the run opened (``open=`` its number, default 1) and the batch's
    timeline. A live batch (``run_batch(..., live=True)``) passes ``datas=``.

    State: ``summary`` (totals over all runs), ``rows`` (every run as shown in the table),
    ``table`` (the :class:`~moakit.widgets.table.Table`), ``opened`` (the number of the run whose
    tree is shown); :meth:`open` opens a run, :meth:`tree` gives a run's tree."""

    css_class = "moakit-batch"

    def __init__(self, store=None, runs=None, *, batch_id: str | None = None, tree_page_size: int = 25,
                 open: int | None = 1, datas: dict[str, TraceData] | None = None, name: str | None = None,
                 total: int | None = None):
        import pandas as pd

        from ..store import open_store

        self.tree_page_size = tree_page_size
        self.name, self.total = name, total
        self.lock = threading.RLock()
        self.store = open_store(store) if (datas is None or store is not None) else None
        self.prompts: dict[str, str] = {}
        if datas is None:
            if runs is None:
                frame = self.store.runs()
                ids = list(frame["trace_id"]) if batch_id is None else \
                    list(frame.loc[frame["batch_id"] == batch_id, "trace_id"])
            else:
                if isinstance(runs, pd.DataFrame):
                    if "trace_id" not in runs.columns:
                        raise ValueError("the runs DataFrame needs a trace_id column (run_batch gives one)")
                    if "prompt" in runs.columns:
                        self.prompts = {t: query_text(p) if isinstance(p, list) else str(p)
                                        for t, p in zip(runs["trace_id"], runs["prompt"]) if isinstance(t, str)}
                    runs = list(runs["trace_id"])
                ids = [self.store.resolve_trace_id(t) for t in ([runs] if isinstance(runs, str) else runs)
                       if isinstance(t, str)]
                if batch_id is not None:
                    frame = self.store.runs(ids)
                    keep = set(frame.loc[frame["batch_id"] == batch_id, "trace_id"])
                    ids = [t for t in ids if t in keep]
            ids = list(dict.fromkeys(ids))
            datas = TraceData.many_from_store(self.store, ids) if ids else {}
            self.order = ids
        else:
            self.order = list(datas)
        self.datas = datas
        self.opened = open if (open and self.order) else None
        self.trees: dict[str, PipelineTree] = {}
        self.table = Table(self.frame(), RUN_COLUMNS, on_change=lambda: self.refresh(["batch"]))
        self.parts_widgets: dict[str, Any] = {}

    # ---- state -----------------------------------------------------------------------------
    def run_row(self, n: int, tid: str) -> dict[str, Any]:
        d = self.datas[tid]
        r, t = d.run, d.totals()
        running = d.live and not d.ended
        status = "running" if running else ("failed" if r.get("error") else "ok")
        answer = r.get("output") if not r.get("error") else r.get("error")
        paid_usd = as_float(r.get("cost_usd"))
        return {"n": n, "trace_id": tid, "status": status, "pipeline": r.get("pipeline"),
                "calls": t["calls"], "calls_paid": t["calls_paid"], "calls_reused": t["calls_reused"],
                "calls_failed": t["calls_failed"], "calls_unpriced": t["calls_unpriced"],
                "input_tokens": t["input_tokens"],
                "output_tokens": t["output_tokens"], "cost_usd": t["cost_usd"] if paid_usd is None else paid_usd,
                "duration_s": d.elapsed_s(), "prompt": self.prompts.get(tid) or r.get("query") or "",
                "answer": short(answer, 120) if answer else "", "error": r.get("error")}

    def frame(self):
        import pandas as pd

        rows = [self.run_row(n, t) for n, t in enumerate(self.order, 1)]
        return pd.DataFrame(rows, columns=["n", "trace_id", "status", "pipeline", "calls", "calls_paid",
                                           "calls_reused", "calls_failed", "input_tokens", "output_tokens",
                                           "cost_usd", "duration_s", "prompt", "answer", "error"])

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every run, as the table shows them (its sort and filter)."""
        return self.table.rows

    @property
    def summary(self) -> dict[str, Any]:
        rows = [self.run_row(n, t) for n, t in enumerate(self.order, 1)]
        return {"runs": len(rows), "failed": sum(r["status"] == "failed" for r in rows),
                "running": sum(r["status"] == "running" for r in rows),
                "calls": sum(r["calls"] for r in rows), "calls_paid": sum(r["calls_paid"] for r in rows),
                "calls_reused": sum(r["calls_reused"] for r in rows),
                "calls_failed": sum(r["calls_failed"] for r in rows),
                "calls_unpriced": sum(r["calls_unpriced"] for r in rows),
                "input_tokens": sum(r["input_tokens"] for r in rows),
                "output_tokens": sum(r["output_tokens"] for r in rows),
                "cost_usd": float(sum(r["cost_usd"] or 0.0 for r in rows)), "opened": self.opened}

    def tree(self, trace_id: str) -> PipelineTree:
        """The (kept) tree of one run of this view."""
        if trace_id not in self.trees:
            self.trees[trace_id] = PipelineTree(self.store, data=self.datas[trace_id], page_size=self.tree_page_size,
                                                timeline=False)
        return self.trees[trace_id]

    def open(self, n: int | None) -> None:
        """Show the tree of run number ``n`` (1-based, as numbered in the table); None: none."""
        if n is not None and not 1 <= n <= len(self.order):
            raise ValueError(f"there are runs 1 to {len(self.order)} in this view, not {n}")
        self.opened = n
        self.draw_opened()
        self.refresh(["batch"])

    # ---- HTML --------------------------------------------------------------------------------
    def header_html(self) -> str:
        s = self.summary
        failed = f" · <span style='color:{RED}'><b>{s['failed']} failed</b></span>" if s["failed"] else ""
        total = self.total if self.total and self.total > s["runs"] else None
        running = ""
        if s["running"] or total:
            running = (f" · <span style='color:{MUTED}'><b>⏳ {s['runs'] - s['running']}"
                       f"{f' of {total}' if total else ''} runs finished</b></span>")
        name = f"<b>{esc(self.name)}</b> · " if self.name else ""
        fails = f", {s['calls_failed']} failed" if s["calls_failed"] else ""
        return (f"<div style='font-size:13px;{FONT}'>{name}<b>{count(s['runs'], 'run')}</b>{failed}{running} · "
                f"{s['calls']:,} calls ({s['calls_paid']:,} paid, {s['calls_reused']:,} {REUSED}{fails}) · "
                f"{s['input_tokens']:,} input + {s['output_tokens']:,} output tokens · "
                f"<b>{cost(s['cost_usd'], s['calls_unpriced'])}</b></div>")

    def opened_title(self) -> str:
        if self.opened is None:
            return ""
        r = self.run_row(self.opened, self.order[self.opened - 1])
        name = f" · {esc(r['pipeline'])}" if r["pipeline"] else ""
        return (f"<div style='font-size:13px;margin-top:8px;{FONT}'><b>run #{self.opened}</b> of "
                f"{len(self.order)}{name} · {esc(short(r['prompt'], 100))}</div>")

    def batch_html(self) -> str:
        with self.lock:
            opened = ""
            if self.opened is not None:
                opened = self.opened_title() + self.tree(self.order[self.opened - 1]).tree_html()
                opened += (f"<div style='color:{MUTED};font-size:11px'>the other runs' trees: open them with a "
                           f"running kernel, or <code>moakit.show(trace_id)</code></div>")
            return f"{self.header_html()}{self.table.static_html()}{opened}"

    # ---- the live widget ---------------------------------------------------------------------
    def batch_widget(self):
        import ipywidgets as w

        with self.lock:
            pw = self.parts_widgets
            if "root" in pw:
                return pw["root"]
            pw["header"] = w.HTML(self.header_html())
            pw["picker"] = w.Dropdown(options=self.picker_options(), value=self.opened, description="open run",
                                      layout=w.Layout(width="min(100%, 640px)"), style={"description_width": "64px"})
            pw["picker"].observe(lambda ch: self.open(ch["new"]) if ch["new"] != self.opened else None,
                                 names="value")
            pw["title"] = w.HTML(self.opened_title())
            pw["tree"] = w.VBox([])
            pw["root"] = w.VBox([pw["header"], self.table.widget(), pw["picker"], pw["title"], pw["tree"]])
            pw["root"].add_class("moakit-batch-live")
            self.draw_opened()
            return pw["root"]

    def picker_options(self) -> list:
        opts = [("(none)", None)]
        for n, tid in enumerate(self.order, 1):
            r = self.run_row(n, tid)
            mark = {"ok": "✓", "failed": "✗", "running": "⏳"}[r["status"]]
            opts.append((f"#{n} {mark} {r['pipeline'] or ''} · {short(r['prompt'], 60)}", n))
        return opts

    def draw_opened(self) -> None:
        pw = self.parts_widgets
        if "root" not in pw:
            return
        with self.lock:
            pw["title"].value = self.opened_title()
            if self.opened is None:
                pw["tree"].children = []
            else:
                tree = self.tree(self.order[self.opened - 1])
                pw["tree"].children = [tree.tree_widget()]
            if pw["picker"].value != self.opened:
                pw["picker"].value = self.opened

    def redraw(self, new_runs: bool = False) -> None:
        """Bring the live widget up to date (runs added or changed: a batch in flight)."""
        with self.lock:
            self.table.set_frame(self.frame())
            pw = self.parts_widgets
            if "root" not in pw:
                return
            header = self.header_html()
            if pw["header"].value != header:
                pw["header"].value = header
            if new_runs:
                opts = self.picker_options()
                if list(pw["picker"].options) != opts:
                    pw["picker"].options = opts
                    pw["picker"].value = self.opened
            if self.opened is not None and self.order[self.opened - 1] in self.trees:
                self.trees[self.order[self.opened - 1]].redraw()
            pw["title"].value = self.opened_title()

    # ---- the timeline ------------------------------------------------------------------------
    def timeline_args(self):
        """(segments, row order, titles) of the batch's timeline, or None before its first call."""
        from .timeline import batch_segments

        with self.lock:
            datas = [self.datas[t] for t in self.order]
            segs, order = batch_segments(datas, list(range(1, len(datas) + 1)))
            if not segs:
                return None
            s = self.summary
            wall = max((d.elapsed_s() or 0.0) + ((d.run.get("start_ns") or 0) - min(
                (x.run.get("start_ns") or 0) for x in datas)) / 1e9 for d in datas) if datas else 0
            sub = [f"{count(s['runs'], 'run')}, {s['calls']:,} calls ({s['calls_reused']:,} {REUSED}) in "
                   f"{wall:.1f} s; each row a run, its calls drawn over one another (darker: several in flight)",
                   cost(s['cost_usd'], s['calls_unpriced']) if s['calls_unpriced'] and not s['cost_usd']
                   else f"cost {cost(s['cost_usd'], s['calls_unpriced'])}"]
            return segs, order, dict(title="Timeline of the batch: each run's calls", subtitle=sub,
                                     x_title="seconds since the batch started")

    def parts(self) -> list[Part]:
        return [Part("batch", "live", static=self.batch_html, widget=self.batch_widget),
                Part("timeline", "chart", chart=self.timeline_chart, svg=self.timeline_svg)]

    def __repr__(self) -> str:
        s = self.summary
        return f"BatchView({s['runs']} runs, {s['calls']} calls, {s['calls_reused']} {REUSED}, opened #{self.opened})"
