"""Ablation view (and the aggregator-vs-proposer impact view): scores with their intervals,
what each variant cost (calls paid and reused, tokens, dollars), the table of every number with
a key, and a reading in plain sentences.

``AblationView(df)`` takes the DataFrame of :func:`moakit.analysis.ablate` (columns ``variant,
score, ci_low, ci_high, delta, delta_ci_low, delta_ci_high, p_value, p_holm, n, errors,
calls_paid, calls_reused, input_tokens, output_tokens, cost_usd``). ``ImpactView(result)``
takes what :func:`moakit.analysis.impact` returns. They draw; the statistics come from
:mod:`moakit.analysis`.
"""

from __future__ import annotations

from typing import Any

from .bias import analysis_reading
from .display import Part, View
from .html import as_float, as_int, count, esc, interval, isnull, money, p_text, reading_block
from .table import Column, Table


def ablation_columns(baseline: str, scorer: str | None) -> list[Column]:
    unit = f"the scorer's scale ({scorer})" if scorer else "the scorer's scale"
    return [
        Column("variant", "variant", "the pipeline variant", "text"),
        Column("score", "mean score", f"the variant's mean score over the prompts, in {unit}", "num", 3),
        Column("ci", "95% interval", "of the mean score", "interval", 3, lo="ci_low", hi="ci_high"),
        Column("delta", f"difference from {baseline}", f"mean paired difference, variant − {baseline}, per prompt",
               "num", 3),
        Column("dci", "95% interval of the difference", "inverts the sign-flip test: excludes 0 exactly when "
               "p < 0.05 (per comparison, not simultaneous)", "interval", 3, lo="delta_ci_low", hi="delta_ci_high"),
        Column("p_value", "p", "sign-flip test of the paired difference", "p"),
        Column("p_holm", "p (Holm)", "the p-value adjusted over every comparison with the baseline (Holm): "
               "reject where below 0.05 to keep the family-wise error at 5%", "p"),
        Column("n", "prompts", "prompts scored (a prompt's score is its mean over repeats)", "int"),
        Column("errors", "failed runs", "runs with no answer; they score as the analysis' error_score "
               "(0 by default)", "int"),
        Column("calls_paid", "calls paid", "LLM calls sent to a model for this variant", "int"),
        Column("calls_reused", "calls reused", "calls served from the trace store (identical upstream calls of "
               "another variant): not paid for", "int"),
        Column("input_tokens", "input tokens", "summed over the variant's calls", "int"),
        Column("output_tokens", "output tokens", "summed over the variant's calls", "int"),
        Column("cost_usd", "cost", "US dollars paid ($0 for the embedded model and reused calls)", "money"),
    ]


class AblationView(View):
    """Reading, charts (score with its interval and the figures under it; calls paid and reused;
    tokens) and the table of an ablation. State: ``table``, ``reading`` (the analysis' own),
    ``lines`` (the view's sentences), ``spec`` (the score chart's Vega-Lite dict), ``variants``
    (in the order drawn), ``baseline``, ``figures`` (the Table)."""

    css_class = "moakit-ablation"

    def __init__(self, df, reading: str | None = None, *, title: str | None = None, variant: str = "variant",
                 score: str = "score"):
        missing = [c for c in (variant, score) if c not in df.columns]
        if missing:
            raise ValueError(f"the ablation DataFrame lacks {missing}; it has {list(df.columns)} "
                             "(give the output of moakit.analysis.ablate)")
        self.table = df.reset_index(drop=True)
        self.attrs = dict(getattr(df, "attrs", {}) or {})
        self.variant, self.score = variant, score
        self.variants = [str(v) for v in self.table[variant]]
        self.baseline = str(self.attrs.get("baseline") or (self.variants[0] if self.variants else ""))
        self.scorer = self.attrs.get("scorer") or (self.table["scorer"].iloc[0] if "scorer" in self.table.columns
                                                   and len(self.table) else None)
        self.reading = reading if reading is not None else analysis_reading(df)
        self.title = title or "Mean score of each variant"
        cols = ablation_columns(self.baseline, self.scorer)
        if variant != "variant":
            cols[0] = Column(variant, variant, "the pipeline variant", "text")
        if score != "score":
            cols[1] = Column(score, score, "the variant's mean", "num", 3)
        self.figures = Table(self.table, cols, title="The figures", on_change=lambda: self.refresh(["table"]))

    @property
    def lines(self) -> list[str]:
        """The baseline's score, then each variant's difference from it, in plain sentences;
        failed runs counted."""
        rows = {str(r[self.variant]): r for r in self.table.to_dict("records")}
        if not rows:
            return ["No variant to compare."]
        b = rows.get(self.baseline) or next(iter(rows.values()))
        n = as_int(b.get("n"))
        out = [f"<b>{esc(self.baseline)}</b> (the baseline) scores {float(b[self.score]):.2f} on average "
               f"(95% interval {interval(b.get('ci_low'), b.get('ci_high'))}"
               + (f", {count(n, 'prompt')}" if n else "") + ")."]
        for name, r in rows.items():
            if name == self.baseline:
                continue
            d = as_float(r.get("delta"))
            if d is None:
                out.append(f"<b>{esc(name)}</b> scores {float(r[self.score]):.2f}.")
                continue
            ph = as_float(r.get("p_holm"))
            verdict = ("clearly higher" if d > 0 else "clearly lower") if ph is not None and ph < 0.05 else \
                "not clearly different"
            holm = f", Holm-adjusted {p_text(ph)}" if ph is not None else ""
            out.append(f"<b>{esc(name)}</b> scores {float(r[self.score]):.2f}, {d:+.2f} against {esc(self.baseline)} "
                       f"(95% interval {interval(r.get('delta_ci_low'), r.get('delta_ci_high'))}; "
                       f"{p_text(r.get('p_value'))}{holm}): {verdict}.")
        paid = [f"{esc(k)} {as_int(r.get('calls_paid')) or 0:,} paid, {as_int(r.get('calls_reused')) or 0:,} reused"
                for k, r in rows.items() if "calls_paid" in r]
        if paid:
            out.append("Calls: " + "; ".join(paid) + ".")
        failed = {k: as_int(r.get("errors")) or 0 for k, r in rows.items() if "errors" in r}
        if any(failed.values()):
            out.append("Failed runs (no answer; scored as the analysis' error_score, 0 by default): "
                       + ", ".join(f"{esc(k)} {v}" for k, v in failed.items()) + ".")
        elif failed:
            out.append("No run failed: every prompt of every variant is scored.")
        return out

    def chart(self):
        import altair as alt

        from .chart import linked_rows

        data = self.table.copy()
        data[self.variant] = data[self.variant].astype(str)
        data["row"] = data[self.variant]
        has_ci = {"ci_low", "ci_high"} <= set(data.columns)
        data["interval"] = [interval(lo, hi) for lo, hi in zip(data["ci_low"], data["ci_high"])] if has_ci else "–"
        data["vs_base"] = [("baseline" if v == self.baseline else
                            ("–" if isnull(d) else f"{d:+.2f}" + (f" (Holm {p_text(ph)})" if not isnull(ph) else "")))
                           for v, d, ph in zip(data[self.variant], data.get("delta", [None] * len(data)),
                                               data.get("p_holm", [None] * len(data)))]
        pick = alt.selection_point(fields=["row"], on="click", clear="dblclick")
        y = alt.Y(f"{self.variant}:N", sort=self.variants, title=None)
        tips = [alt.Tooltip(f"{self.variant}:N", title="variant"),
                alt.Tooltip(f"{self.score}:Q", title=f"mean score ({self.scorer or 'scorer'})", format=".3f"),
                alt.Tooltip("interval:N", title="95% interval of the mean"),
                alt.Tooltip("vs_base:N", title=f"difference from {self.baseline}")]
        base = alt.Chart(data).encode(y=y, tooltip=tips)
        dim = alt.condition(pick, alt.value(1.0), alt.value(0.3))
        x_title = f"mean score ({self.scorer})" if self.scorer else "mean score"
        x = alt.X(f"{self.score}:Q", title=x_title,
                  axis=alt.Axis(format=".2f", tickCount=6, labelOverlap=True))
        layers = []
        if has_ci:
            layers.append(base.mark_rule(strokeWidth=2, color="#1f5fa8").encode(
                x=alt.X("ci_low:Q", title=x_title, axis=alt.Axis(format=".2f", tickCount=6, labelOverlap=True)),
                x2="ci_high:Q", opacity=dim))
        layers.append(base.mark_point(filled=True, size=90, color="#1f5fa8").encode(x=x, opacity=dim)
                      .add_params(pick))
        main = alt.layer(*layers).properties(
            width="container", height=max(60, 30 * len(data)),
            title=alt.TitleParams(self.title, anchor="start",
                                  subtitle="95% intervals; click a variant to find its figures below"))
        rows = linked_rows(data, pick, [("row", "variant", 0, None), (self.score, "mean score", 160, ".3f"),
                                        ("interval", "95% interval", 240, None),
                                        ("vs_base", f"difference from {self.baseline}", 360, None)])
        return alt.vconcat(main, rows).properties(autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))

    def cost_chart(self):
        """Calls paid and reused, and input and output tokens, per variant."""
        import altair as alt

        data = self.table.copy()
        data[self.variant] = data[self.variant].astype(str)
        y = alt.Y(f"{self.variant}:N", sort=self.variants, title=None)
        charts = []
        if {"calls_paid", "calls_reused"} <= set(data.columns):
            calls = data.melt(id_vars=[self.variant], value_vars=["calls_paid", "calls_reused"], var_name="calls",
                              value_name="count")
            calls["calls"] = calls["calls"].str.replace("calls_", "", regex=False)
            charts.append(alt.Chart(calls).mark_bar().encode(
                y=y, x=alt.X("count:Q", stack="zero", title="calls", axis=alt.Axis(tickMinStep=1, labelOverlap=True)),
                color=alt.Color("calls:N", scale=alt.Scale(domain=["paid", "reused"], range=["#e07b39", "#5aa469"]),
                                title=None, legend=alt.Legend(orient="top")),
                tooltip=[alt.Tooltip(f"{self.variant}:N", title="variant"),
                         alt.Tooltip("calls:N", title="paid (sent to a model) or reused (from the store)"),
                         alt.Tooltip("count:Q", title="calls")]).properties(
                width=260, height=max(60, 26 * len(data)), title="Calls paid and reused"))
        tok = [c for c in ("input_tokens", "output_tokens") if c in data.columns]
        if tok:
            t = data.melt(id_vars=[self.variant], value_vars=tok, var_name="tokens", value_name="count")
            t["tokens"] = t["tokens"].str.replace("_tokens", "", regex=False)
            charts.append(alt.Chart(t).mark_bar().encode(
                y=y, x=alt.X("count:Q", stack="zero", title="tokens", axis=alt.Axis(format="~s", labelOverlap=True)),
                color=alt.Color("tokens:N", scale=alt.Scale(domain=["input", "output"], range=["#8da0cb", "#1f5fa8"]),
                                title=None, legend=alt.Legend(orient="top")),
                tooltip=[alt.Tooltip(f"{self.variant}:N", title="variant"),
                         alt.Tooltip("tokens:N", title="input (sent) or output (received)"),
                         alt.Tooltip("count:Q", title="tokens", format=",")]).properties(
                width=260, height=max(60, 26 * len(data)), title="Tokens"))
        if not charts:
            return None
        return alt.hconcat(*charts).resolve_scale(color="independent")

    @property
    def spec(self) -> dict[str, Any]:
        """The chart's Vega-Lite spec as it is emitted (:func:`moakit.widgets.chart.chart_spec`)."""
        from .chart import chart_spec

        return chart_spec(self.chart())

    def table_columns(self) -> list[str]:
        return [c.name for c in self.figures.columns]

    def reading_html(self) -> str:
        return reading_block(self.lines, self.reading)

    def parts(self) -> list[Part]:
        return [Part("reading", "html", static=self.reading_html), Part("chart", "chart", chart=self.chart),
                Part("cost", "chart", chart=self.cost_chart),
                Part("table", "live", static=self.figures.static_html, widget=self.figures.widget)]

    def __repr__(self) -> str:
        return f"AblationView({len(self.table)} variants: {self.reading or ''})"


# ---- aggregator vs proposers ------------------------------------------------------------------
EFFECT_COLUMNS = [
    Column("factor", "factor", "aggregator, proposers, or their ratio", "text"),
    Column("arm", "arm", "the paper design's arm the effect is measured in", "text"),
    Column("score", "effect", "the standard deviation of the factor's level means, debiased (sampling noise "
           "subtracted); ratio: aggregator effect / proposer effect (moakit's own statistic)", "num", 3),
    Column("ci", "95% interval", "excludes 0 exactly when the permutation test rejects; the ratio's is Fieller's",
           "interval", 3, lo="ci_low", hi="ci_high"),
    Column("n", "prompts", "prompts in the arm", "int"),
    Column("p_value", "p", "permutation test of no effect", "p"),
]
CONTRAST_COLUMNS = [
    Column("factor", "factor", "which choice is compared", "text"),
    Column("pair", "pair", "level − other level", "text"),
    Column("score", "difference", "difference in mean score", "num", 3),
    Column("ci", "95% interval", "simultaneous over the factor's pairs (max-t permutation)", "interval", 3,
           lo="ci_low", hi="ci_high"),
    Column("p_value", "p (adjusted)", "max-t adjusted over the factor's pairs", "p"),
]


class ImpactView(View):
    """The aggregator-vs-proposer result of :func:`moakit.analysis.impact`: the score of every
    cell as a heat map, each level's mean with its 95% interval, every pairwise contrast with its
    simultaneous 95% interval, each factor's effect (the debiased SD of its level means) with
    its interval; the MoA paper's Table 4 layout with the paper's figures (paper design) and the
    effects and contrasts tables; the reading above.

    State: ``table`` (the impact DataFrame), ``table4`` (:func:`moakit.analysis.table4` of a
    paper-design result, else None), ``effects`` and ``contrasts`` (their rows), ``reading``,
    ``lines``, ``spec``."""

    css_class = "moakit-impact"

    def __init__(self, df, reading: str | None = None, *, title: str | None = None):
        need = {"level", "aggregator", "proposers", "score", "ci_low", "ci_high"}
        if not need <= set(df.columns):
            raise ValueError(f"the impact DataFrame lacks {sorted(need - set(df.columns))} "
                             "(give the output of moakit.analysis.impact)")
        from ..analysis import table4

        self.table = df.reset_index(drop=True)
        try:
            self.table4 = table4(self.table)
        except ValueError:  # a grid: Table 4's layout does not apply
            self.table4 = None
        self.effects = self.table[self.table["level"] == "effect"].reset_index(drop=True)
        self.contrasts = self.table[self.table["level"] == "contrast"].reset_index(drop=True)
        self.reading = reading if reading is not None else analysis_reading(df)
        self.title = title or "Score by aggregator and proposers"
        con = self.contrasts.copy()
        if len(con):
            who = con["aggregator"].where(con["factor"] == "aggregator", con["proposers"])
            con["pair"] = who.astype(str) + " − " + con["versus"].astype(str)
        self.effect_table = Table(self.effects, EFFECT_COLUMNS, title="Effects",
                                  on_change=lambda: self.refresh(["effects"]))
        self.contrast_table = Table(con, CONTRAST_COLUMNS, title="Pairwise contrasts", sort="p_value",
                                    on_change=lambda: self.refresh(["effects"]))

    @property
    def lines(self) -> list[str]:
        out = []
        for r in self.effects.to_dict("records"):
            if r.get("factor") not in ("aggregator", "proposers") or isnull(r.get("score")):
                continue
            sig = not isnull(r.get("p_value")) and float(r["p_value"]) <= 0.05
            what = "the choice of aggregator" if r["factor"] == "aggregator" else "the choice of proposers"
            out.append(f"<b>{what.capitalize()}</b> moves the mean score by {float(r['score']):.3f} "
                       f"(the SD of its level means, debiased; 95% interval {interval(r['ci_low'], r['ci_high'], 3)}; "
                       f"{p_text(r.get('p_value'))}): {'an effect' if sig else 'no clear effect'}.")
        if not out:
            out.append("No effect could be estimated.")
        cells = self.table[self.table["level"] == "cell"]
        if "errors" in cells.columns and cells["errors"].fillna(0).sum():
            out.append(f"Failed runs (no answer, scored as error_score): {int(cells['errors'].fillna(0).sum())}.")
        return out

    def chart(self):
        import altair as alt

        cells = self.table[self.table["level"] == "cell"].copy()
        cells["interval"] = [interval(lo, hi) for lo, hi in zip(cells["ci_low"], cells["ci_high"])]
        cell_tips = [alt.Tooltip("aggregator:N", title="aggregator"), alt.Tooltip("proposers:N", title="proposers"),
                     alt.Tooltip("score:Q", title="mean score", format=".3f"),
                     alt.Tooltip("interval:N", title="95% interval")]
        heat = alt.Chart(cells).encode(x=alt.X("proposers:N", title="proposers", axis=alt.Axis(labelAngle=0),
                                               sort=list(dict.fromkeys(cells["proposers"]))),
                                       y=alt.Y("aggregator:N", title="aggregator",
                                               sort=list(dict.fromkeys(cells["aggregator"]))),
                                       tooltip=cell_tips)
        grid = (heat.mark_rect().encode(color=alt.Color("score:Q", scale=alt.Scale(scheme="blues"), title="score"))
                + heat.mark_text(fontSize=13).encode(text=alt.Text("score:Q", format=".2f"))
                ).properties(width=90 * max(1, cells["proposers"].nunique()),
                             height=40 * max(1, cells["aggregator"].nunique()), title=self.title)
        marg = self.table[self.table["level"].isin(["aggregator", "proposers"])].copy()
        marg["choice"] = marg["aggregator"].where(marg["level"] == "aggregator", marg["proposers"])
        marg["as"] = marg["level"].map({"aggregator": "as aggregator", "proposers": "as proposer"})
        marg["row"] = marg["as"] + ": " + marg["choice"].astype(str)
        marg["interval"] = [interval(lo, hi) for lo, hi in zip(marg["ci_low"], marg["ci_high"])]
        tips = [alt.Tooltip("row:N", title="level"), alt.Tooltip("score:Q", title="mean score", format=".3f"),
                alt.Tooltip("interval:N", title="95% interval (pointwise)")]
        base = alt.Chart(marg).encode(y=alt.Y("row:N", title=None, sort=list(marg["row"])), tooltip=tips,
                                      color=alt.Color("as:N", title=None, legend=alt.Legend(orient="bottom")))
        margins = (base.mark_rule(strokeWidth=2).encode(x=alt.X("ci_low:Q", title="mean score",
                                                                axis=alt.Axis(format=".2f", labelOverlap=True)),
                                                        x2="ci_high:Q")
                   + base.mark_point(filled=True, size=70, opacity=1).encode(x="score:Q")).properties(
            width=320, height=max(60, 22 * len(marg)),
            title=alt.TitleParams("Mean score of each level", subtitle="95% interval (pointwise)"))
        charts = [grid, margins]
        con = self.contrasts.copy()
        if len(con):
            con["who"] = con["aggregator"].where(con["factor"] == "aggregator", con["proposers"])
            con["pair"] = con["factor"].astype(str) + ": " + con["who"].astype(str) + " − " + con["versus"].astype(str)
            con["interval"] = [interval(lo, hi) for lo, hi in zip(con["ci_low"], con["ci_high"])]
            ctips = [alt.Tooltip("pair:N", title="contrast"),
                     alt.Tooltip("score:Q", title="difference in mean score", format=".3f"),
                     alt.Tooltip("interval:N", title="95% simultaneous interval")]
            cb = alt.Chart(con).encode(y=alt.Y("pair:N", title=None, sort=list(con["pair"]),
                                               axis=alt.Axis(labelLimit=320)), tooltip=ctips,
                                       color=alt.Color("factor:N", title=None, legend=None))
            zero = alt.Chart(con.head(1)).mark_rule(color="#999", strokeDash=[3, 3]).encode(x=alt.datum(0))
            charts.append((cb.mark_rule(strokeWidth=2).encode(
                x=alt.X("ci_low:Q", title="difference in mean score", axis=alt.Axis(format=".2f", labelOverlap=True)),
                x2="ci_high:Q") + cb.mark_point(filled=True, size=60, opacity=1).encode(x="score:Q") + zero).properties(
                width=320, height=max(60, 18 * len(con)),
                title=alt.TitleParams("Pairwise contrasts", subtitle="simultaneous 95% intervals (max-t permutation)")))
        eff = self.effects[self.effects["factor"].isin(["aggregator", "proposers"]) & self.effects["score"].notna()]
        if len(eff):
            eff = eff.assign(interval=[interval(lo, hi, 3) for lo, hi in zip(eff["ci_low"], eff["ci_high"])])
            effb = alt.Chart(eff).encode(y=alt.Y("factor:N", title=None), tooltip=[
                alt.Tooltip("factor:N", title="choice"),
                alt.Tooltip("score:Q", title="effect: SD of the level means, debiased", format=".3f"),
                alt.Tooltip("interval:N", title="95% interval")])
            charts.append((effb.mark_rule(strokeWidth=2, color="#1f5fa8").encode(
                x=alt.X("ci_low:Q", title="SD of level means", axis=alt.Axis(format=".2f", labelOverlap=True)),
                x2="ci_high:Q")
                + effb.mark_point(filled=True, size=70, color="#1f5fa8", opacity=1).encode(x="score:Q")).properties(
                width=320, height=70, title=alt.TitleParams("Effect of each choice (debiased SD of its level means)",
                                                            subtitle="95% interval")))
        return alt.vconcat(*charts).resolve_scale(color="independent")

    @property
    def spec(self) -> dict[str, Any]:
        """The chart's Vega-Lite spec as it is emitted (:func:`moakit.widgets.chart.chart_spec`)."""
        from .chart import chart_spec

        return chart_spec(self.chart())

    def table4_html(self) -> str:
        """Table 4 as the paper prints it, moakit's score [95% interval] beside the paper's figure."""
        if self.table4 is None:
            return ""
        from .html import MUTED, TABLE, TD, TH, fmt

        def cell(r, col):
            v = r[col]
            if isnull(v):
                return "–"
            return f"{fmt(float(v), 1)} [{fmt(float(r[col + '_ci_low']), 1)}, {fmt(float(r[col + '_ci_high']), 1)}]"

        scorer = self.table4.attrs.get("scorer") or "moakit's scorer"
        head = "".join(f"<th style='{TH}'>{h}</th>" for h in ("model", "as aggregator", "paper", "as proposer",
                                                               "paper"))
        body = "".join(
            f"<tr><td style='{TD}'>{esc(r['model'])}</td><td style='{TD}'>{esc(cell(r, 'as_aggregator'))}</td>"
            f"<td style='{TD}'>{esc(fmt(r['paper_as_aggregator'], 1))}</td>"
            f"<td style='{TD}'>{esc(cell(r, 'as_proposer'))}</td>"
            f"<td style='{TD}'>{esc(fmt(r['paper_as_proposer'], 1))}</td></tr>" for r in self.table4.to_dict("records"))
        return (f"<div style='font-size:12px;margin:6px 0 2px 0'><b>Table 4 layout</b> (MoA paper): moakit's score "
                f"× 100 ({esc(scorer)}) [95% interval] beside the paper's AlpacaEval 2.0 LC win rate (%)</div>"
                f"<table class='moakit-table' style='{TABLE}'><tr>{head}</tr>{body}</table>"
                f"<div style='color:{MUTED};font-size:11px'>Not the same measurement: the paper's are win rates "
                f"of real models judged by GPT-4; the layout and the design carry over.</div>")

    def tables_html(self) -> str:
        return self.effect_table.static_html() + (self.contrast_table.static_html() if len(self.contrasts) else "")

    def tables_widget(self):
        import ipywidgets as w

        kids = [self.effect_table.widget()] + ([self.contrast_table.widget()] if len(self.contrasts) else [])
        return w.VBox(kids)

    def reading_html(self) -> str:
        return reading_block(self.lines, self.reading)

    def parts(self) -> list[Part]:
        out = [Part("reading", "html", static=self.reading_html), Part("chart", "chart", chart=self.chart)]
        if self.table4 is not None:
            out.append(Part("table4", "html", static=self.table4_html))
        out.append(Part("effects", "live", static=self.tables_html, widget=self.tables_widget))
        return out

    def __repr__(self) -> str:
        return f"ImpactView({len(self.table)} rows: {self.reading or ''})"


__all__ = ["AblationView", "ImpactView", "money"]
