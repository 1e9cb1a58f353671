"""Pipeline tree: a run -> its steps -> their calls, as standard ipywidgets.

:class:`PipelineTree` shows one run: a header with the run's totals (calls paid and cached,
tokens, cost, time, the final answer), then one section per step saying what the step did
(Shuffle's new order, Dropout's kept and dropped responses, Rank's choice) and a table of its
calls: agent, model, sample, tokens, latency, cost, cached calls marked, errors in red, and each
call's prompt and output folded in an HTML ``<details>`` (collapsed until clicked).

:class:`BatchView` shows many runs (a ``run_batch`` DataFrame, trace ids, or a whole store), a
page at a time, each run's tree built only when its row is opened.

Why this shape:

* Only stock ipywidgets (``VBox``, ``HTML``, ``Accordion``, ``Button``) and plain HTML: the
  notebook's saved widget state holds everything drawn, so a notebook executed headless shows
  its trees when opened, with no kernel and no custom JavaScript.
* Responsive for runs of hundreds of calls: a step shows ``page_size`` calls at a time
  (pager buttons below it) and prompts are read from the store only for the page shown; the
  call table is one HTML widget per step, not one widget per call.
* Testable without a browser: ``tree.summary`` (the run's numbers as shown), ``tree.steps``
  (each step and what it did) and ``tree.rows`` (the calls on the pages shown, with their numbers).

Data comes from :class:`~moakit.store.store.TraceStore` (``runs``, ``steps``, ``calls``,
``call_contents``); nothing here computes statistics.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any, Sequence

__all__ = ["PipelineTree", "BatchView", "tree_text", "step_action"]

RED = "#c62828"
GREEN = "#2e7d32"
MUTED = "var(--jp-ui-font-color2, #666)"
BORDER = "var(--jp-border-color2, #ddd)"


# ---- formatting helpers (no statistics: only how numbers are written) ---------------------
def _isnull(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _int(v) -> int | None:
    return None if _isnull(v) else int(v)


def _float(v) -> float | None:
    return None if _isnull(v) else float(v)


def money(v) -> str:
    """``$0`` for free, five decimals below a cent, four above; ``–`` when unknown."""
    v = _float(v)
    if v is None:
        return "–"
    if v == 0:
        return "$0"
    return f"${v:.5f}" if abs(v) < 0.01 else f"${v:.4f}"


def seconds(v) -> str:
    v = _float(v)
    if v is None:
        return "–"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def _clean(df, cols=("error", "output", "pipeline", "model", "agent")):
    """Missing texts as None (pandas may hold them as NaN, which is truthy)."""
    for col in cols:
        if col in df.columns:
            df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def _short(text: Any, n: int = 80) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n… ({len(text) - max_chars:,} more characters; read them from the store)"


def _label(agent: str, sample: int, repeated: bool) -> str:
    return f"{agent}#{sample}" if repeated else agent


def _labels_by_span(calls) -> dict[str, str]:
    """span id -> the agent label a reader knows it by (``agent#sample`` for repeated agents)."""
    repeated = set(calls.loc[calls["sample"].fillna(0).astype(int) > 0, "agent"]) if len(calls) else set()
    return {r.span_id: _label(r.agent, int(r.sample or 0), r.agent in repeated) for r in calls.itertuples()}


def step_action(step: dict, labels: dict[str, str]) -> str:
    """One line saying what a step did, in the reader's terms (agents, not span ids)."""
    kind = step["step"]
    ins = [labels.get(s, s[-8:]) for s in (step.get("responses_in") or [])]
    outs = [labels.get(s, s[-8:]) for s in (step.get("responses_out") or [])]
    perm, kept, choice = step.get("permutation"), step.get("kept"), step.get("rank_choice")
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
        return f"chose {picked} of {len(ins)} shown"
    if kind == "Map":
        return f"mapped {len(ins)} responses"
    if ins:
        return f"{len(ins)} responses in → {len(outs)} out"
    return f"{len(outs)} responses out"


# ---- the text form (the CLI's ``moakit traces show``) --------------------------------------
def tree_text(store, trace_id: str) -> str:
    """The tree as plain text: run, then each step (with what it did), then its calls."""
    runs = store.runs(trace_id)
    if runs.empty:
        raise KeyError(f"no run with trace id {trace_id!r} in {store.path}")
    run = _clean(runs).iloc[0]
    calls = _clean(store.calls(trace_id))
    labels = _labels_by_span(calls)
    lines = [f"run {trace_id} {run.pipeline or ''} calls={run.calls} cached={run.calls_cached} "
             f"cost={money(run.cost_usd)} output={_short(run.output, 80)!r}"]
    if run.error:
        lines.append(f"  ERROR {run.error}")
    for st in _clean(store.steps(trace_id)).to_dict("records"):
        err = f" ERROR {st['error']}" if st["error"] else ""
        lines.append(f"  step {st['step_index']} {st['step']} {st['duration_s']:.2f}s: {step_action(st, labels)}{err}")
        for c in calls[calls.step_index == st["step_index"]].itertuples():
            flag = " cached" if c.cached else ""
            err = f" ERROR {c.error}" if c.error else ""
            lines.append(f"    {labels[c.span_id]} {c.model} {_int(c.input_tokens)}->{_int(c.output_tokens)} tok "
                         f"{c.latency_s:.2f}s {money(c.cost_usd)}{flag}{err}")
    return "\n".join(lines)


# ---- the widget ------------------------------------------------------------------------------
_TABLE = "border-collapse:collapse;width:100%;font-size:12px;line-height:1.35;font-family:var(--jp-ui-font-family, sans-serif)"
_TH = f"text-align:left;padding:2px 6px;border-bottom:1px solid {BORDER};color:{MUTED};font-weight:normal"
_TD = f"padding:2px 6px;border-bottom:1px solid {BORDER};vertical-align:top"
_NUM = _TD + ";text-align:right;white-space:nowrap"
_PRE = ("white-space:pre-wrap;word-break:break-word;margin:2px 0 6px 0;padding:4px 6px;"
        "background:var(--jp-layout-color2, #f5f5f5);border-radius:3px;font-size:12px;max-height:24em;overflow:auto")
_CACHED = (f"display:inline-block;padding:0 5px;border-radius:8px;font-size:11px;color:{GREEN};"
           f"border:1px solid {GREEN}")



def _pager_row(label, turn):
    """◀ previous / label / next ▶ buttons; ``turn(-1)`` or ``turn(+1)`` changes the page."""
    import ipywidgets as w

    prev = w.Button(description="◀ previous", layout=w.Layout(width="110px"))
    nxt = w.Button(description="next ▶", layout=w.Layout(width="110px"))
    prev.on_click(lambda _b: turn(-1))
    nxt.on_click(lambda _b: turn(+1))
    return w.HBox([prev, label, nxt])

class PipelineTree:
    """The tree of one stored run. ``PipelineTree(store, trace_id)`` (a unique prefix of the
    trace id is enough; ``store`` may be a path).

    Display it (it is the last expression of a cell) or call :meth:`widget`. Its state:
    ``summary`` (dict: the run's totals as shown), ``steps`` (list of dicts: each step, its
    calls count and what it did), ``rows`` (list of dicts: the calls on the pages shown).
    ``page_size`` calls are shown per step; :meth:`set_page` turns a step's page."""

    def __init__(self, store, trace_id: str, *, page_size: int = 25, max_chars: int = 20_000):
        from ..store import open_store

        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.store = open_store(store)
        self.trace_id = self.store.resolve_trace_id(trace_id)
        self.page_size, self.max_chars = page_size, max_chars
        runs = self.store.runs(self.trace_id)
        self._run = _clean(runs).iloc[0].to_dict()
        self._calls = _clean(self.store.calls(self.trace_id))
        self._steps = _clean(self.store.steps(self.trace_id)).to_dict("records")
        self._labels = _labels_by_span(self._calls)
        self._pages: dict[int, int] = {int(s["step_index"]): 0 for s in self._steps}
        self._contents: dict[str, dict] = {}
        self._widget = None
        self._step_html: dict[int, Any] = {}
        self._pager_label: dict[int, Any] = {}
        attrs = self.store.run_attributes(self.trace_id)
        self._query = _query_text(attrs.get("moakit.query"))
        self._seed = attrs.get("moakit.seed")

    # ---- state ---------------------------------------------------------------------------
    @property
    def summary(self) -> dict[str, Any]:
        c, r = self._calls, self._run
        n = len(c)
        cached = int(c["cached"].sum()) if n else 0
        failed = int(c["error"].notna().sum()) if n else 0
        return {
            "trace_id": self.trace_id, "pipeline": r.get("pipeline"), "query": self._query, "seed": self._seed,
            "ok": not r.get("error"), "error": r.get("error"), "output": r.get("output"),
            "steps": len(self._steps), "calls": n, "calls_cached": cached, "calls_paid": n - cached,
            "calls_failed": failed,
            "input_tokens": int(c["input_tokens"].fillna(0).sum()) if n else 0,
            "output_tokens": int(c["output_tokens"].fillna(0).sum()) if n else 0,
            "cost_usd": float(_float(r.get("cost_usd")) or 0.0), "duration_s": _float(r.get("duration_s")),
        }

    @property
    def steps(self) -> list[dict[str, Any]]:
        out = []
        for s in self._steps:
            i = int(s["step_index"])
            n = int((self._calls["step_index"] == i).sum()) if len(self._calls) else 0
            out.append({"step_index": i, "step": s["step"], "duration_s": _float(s["duration_s"]), "calls": n,
                        "error": s["error"], "action": step_action(s, self._labels), "page": self._pages[i],
                        "pages": max(1, math.ceil(n / self.page_size)), "permutation": s.get("permutation"),
                        "kept": s.get("kept"), "rank_choice": s.get("rank_choice")})
        return out

    def _page_calls(self, step_index: int):
        c = self._calls[self._calls["step_index"] == step_index]
        p = self._pages[step_index]
        return c.iloc[p * self.page_size:(p + 1) * self.page_size]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The calls shown (the current page of every step), in display order."""
        out = []
        for s in self._steps:
            for c in self._page_calls(int(s["step_index"])).itertuples():
                out.append({"span_id": c.span_id, "step_index": int(c.step_index), "step": c.step,
                            "agent": c.agent, "label": self._labels[c.span_id], "model": c.model,
                            "sample": _int(c.sample), "attempts": _int(c.attempts),
                            "input_tokens": _int(c.input_tokens), "output_tokens": _int(c.output_tokens),
                            "latency_s": _float(c.latency_s), "cost_usd": _float(c.cost_usd),
                            "cached": bool(c.cached), "error": c.error, "output": c.output})
        return out

    def set_page(self, step_index: int, page: int) -> None:
        """Show page ``page`` (0-based, clamped) of a step's calls."""
        n = int((self._calls["step_index"] == step_index).sum())
        last = max(0, math.ceil(n / self.page_size) - 1)
        self._pages[step_index] = min(max(0, int(page)), last)
        if step_index in self._step_html:
            self._step_html[step_index].value = self._calls_html(step_index)
            self._pager_label[step_index].value = self._pager_text(step_index)

    # ---- drawing -------------------------------------------------------------------------
    def _content(self, span_ids: Sequence[str]) -> dict[str, dict]:
        missing = [s for s in span_ids if s not in self._contents]
        if missing:
            self._contents.update(self.store.call_contents(missing))
        return {s: self._contents.get(s, {}) for s in span_ids}

    def header_html(self) -> str:
        s = self.summary
        status = (f"<span style='color:{GREEN};font-weight:bold'>✓ ok</span>" if s["ok"] else
                  f"<span style='color:{RED};font-weight:bold'>✗ failed: {_e(s['error'])}</span>")
        failed = (f" · <span style='color:{RED}'>{s['calls_failed']} failed</span>" if s["calls_failed"] else "")
        numbers = (f"<b>{s['calls']}</b> calls ({s['calls_paid']} paid, {s['calls_cached']} cached{failed}) · "
                   f"<b>{s['input_tokens']:,}</b> input + <b>{s['output_tokens']:,}</b> output tokens · "
                   f"<b>{money(s['cost_usd'])}</b> · {seconds(s['duration_s'])}")
        out = s["output"]
        answer = (f"<details open><summary><b>answer</b> ({len(out):,} chars)</summary>"
                  f"<div style='{_PRE}'>{_e(_clip(out, self.max_chars))}</div></details>" if out is not None else
                  f"<div style='color:{RED}'>no answer</div>")
        return (f"<div class='moakit-tree-header' style='font-family:var(--jp-ui-font-family, sans-serif);"
                f"font-size:13px;line-height:1.45'>"
                f"<div><b>run</b> <code>{_e(self.trace_id[:12])}</code> · <b>{_e(s['pipeline'] or 'pipeline')}</b> · "
                f"{len(self._steps)} steps · seed {_e(s['seed'])} · {status}</div>"
                f"<div>{numbers}</div>"
                f"<div style='color:{MUTED}'>query: {_e(_short(s['query'], 200))}</div>{answer}</div>")

    def step_title_html(self, step: dict) -> str:
        err = f" <span style='color:{RED}'>✗ {_e(step['error'])}</span>" if step["error"] else ""
        calls = f" · {step['calls']} call{'s' if step['calls'] != 1 else ''}" if step["calls"] else ""
        return (f"<div style='font-size:13px;line-height:1.4;margin-top:6px;font-family:var(--jp-ui-font-family, sans-serif)'>"
                f"<b>step {step['step_index']} · {_e(step['step'])}</b>{calls} · {seconds(step['duration_s'])} · "
                f"<span style='color:{MUTED}'>{_e(step['action'])}</span>{err}</div>")

    def _calls_html(self, step_index: int) -> str:
        page = self._page_calls(step_index)
        if page.empty:
            return ""
        contents = self._content(list(page["span_id"]))
        head = "".join(f"<th style='{_TH}'>{h}</th>" for h in
                       ("agent", "model", "sample", "tokens&nbsp;in→out", "latency", "cost", "", "prompt and output"))
        body = []
        for c in page.itertuples():
            color = f"color:{RED};" if c.error else ""
            badges = []
            if c.cached:
                badges.append(f"<span style='{_CACHED}' title='served from the trace store'>cached</span>")
            if (_int(c.attempts) or 1) > 1:
                badges.append(f"<span style='color:{MUTED}'>{_int(c.attempts)} attempts</span>")
            body.append(
                f"<tr class='moakit-call' style='{color}'>"
                f"<td style='{_TD};white-space:nowrap'><b>{_e(c.agent)}</b></td><td style='{_TD};white-space:nowrap'>{_e(c.model)}</td>"
                f"<td style='{_NUM}'>{_int(c.sample)}</td>"
                f"<td style='{_NUM}'>{_int(c.input_tokens) if not _isnull(c.input_tokens) else '–'}→"
                f"{_int(c.output_tokens) if not _isnull(c.output_tokens) else '–'}</td>"
                f"<td style='{_NUM}'>{seconds(c.latency_s)}</td><td style='{_NUM}'>{money(c.cost_usd)}</td>"
                f"<td style='{_TD}'>{' '.join(badges)}</td>"
                f"<td style='{_TD};width:50%'>{self._detail_html(c, contents.get(c.span_id, {}))}</td></tr>")
        return f"<table style='{_TABLE}'><tr>{head}</tr>{''.join(body)}</table>"

    def _detail_html(self, c, content: dict) -> str:
        if c.error:
            summary = f"<span style='color:{RED}'>✗ {_e(_short(c.error, 90))}</span>"
        else:
            summary = _e(_short(c.output, 90)) or f"<i style='color:{MUTED}'>(empty)</i>"
        parts = []
        if c.error:
            parts.append(f"<div style='color:{RED}'><b>error</b></div><div style='{_PRE};color:{RED}'>{_e(c.error)}</div>")
        shown = content.get("input_agents") or []
        if shown:
            order = ", ".join(f"{i}. {_e(a)}" for i, a in enumerate(shown, 1))
            parts.append(f"<div style='color:{MUTED}'>responses shown, in order: {order}</div>")
        msgs = content.get("messages") or []
        for m in msgs:
            parts.append(f"<div style='color:{MUTED}'>{_e(m.get('role'))}</div>"
                         f"<div style='{_PRE}'>{_e(_clip(m.get('content') or '', self.max_chars))}</div>")
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
                         f"{_e(_short(f.get('error') or '', 160))}{wait}</div>")
        params.append(f"span {c.span_id}")
        if c.output is not None:
            parts.append(f"<div style='color:{MUTED}'>output</div><div style='{_PRE}'>"
                         f"{_e(_clip(c.output, self.max_chars))}</div>")
        parts.append(f"<div style='color:{MUTED};font-size:11px'>{_e(' · '.join(params))}</div>")
        return f"<details><summary style='cursor:pointer'>{summary}</summary>{''.join(parts)}</details>"

    def _pager_text(self, step_index: int) -> str:
        n = int((self._calls["step_index"] == step_index).sum())
        p = self._pages[step_index]
        lo, hi = p * self.page_size + 1, min(n, (p + 1) * self.page_size)
        return f"calls {lo}–{hi} of {n}"

    def widget(self):
        """The ipywidgets tree (built once, then reused)."""
        if self._widget is not None:
            return self._widget
        import ipywidgets as w

        parts = [w.HTML(self.header_html())]
        for st in self.steps:
            i = st["step_index"]
            box = [w.HTML(self.step_title_html(st))]
            if st["calls"]:
                self._step_html[i] = w.HTML(self._calls_html(i))
                box.append(self._step_html[i])
            if st["pages"] > 1:
                self._pager_label[i] = w.Label(self._pager_text(i))
                box.append(_pager_row(self._pager_label[i],
                                      lambda delta, i=i: self.set_page(i, self._pages[i] + delta)))
            parts.append(w.VBox(box, layout=w.Layout(margin="0 0 0 16px")))
        self._widget = w.VBox(parts, layout=w.Layout(border=f"1px solid {BORDER}", padding="6px"))
        self._widget.add_class("moakit-tree")
        return self._widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget()._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        s = self.summary
        return (f"PipelineTree({self.trace_id[:12]}, {s['pipeline']}, {s['calls']} calls, {s['calls_cached']} cached, "
                f"{'ok' if s['ok'] else 'failed'})")


def _query_text(query_json) -> str:
    """The last user turn of a run's recorded query (what a reader calls the prompt)."""
    try:
        msgs = json.loads(query_json) if isinstance(query_json, str) else (query_json or [])
        users = [m.get("content", "") for m in msgs if m.get("role") == "user"]
        return users[-1] if users else ""
    except (ValueError, AttributeError, TypeError):
        return str(query_json or "")


class BatchView:
    """Many runs, a page at a time: ``BatchView(store, runs)`` where ``runs`` is a
    :func:`moakit.run_batch` DataFrame, a list of trace ids, or ``None`` for every run in the
    store (``batch_id=`` keeps one batch). Each run is a row of an accordion whose tree is
    built when the row is opened (``open_first=True`` opens the first row of each page).

    State: ``summary`` (totals over all runs), ``rows`` (the runs on the current page),
    ``page`` / ``pages``; :meth:`set_page` turns the page, :meth:`tree` gives a run's tree."""

    def __init__(self, store, runs=None, *, batch_id: str | None = None, page_size: int = 10,
                 tree_page_size: int = 25, open_first: bool = True):
        from ..store import open_store

        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.store = open_store(store)
        self.page_size, self.tree_page_size, self.open_first = page_size, tree_page_size, open_first
        prompts: dict[str, str] = {}
        if runs is None:
            frame = self.store.runs()
        else:
            try:
                import pandas as pd

                if isinstance(runs, pd.DataFrame):
                    if "trace_id" not in runs.columns:
                        raise ValueError("the runs DataFrame needs a trace_id column (run_batch gives one)")
                    if "prompt" in runs.columns:
                        prompts = {t: _query_text(json.dumps(p)) if isinstance(p, list) else str(p)
                                   for t, p in zip(runs["trace_id"], runs["prompt"]) if isinstance(t, str)}
                    runs = runs["trace_id"]
            except ImportError:  # pragma: no cover
                pass
            ids = [t for t in (runs if not isinstance(runs, str) else [runs]) if isinstance(t, str)]
            ids = [self.store.resolve_trace_id(t) for t in ids]
            frame = self.store.runs(ids)
            order = {t: i for i, t in enumerate(ids)}
            frame = frame.assign(_o=frame["trace_id"].map(order)).sort_values("_o").drop(columns="_o")
        if batch_id is not None:
            frame = frame[frame["batch_id"] == batch_id]
        self._runs = _clean(frame.reset_index(drop=True))
        self._prompts = prompts
        self.page = 0
        self._trees: dict[str, PipelineTree] = {}
        self._widget = self._acc = self._label = None

    @property
    def pages(self) -> int:
        return max(1, math.ceil(len(self._runs) / self.page_size))

    @property
    def summary(self) -> dict[str, Any]:
        r = self._runs
        return {"runs": len(r), "failed": int(r["error"].notna().sum()), "calls": int(r["calls"].fillna(0).sum()),
                "calls_cached": int(r["calls_cached"].fillna(0).sum()),
                "input_tokens": int(r["input_tokens"].fillna(0).sum()),
                "output_tokens": int(r["output_tokens"].fillna(0).sum()),
                "cost_usd": float(r["cost_usd"].fillna(0).sum()), "page": self.page, "pages": self.pages}

    def _prompt(self, trace_id: str) -> str:
        if trace_id not in self._prompts:
            self._prompts[trace_id] = _query_text(self.store.run_attributes(trace_id).get("moakit.query"))
        return self._prompts[trace_id]

    @property
    def rows(self) -> list[dict[str, Any]]:
        page = self._runs.iloc[self.page * self.page_size:(self.page + 1) * self.page_size]
        return [{"trace_id": r.trace_id, "pipeline": r.pipeline, "prompt": self._prompt(r.trace_id),
                 "calls": _int(r.calls), "calls_cached": _int(r.calls_cached), "input_tokens": _int(r.input_tokens),
                 "output_tokens": _int(r.output_tokens), "cost_usd": _float(r.cost_usd),
                 "duration_s": _float(r.duration_s), "error": r.error, "output": r.output}
                for r in page.itertuples()]

    def tree(self, trace_id: str) -> PipelineTree:
        """The (cached) tree of one run of this view."""
        if trace_id not in self._trees:
            self._trees[trace_id] = PipelineTree(self.store, trace_id, page_size=self.tree_page_size)
        return self._trees[trace_id]

    def _title(self, i: int, r: dict) -> str:
        state = "✓" if not r["error"] else "✗ FAILED"
        tok = (r["input_tokens"] or 0) + (r["output_tokens"] or 0)
        return (f"{state} #{i} {r['pipeline'] or ''} · {r['calls']} calls ({r['calls_cached']} cached) · "
                f"{tok:,} tok · {money(r['cost_usd'])} · {_short(r['prompt'], 60)}")

    def header_html(self) -> str:
        s = self.summary
        failed = f" · <span style='color:{RED}'><b>{s['failed']} failed</b></span>" if s["failed"] else ""
        return (f"<div style='font-size:13px;font-family:var(--jp-ui-font-family, sans-serif)'><b>{s['runs']} runs</b>"
                f"{failed} · {s['calls']} calls ({s['calls_cached']} cached) · {s['input_tokens']:,} input + "
                f"{s['output_tokens']:,} output tokens · <b>{money(s['cost_usd'])}</b></div>")

    def _fill(self) -> None:
        import ipywidgets as w

        rows = self.rows
        first = self.page * self.page_size
        self._acc.selected_index = None
        self._acc.children = [w.HTML(f"<i style='color:{MUTED}'>opening…</i>") for _ in rows]
        self._acc.titles = tuple(self._title(first + k, r) for k, r in enumerate(rows))
        self._label.value = f"runs {first + 1}–{first + len(rows)} of {len(self._runs)}" if rows else "no runs"
        if self.open_first and rows:
            self._acc.selected_index = 0

    def _on_select(self, change) -> None:
        k = change["new"]
        if k is None:
            return
        rows = self.rows
        if k < len(rows) and not hasattr(self._acc.children[k], "_moakit_tree"):
            tree_widget = self.tree(rows[k]["trace_id"]).widget()
            tree_widget._moakit_tree = True
            kids = list(self._acc.children)
            kids[k] = tree_widget
            self._acc.children = kids

    def set_page(self, page: int) -> None:
        self.page = min(max(0, int(page)), self.pages - 1)
        if self._acc is not None:
            self._fill()

    def widget(self):
        if self._widget is not None:
            return self._widget
        import ipywidgets as w

        self._acc = w.Accordion()
        self._acc.observe(self._on_select, names="selected_index")
        self._label = w.Label()
        pager = []
        if self.pages > 1:
            pager = [_pager_row(self._label, lambda delta: self.set_page(self.page + delta))]
        self._fill()
        self._widget = w.VBox([w.HTML(self.header_html()), *pager, self._acc])
        self._widget.add_class("moakit-batch")
        return self._widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget()._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        s = self.summary
        return f"BatchView({s['runs']} runs, {s['calls']} calls, page {self.page + 1}/{self.pages})"
