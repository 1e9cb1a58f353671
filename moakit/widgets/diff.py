"""DiffView: two runs side by side, call by call, from :func:`moakit.diff`.

Each side is its run's tree (steps, then their calls). Steps are paired by their kinds in order
(difflib's sequence matching over the two step lists, so a Shuffle present in one run only gets
a row of its own); a step whose calls are all ``same`` and whose choice is the same is folded
(an HTML ``<details>``, collapsed until clicked); a changed call is highlighted by its status and
unfolds into its cause, where the change began, and the text diffs of its prompt and output.

Why plain HTML: the view is one static HTML rendering (``text/html`` in the cell's output,
inline styles only, folding by ``<details>``), so it reads the same live, from a saved notebook,
in nbviewer and in an exported HTML file: a notebook saved with only ipywidgets' state shows
JupyterLab's broken-link icons where a widget model is missing. :meth:`DiffView.widget` wraps
the same HTML in an ipywidgets ``HTML`` for use inside other widget layouts.

Nothing here computes a difference: the rows come from :func:`moakit.runner.diff.diff` and the
steps from :meth:`TraceStore.steps`.
"""

from __future__ import annotations

import difflib
import html
import math
from typing import Any

from ..runner.diff import diff, group_roots

__all__ = ["DiffView", "STATUS_COLORS"]

STATUS_COLORS = {  # (text, background) of each status
    "same": ("#555", "transparent"),
    "changed input": ("#8a4b00", "#fff3cd"),
    "changed output": ("#6a1b9a", "#f3e5f5"),
    "only in a": ("#b71c1c", "#fde7e7"),
    "only in b": ("#1b5e20", "#e6f4ea"),
}
# JupyterLab's rendered-HTML styles right-align table cells: every cell says left
FONT = "font-family:var(--jp-ui-font-family, sans-serif);font-size:12px;line-height:1.4;text-align:left"
BORDER = "var(--jp-border-color2, #ddd)"
TD = f"vertical-align:top;text-align:left;border-bottom:1px solid {BORDER};padding:2px 4px"
MUTED = "var(--jp-ui-font-color2, #666)"
PRE = ("white-space:pre-wrap;word-break:break-word;margin:2px 0 4px 0;padding:3px 5px;font-size:11.5px;"
       "background:var(--jp-layout-color2, #f6f6f6);border-radius:3px;max-height:20em;overflow:auto;"
       "font-family:var(--jp-code-font-family, monospace)")


def esc(v: Any) -> str:
    """HTML-escaped text; ``$`` too (``&#36;``) so that no notebook renders "$0 -> $5" as TeX."""
    return html.escape("" if v is None else str(v)).replace("$", "&#36;")


def num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def money(v) -> str:
    v = num(v)
    if v is None:
        return "–"
    return "&#36;0" if v == 0 else (f"&#36;{v:.5f}" if abs(v) < 0.01 else f"&#36;{v:.4f}")


def badge(status: str) -> str:
    fg, bg = STATUS_COLORS.get(status, ("#333", "#eee"))
    return (f"<span class='moakit-diff-status' data-status='{esc(status)}' style='display:inline-block;"
            f"padding:0 6px;border-radius:8px;font-size:11px;color:{fg};background:{bg};"
            f"border:1px solid {fg}'>{esc(status)}</span>")


def diff_pre(text: str) -> str:
    """A unified diff with removed lines red and added lines green."""
    out = []
    for line in (text or "").splitlines():
        if line.startswith(("+++", "---")):
            out.append(f"<span style='color:{MUTED}'>{esc(line)}</span>")
        elif line.startswith("+"):
            out.append(f"<span style='background:#e6f4ea;color:#1b5e20'>{esc(line)}</span>")
        elif line.startswith("-"):
            out.append(f"<span style='background:#fde7e7;color:#b71c1c'>{esc(line)}</span>")
        elif line.startswith("@@"):
            out.append(f"<span style='color:#1565c0'>{esc(line)}</span>")
        else:
            out.append(esc(line))
    return f"<div style='{PRE}'>" + "\n".join(out) + "</div>"


def step_choice(step: dict) -> str:
    for k, label in (("permutation", "permutation"), ("kept", "kept"), ("rank_choice", "chose")):
        v = step.get(k)
        if isinstance(v, list):
            return f"{label} {v}"
    return ""


class DiffView:
    """Two runs (or two batches) side by side: ``DiffView(a, b, store=...)`` with what
    :func:`moakit.diff` takes, or ``DiffView(diff_df)`` with its result.

    Display it (last expression of a cell) or use :attr:`html` / :meth:`widget`. For code and
    tests: ``summary`` (the diff's sentence), ``pairs`` (per pair of runs, the aligned steps
    with their statuses), ``changed`` (the rows that are not ``same``)."""

    def __init__(self, a, b=None, *, store: Any = None, max_pairs: int = 20, max_chars: int = 4000, **diff_kwargs):

        if b is None and hasattr(a, "columns") and "status" in getattr(a, "columns", ()):
            self.df = a
        else:
            if b is None:
                raise TypeError("DiffView(a, b, store=...) compares two runs or batches; or pass moakit.diff's result")
            self.df = diff(a, b, store=store, **diff_kwargs)
        from ..store import open_store

        self.store = open_store(store if store is not None else self.df.attrs.get("store"), create=False)
        self.max_pairs, self.max_chars = max_pairs, max_chars
        self._steps: dict[str, list[dict]] = {}
        self._html: str | None = None

    # ---- state ------------------------------------------------------------------------------
    @property
    def summary(self) -> str:
        return self.df.attrs.get("summary", "")

    @property
    def changed(self):
        return self.df[self.df["status"] != "same"]

    def steps_of(self, trace_id: str | None) -> list[dict]:
        if trace_id is None:
            return []
        if trace_id not in self._steps:
            self._steps[trace_id] = self.store.steps(trace_id).to_dict("records")
        return self._steps[trace_id]

    @property
    def pairs(self) -> list[dict]:
        """Per pair of runs: trace ids and the aligned steps (a's step, b's step, statuses of their calls)."""
        out = []
        for (ta, tb), rows in self._groups():
            out.append({"trace_id_a": ta, "trace_id_b": tb, "steps": [
                {"a": None if sa is None else f"{sa['step_index']} {sa['step']}",
                 "b": None if sb is None else f"{sb['step_index']} {sb['step']}",
                 "changed": changed, "statuses": sorted(set(r["status"] for r in calls))}
                for sa, sb, calls, changed in self._aligned(ta, tb, rows)]})
        return out

    def _groups(self):
        df = self.df
        keys = list(dict.fromkeys(zip(df["trace_id_a"], df["trace_id_b"])))
        for ta, tb in keys:
            mask = (df["trace_id_a"].fillna("") == (ta or "")) & (df["trace_id_b"].fillna("") == (tb or ""))
            yield (ta if isinstance(ta, str) else None, tb if isinstance(tb, str) else None), \
                df[mask].to_dict("records")

    def _aligned(self, ta, tb, rows):
        """(step of a, step of b, the diff rows of their calls, whether the pair changed)."""
        sa, sb = self.steps_of(ta), self.steps_of(tb)
        ka, kb = [s["step"] for s in sa], [s["step"] for s in sb]
        matcher = difflib.SequenceMatcher(None, ka, kb, autojunk=False)
        pairs = []
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal" or op == "replace":
                n = max(i2 - i1, j2 - j1)
                for k in range(n):
                    pairs.append((sa[i1 + k] if i1 + k < i2 else None, sb[j1 + k] if j1 + k < j2 else None))
            elif op == "delete":
                pairs += [(s, None) for s in sa[i1:i2]]
            else:
                pairs += [(None, s) for s in sb[j1:j2]]
        out = []
        for a, b in pairs:
            ia = None if a is None else a["step_index"]
            ib = None if b is None else b["step_index"]
            calls = [r for r in rows if (ia is not None and r["step_index_a"] == ia) or
                     (ib is not None and r["step_index_b"] == ib)]
            changed = any(r["status"] != "same" for r in calls) or a is None or b is None or \
                (step_choice(a) != step_choice(b))
            out.append((a, b, calls, changed))
        return out

    # ---- drawing ----------------------------------------------------------------------------
    @property
    def html(self) -> str:
        if self._html is None:
            self._html = self.render()
        return self._html

    def render(self) -> str:
        counts = self.df["status"].value_counts()
        legend = " ".join(f"{badge(s)} {int(counts.get(s, 0))}" for s in STATUS_COLORS)
        # tex2jax_ignore / mathjax_ignore: JupyterLab typesets $...$ in HTML outputs unless told not to
        parts = [f"<div class='moakit-diff tex2jax_ignore mathjax_ignore' style='{FONT}'>",
                 f"<div style='margin-bottom:6px'><b>moakit diff</b> · {esc(self.summary)}</div>",
                 f"<div style='margin-bottom:6px'>{legend}</div>"]
        groups = list(self._groups())
        runs = self.df.attrs.get("runs")
        for k, ((ta, tb), rows) in enumerate(groups[:self.max_pairs]):
            body = self.pair_html(ta, tb, rows, runs.iloc[k] if runs is not None and k < len(runs) else None)
            if len(groups) > 1:
                changed = sum(r["status"] != "same" for r in rows)
                item = rows[0].get("item_a") if rows else None
                title = (f"prompt {esc(item)} · {changed} of {len(rows)} calls changed" if changed else
                         f"prompt {esc(item)} · all {len(rows)} calls same")
                parts.append(f"<details class='moakit-diff-pair' {'open' if changed else ''} "
                             f"style='margin:4px 0'><summary>{title}</summary>{body}</details>")
            else:
                parts.append(body)
        if len(groups) > self.max_pairs:
            parts.append(f"<div style='color:{MUTED}'>… {len(groups) - self.max_pairs} more pairs of runs "
                         f"(DiffView(..., max_pairs=...))</div>")
        parts.append("</div>")
        return "".join(parts)

    def pair_html(self, ta, tb, rows, run) -> str:
        head = ""
        if run is not None:
            same_out = "answers equal" if run["output_same"] else "<b>answers differ</b>"
            head = (f"<div style='color:{MUTED};margin:2px 0 4px 0'>{same_out} · cost {money(run['cost_usd_a'])} → "
                    f"{money(run['cost_usd_b'])}</div>")
        cols = (f"<tr><th style='width:50%;text-align:left;border-bottom:2px solid {BORDER}'>a · run "
                f"<code>{esc((ta or '–')[:12])}</code></th><th style='width:50%;text-align:left;"
                f"border-bottom:2px solid {BORDER}'>b · run <code>{esc((tb or '–')[:12])}</code></th></tr>")
        trs = []
        for sa, sb, calls, changed in self._aligned(ta, tb, rows):
            bg = "background:#fffbe6;" if changed else ""
            trs.append(f"<tr class='moakit-diff-step' data-changed='{'1' if changed else '0'}' style='{bg}'>"
                       f"<td style='{TD}'>{self.side_html(sa, sb, calls, changed, 'a')}</td>"
                       f"<td style='{TD}'>{self.side_html(sb, sa, calls, changed, 'b')}</td></tr>")
        return (f"{head}<table class='moakit-diff-runs' style='width:100%;table-layout:fixed;border-collapse:collapse'>"
                f"{cols}{''.join(trs)}</table>")

    def side_html(self, step, other, calls, changed, side) -> str:
        if step is None:
            kind = other["step"] if other else "step"
            return (f"<div style='color:{MUTED};font-style:italic'>no {esc(kind)} here "
                    f"({'only in b' if side == 'a' else 'only in a'})</div>")
        idx = step["step_index"]
        mine = [r for r in calls if r[f"step_index_{side}"] == idx]
        n_changed = sum(r["status"] != "same" for r in mine)
        choice = step_choice(step)
        what = f" · {esc(choice)}" if choice else ""
        if mine:
            what += f" · {len(mine)} call{'s' if len(mine) != 1 else ''}"
            what += f", <b>{n_changed} changed</b>" if n_changed else ", all same"
        title = f"<b>step {idx} · {esc(step['step'])}</b>{what}"
        if other is not None and choice and step_choice(other) != choice:
            title += f" <span style='color:#8a4b00'>(other run: {esc(step_choice(other) or 'no choice')})</span>"
        rows = "".join(self.call_html(r, side) for r in mine)
        table = f"<table style='width:100%;border-collapse:collapse'>{rows}</table>" if rows else ""
        return (f"<details class='moakit-diff-stepbox' {'open' if changed else ''}>"
                f"<summary>{title}</summary>{table}</details>")

    def call_html(self, r: dict, side: str) -> str:
        status = r["status"]
        fg, bg = STATUS_COLORS.get(status, ("#333", "transparent"))
        present = r[f"span_id_{side}"] is not None and r[f"span_id_{side}"] == r[f"span_id_{side}"]
        if not present:
            return (f"<tr class='moakit-diff-call' data-status='{esc(status)}'><td style='color:{MUTED};"
                    f"font-style:italic;padding:1px 4px;text-align:left'>{esc(r['agent'])}#{r['sample']}: not in this run</td></tr>")
        cached = " <span style='color:#2e7d32;font-size:11px'>cached</span>" if r[f"cached_{side}"] else ""
        tok_in, tok_out = num(r[f"input_tokens_{side}"]), num(r[f"output_tokens_{side}"])
        tokens = f"{'–' if tok_in is None else int(tok_in)}→{'–' if tok_out is None else int(tok_out)} tok"
        line = (f"<b>{esc(r['agent'])}#{r['sample']}</b> {badge(status)}{cached} "
                f"<span style='color:{MUTED}'>{tokens} · {money(r[f'cost_usd_{side}'])}</span>")
        detail = ""
        if status != "same" and side == "b" or status == "only in a":
            bits = []
            if r.get("cause"):
                bits.append(f"<div><b>cause</b>: {esc(r['cause'])}</div>")
            if r.get("root_cause") and r.get("cause_kind") == "upstream":
                bits.append(f"<div><b>began at</b>: {esc(', '.join(group_roots(r['root_cause'])))}</div>")
            if r.get("request_changes"):
                bits.append(f"<div><b>request</b>: {esc(', '.join(r['request_changes']))}</div>")
            for col, label in (("prompt_diff", "prompt"), ("output_diff", "output")):
                if r.get(col):
                    text = r[col] if len(r[col]) <= self.max_chars else r[col][:self.max_chars] + "\n…"
                    bits.append(f"<details {'open' if col == 'prompt_diff' else ''}><summary>{label} diff</summary>"
                                f"{diff_pre(text)}</details>")
            detail = "".join(bits)
        elif status == "same":
            out = r[f"output_{side}"] or ""
            detail = ""
            line += f" <span style='color:{MUTED}'>{esc(out[:60])}{'…' if len(out) > 60 else ''}</span>"
        else:
            out = r[f"output_{side}"] or ""
            detail = f"<div style='color:{MUTED}'>{esc(out[:200])}{'…' if len(out) > 200 else ''}</div>"
        return (f"<tr class='moakit-diff-call' data-status='{esc(status)}' style='background:{bg}'>"
                f"<td style='padding:1px 4px;text-align:left;border-left:3px solid {fg}'>{line}{detail}</td></tr>")

    # ---- display ----------------------------------------------------------------------------
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self.html, "text/plain": f"DiffView: {self.summary}"}

    def widget(self):
        """The same HTML in an ipywidgets ``HTML`` (class ``moakit-diff-widget``), for layouts."""
        import ipywidgets as w

        h = w.HTML(value=self.html)
        h.add_class("moakit-diff-widget")
        return h
