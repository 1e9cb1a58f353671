"""Positional-bias view: how much more (or less) often than chance aggregating calls draw on the
response at each position (or from each source agent), with simultaneous 95% intervals.

``BiasView(df)`` takes the DataFrame of :func:`moakit.analysis.positional_bias` (columns
``measure, variant, step, randomized, design, position | agent, n, share, chance, excess,
ci_low, ci_high, p_value, cramers_v, ...`` and ``attrs["blocks"]``, ``attrs["excluded"]``).
Three outputs:

1. **the reading**: one plain sentence per block leading with the excess the chart draws (the
   largest, with its interval and p-value), what a fixed order means, and every call left out
   with its reason; the analysis' own fuller reading folded under it;
2. **the chart**: ``excess`` (0 when position does not matter, dashed; 1 when it is always the
   one drawn on) with its interval; filled marks where the order was randomized (an effect,
   tested), open marks where it never was (a description: position and agent are tangled
   there, no p-value); blocks side by side in colours; tooltips define every figure; clicking a
   point highlights it and its row of the figures under the chart;
3. **the table**: every number, with column names in words and a key (sortable and filterable
   with a kernel).

The view draws what it is given: the statistics come from :mod:`moakit.analysis`.
"""

from __future__ import annotations

from typing import Any

from .display import Part, View
from .html import as_float, as_int, count, esc, interval, isnull, p_text, reading_block
from .table import Column, Table

BLOCK_COLUMNS = ("variant", "measure", "step", "aggregator", "randomized")
DESIGN = {"shuffled": "order randomized by Shuffle", "exchangeable": "exchangeable samples of one agent",
          "fixed": "order never randomized"}


def analysis_reading(df) -> str | None:
    """The analysis' own reading of its result (``moakit.analysis.reading``), or
    ``df.attrs["reading"]``: a reading is a courtesy, and a view of any frame still draws."""
    try:
        from ..analysis import reading

        return reading(df)
    except Exception:  # noqa: BLE001
        return df.attrs.get("reading") if hasattr(df, "attrs") else None


def bias_columns(x: str) -> list[Column]:
    what = "position" if x == "position" else "source agent"
    return [
        Column("variant", "variant", "the pipeline variant (run_batch's name=)", "text"),
        Column("measure", "measured", "copied: the aggregating output drew on the response; kept: Rank kept it",
               "text"),
        Column("step", "step", "the aggregating step analysed", "text"),
        Column("aggregator", "aggregator", "the agent that aggregated", "text"),
        Column("position", "position shown", "1 is the first response in the aggregating prompt", "int"),
        Column("agent", "source agent", "the agent whose response was shown", "text"),
        Column("n", "calls", f"attributed calls that were shown this {what}", "int"),
        Column("share", "drawn-on share", f"the fraction of those calls that drew on this {what}", "num", 2),
        Column("chance", "chance share", "the share expected if it did not matter (1 / responses shown; kept / "
               "shown for Rank)", "num", 2),
        Column("excess", "excess over chance", "(share − chance) / (1 − chance): 0 when it does not matter, 1 "
               "when it is always the one drawn on, negative when drawn on less than chance (no unit)", "num", 2),
        Column("ci", "95% interval", "simultaneous over the block's rows: together they cover the true excesses "
               "95% of the time; excludes 0 exactly when p ≤ 0.05", "interval", 2, lo="ci_low", hi="ci_high"),
        Column("p_value", "p (adjusted)", "max-T adjusted p-value over the block (the Shuffle permutations "
               "re-drawn); – where the order was never randomized: no test there", "p"),
        Column("randomized", "order randomized", "yes: a Shuffle (or exchangeable samples) drew the order, so "
               "excess is an effect; no: a description only", "bool"),
        Column("cramers_v", "position–agent tangle", "Cramér's V of position × source agent among the calls: 1 "
               "when each position always holds the same agent (then position and agent cannot be told apart)",
               "num", 2),
    ]


def _block_label(col: str, value) -> str:
    if col == "randomized":
        return "randomized" if bool(value) else "fixed order"
    return str(value)


def _status_words(status: dict) -> str:
    """'1 of 10 calls attributed; 9 left out: 7 unattributed (a blend of several responses), …'."""
    total = sum(status.values())
    used = sum(v for k, v in status.items() if k in ("attributed", "kept"))
    left = {k: v for k, v in status.items() if k not in ("attributed", "kept")}
    verb = "ranked" if "kept" in status else "attributed"
    if not left:
        return f"{used} of {count(total, 'call')} {verb}"
    why = "; ".join(f"{v} {k.replace('unattributed: ', 'unattributed (').replace('not attributable: ', 'not attributable (')}"
                    + (")" if ":" in k else "") for k, v in sorted(left.items(), key=lambda kv: -kv[1]))
    return f"{used} of {count(total, 'call')} {verb}; {sum(left.values())} left out: {why}"


class BiasView(View):
    """Reading, chart and table of a positional-bias result.

    State: ``table`` (the DataFrame drawn), ``reading`` (the analysis' own reading),
    ``lines`` (the view's plain sentences), ``x`` (``position`` or ``agent``), ``block``
    (per-row label of the block a row belongs to, or None when there is one block), ``spec``
    (the Vega-Lite dict), ``figures`` (the :class:`~moakit.widgets.table.Table`)."""

    css_class = "moakit-bias"

    def __init__(self, df, reading: str | None = None, *, title: str | None = None, y: str = "excess",
                 reference: float | None = None):
        needed = {y, "ci_low", "ci_high"}
        if not needed <= set(df.columns) or not ({"position", "agent"} & set(df.columns)):
            raise ValueError(f"the positional-bias DataFrame needs position (or agent), {y}, ci_low, ci_high; "
                             f"it has {list(df.columns)} (give the output of moakit.analysis.positional_bias)")
        self.table = df.reset_index(drop=True)
        self.attrs = dict(getattr(df, "attrs", {}) or {})
        self.y = y
        self.x = "position" if _nonnull(self.table, "position") or not _nonnull(self.table, "agent") else "agent"
        varying = [c for c in BLOCK_COLUMNS if c in self.table.columns
                   and self.table[c].astype(str).nunique(dropna=False) > 1]
        self.block = None
        if varying:
            self.block = [" · ".join(_block_label(c, r[c]) for c in varying if not isnull(r[c]))
                          for r in self.table[varying].to_dict("records")]
        self.reference = reference if reference is not None else (0.0 if y == "excess" else None)
        self.reading = reading if reading is not None else analysis_reading(df)
        self.title = title or f"{'Excess over chance' if y == 'excess' else y} by " \
                              f"{'source agent' if self.x == 'agent' else 'position shown'}"
        shown = [c for c in bias_columns(self.x) if c.name not in ("position", "agent") or c.name == self.x]
        keep = {c for c in BLOCK_COLUMNS if c in self.table.columns and self.table[c].notna().any()
                and self.table[c].astype(str).nunique() > 1}
        cols = [c for c in shown if c.name not in BLOCK_COLUMNS or c.name in keep or c.name == "randomized"]
        self.figures = Table(self.table, cols, title="The figures", on_change=lambda: self.refresh(["table"]))

    # ---- words -----------------------------------------------------------------------------
    def _name(self, r: dict) -> str:
        return f"position {as_int(r['position'])}" if self.x == "position" else f"agent {r['agent']}"

    @property
    def lines(self) -> list[str]:
        """Plain sentences: each block's largest excess (what the chart draws) with its interval
        and p-value; what a fixed order means; every call left out and why."""
        out = []
        rows = self.table.to_dict("records")
        blocks = self.attrs.get("blocks") or []
        groups: dict[tuple, list] = {}
        for r in rows:
            groups.setdefault((r.get("measure"), r.get("variant"), bool(r.get("randomized")), r.get("step"),
                               r.get("aggregator") if not isnull(r.get("aggregator")) else None), []).append(r)
        verb_of = {"kept": "kept by Rank", "copied": "drawn on"}
        for key, g in groups.items():
            measure, variant, randomized, step, agg = key
            design = DESIGN.get(str(g[0].get("design")), str(g[0].get("design") or ""))
            who = f"{esc(variant)}, {esc(step)}" + (f" ({esc(agg)})" if agg else "")
            top = max((r for r in g if as_float(r.get(self.y)) is not None), key=lambda r: abs(float(r[self.y])),
                      default=None)
            if top is None:
                out.append(f"<b>{who}</b> ({esc(design)}): nothing to estimate.")
                continue
            est = f"excess {float(top[self.y]):.2f}, 95% interval {interval(top['ci_low'], top['ci_high'])}"
            verb = verb_of.get(measure, "drawn on")
            if randomized:
                sig = not isnull(top.get("p_value")) and float(top["p_value"]) <= 0.05
                if sig:
                    more = "more" if float(top[self.y]) > 0 else "less"
                    out.append(f"<b>{who}</b> ({esc(design)}): {self._name(top)} is {verb} {more} often than "
                               f"chance ({est}, {p_text(top['p_value'])}).")
                else:
                    out.append(f"<b>{who}</b> ({esc(design)}): no {self.x if self.x == 'position' else 'agent'} is "
                               f"{verb} clearly more or less often than chance; the largest excess is "
                               f"{self._name(top)}'s ({est}, {p_text(top['p_value'])}).")
            else:
                v = as_float(top.get("cramers_v"))
                tangle = (f"each position mostly holds the same agent (Cramér's V {v:.2f})" if v is not None else
                          "the order was the same in every call")
                out.append(f"<b>{who}</b> ({esc(design)}): {self._name(top)} is {verb} most ({est}), but "
                           f"{tangle}, so this describes the agents shown there as much as the positions: not a "
                           f"position effect, and not tested. Add Shuffle before the step to separate them.")
            b = next((b for b in blocks if b.get("variant") == variant and b.get("measure") == measure
                      and bool(b.get("randomized")) == randomized and b.get("step") == step), None)
            if b and b.get("status"):
                out.append(f"<span style='margin-left:1em'>Calls: {esc(_status_words(b['status']))}.</span>")
        for b in blocks:  # blocks with no row: nothing could be attributed
            if not any(r.get("variant") == b.get("variant") and r.get("measure") == b.get("measure")
                       and bool(r.get("randomized")) == bool(b.get("randomized")) for r in rows):
                out.append(f"<b>{esc(b.get('variant'))}, {esc(b.get('step'))}</b>: no call could be attributed to "
                           f"one response ({esc(_status_words(b.get('status') or {}))}): nothing to estimate.")
        excluded = self.attrs.get("excluded") or {}
        if excluded:
            out.append("Left out before attribution: " + "; ".join(
                f"{count(v, 'call')} {esc(k)}" for k, v in sorted(excluded.items(), key=lambda kv: -kv[1])) + ".")
        if not rows and not blocks:
            out.append("No aggregating call to analyse.")
        return out

    # ---- the chart -------------------------------------------------------------------------
    def chart(self):
        import altair as alt
        import pandas as pd

        if len(self.table) == 0:
            return None
        data = self.table.copy()
        data = data[[c for c in data.columns if c != "aggregator" or data[c].notna().any()]]
        data[self.x] = data[self.x].astype(str)
        data["order"] = ["randomized" if r else "fixed order (not an effect)"
                         for r in data.get("randomized", pd.Series(True, index=data.index))]
        data["block"] = self.block if self.block else "all calls"
        data["interval"] = [interval(lo, hi) for lo, hi in zip(data["ci_low"], data["ci_high"])]
        data["p"] = [p_text(p) if not isnull(p) else "no test (fixed order)" for p in data.get(
            "p_value", pd.Series(float("nan"), index=data.index))]
        data["row"] = [f"{b} · {self.x} {v}" for b, v in zip(data["block"], data[self.x])]
        color = alt.Color("block:N", title=None, legend=alt.Legend(orient="top", direction="horizontal")) \
            if self.block else alt.value("#1f5fa8")
        offset = {"xOffset": alt.XOffset("block:N")} if self.block else {}
        order = list(dict.fromkeys(data[self.x]))
        pick = alt.selection_point(fields=["row"], on="click", clear="dblclick")
        tips = [alt.Tooltip(f"{self.x}:N", title="position shown" if self.x == "position" else "source agent"),
                alt.Tooltip("block:N", title="block"),
                alt.Tooltip(f"{self.y}:Q", title="excess over chance ((share − chance)/(1 − chance); 0 = no effect)",
                            format=".2f"),
                alt.Tooltip("interval:N", title="95% simultaneous interval"),
                alt.Tooltip("p:N", title="p-value (adjusted over the block)"),
                alt.Tooltip("share:Q", title="share of calls drawing on it", format=".2f"),
                alt.Tooltip("chance:Q", title="share expected by chance", format=".2f"),
                alt.Tooltip("n:Q", title="attributed calls shown it"),
                alt.Tooltip("order:N", title="order")]
        x = alt.X(f"{self.x}:O", title="position shown (1 = first)" if self.x == "position" else "source agent",
                  sort=order, axis=alt.Axis(labelAngle=0, labelLimit=120))
        base = alt.Chart(data).encode(x=x, color=color, tooltip=tips, **offset)
        dim = alt.condition(pick, alt.value(1.0), alt.value(0.25))
        randomized = alt.datum.order == "randomized"
        y_scale = alt.Scale(domain=[min(-1.0, float(data["ci_low"].min())), 1.0]) if self.y == "excess" else \
            alt.Undefined
        layers = [base.mark_rule(strokeWidth=2).encode(
                      y=alt.Y("ci_low:Q", title="excess over chance (0 = no effect, 1 = always)", scale=y_scale),
                      y2="ci_high:Q", opacity=dim),
                  base.transform_filter(randomized).mark_point(filled=True, size=80).encode(
                      y=f"{self.y}:Q", opacity=dim).add_params(pick),
                  base.transform_filter(~randomized).mark_point(filled=False, size=80, strokeWidth=2)
                  .encode(y=f"{self.y}:Q", opacity=dim)]
        if self.reference is not None:
            layers.insert(0, alt.Chart(pd.DataFrame({"no_effect": [self.reference]})).mark_rule(
                strokeDash=[5, 4], color="#888").encode(y="no_effect:Q"))
        sub = ["95% simultaneous intervals; dashed line: no effect; click a point to find its figures below"]
        if (data["order"] != "randomized").any():
            sub.append("open marks: order never randomized (a description, not an effect)")
        main = alt.layer(*layers).properties(width="container", height=240,
                                             title=alt.TitleParams(self.title, subtitle=sub, anchor="start"))
        return alt.vconcat(main, self._figures_chart(data, pick)).properties(
            autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))

    def _figures_chart(self, data, pick):
        """The chart's rows as a small table under it: the row of a clicked point stands out."""
        from .chart import linked_rows

        return linked_rows(data, pick, [("row", "row", 0, None), (self.y, "excess", 230, ".2f"),
                                        ("interval", "95% interval", 300, None), ("p", "p-value", 420, None)])

    @property
    def spec(self) -> dict[str, Any] | None:
        from .chart import chart_spec

        c = self.chart()
        return None if c is None else chart_spec(c)

    # ---- parts -------------------------------------------------------------------------------
    def reading_html(self) -> str:
        return reading_block(self.lines, self.reading)

    def parts(self) -> list[Part]:
        out = [Part("reading", "html", static=self.reading_html)]
        if len(self.table):
            out += [Part("chart", "chart", chart=self.chart),
                    Part("table", "live", static=self.figures.static_html, widget=self.figures.widget)]
        return out

    def __repr__(self) -> str:
        return f"BiasView({len(self.table)} rows by {self.x}: {self.reading or ''})"


def _nonnull(df, col) -> bool:
    return col in df.columns and df[col].notna().any()
