"""Ablation view (and the aggregator-vs-proposer impact view): scores with confidence
intervals, what each variant cost (tokens, dollars, calls paid and reused), a table of the
numbers beside the charts, and a one-line reading.

``AblationView(df)`` takes the DataFrame of :func:`moakit.analysis.ablate` (columns
``variant, score, ci_low, ci_high, input_tokens, output_tokens, cost_usd, calls_paid,
calls_reused``; the table also shows the paired difference with the baseline, its interval,
``p_value`` and the Holm-adjusted ``p_holm``). ``ImpactView(result)`` takes what
:func:`moakit.analysis.impact` returns. They draw; the statistics and the reading come from
:mod:`moakit.analysis`.
"""

from __future__ import annotations

from typing import Any

from .chart import ChartView, analysis_reading, table_html


class AblationView(ChartView):
    """Score by variant with its interval (left), calls paid vs reused per variant (below),
    the table of every number (right), the reading (top). State: ``table``, ``reading``,
    ``spec`` (Vega-Lite dict of the charts), ``variants`` (in the order drawn)."""

    def __init__(self, df, reading: str | None = None, *, title: str | None = None, variant: str = "variant",
                 score: str = "score"):
        missing = [c for c in (variant, score) if c not in df.columns]
        if missing:
            raise ValueError(f"the ablation DataFrame lacks {missing}; it has {list(df.columns)} "
                             "(give the output of moakit.analysis.ablate)")
        self.table = df.reset_index(drop=True)
        self.variant, self.score = variant, score
        self.variants = [str(v) for v in self.table[variant]]
        self.reading = reading if reading is not None else analysis_reading(df)
        self.title = title or f"{score} by variant"
        self._widget = None

    def chart(self):
        import altair as alt

        data = self.table.copy()
        data[self.variant] = data[self.variant].astype(str)
        y = alt.Y(f"{self.variant}:N", sort=self.variants, title=None)
        base = alt.Chart(data).encode(y=y)
        layers = []
        if {"ci_low", "ci_high"} <= set(data.columns):
            layers.append(base.mark_rule(strokeWidth=2, color="#1f5fa8").encode(
                x=alt.X("ci_low:Q", title=self.score), x2="ci_high:Q"))
        layers.append(base.mark_point(filled=True, size=80, color="#1f5fa8").encode(
            x=alt.X(f"{self.score}:Q", title=self.score),
            tooltip=[c for c in data.columns if c in (self.variant, self.score, "ci_low", "ci_high")]))
        height = max(60, 28 * len(data))
        score_chart = alt.layer(*layers).properties(width=300, height=height,
                                                    title=alt.TitleParams(self.title, subtitle="95% interval"))
        charts = [score_chart]
        if {"calls_paid", "calls_reused"} <= set(data.columns):
            calls = data.melt(id_vars=[self.variant], value_vars=["calls_paid", "calls_reused"], var_name="calls",
                              value_name="count")
            calls["calls"] = calls["calls"].str.replace("calls_", "", regex=False)
            charts.append(alt.Chart(calls).mark_bar().encode(
                y=y, x=alt.X("count:Q", stack="zero", title="calls"),
                color=alt.Color("calls:N", scale=alt.Scale(domain=["paid", "reused"], range=["#e07b39", "#5aa469"]),
                                title=None)).properties(width=300, height=height, title="calls paid and reused"))
        tok = [c for c in ("input_tokens", "output_tokens") if c in data.columns]
        if tok:
            t = data.melt(id_vars=[self.variant], value_vars=tok, var_name="tokens", value_name="count")
            t["tokens"] = t["tokens"].str.replace("_tokens", "", regex=False)
            charts.append(alt.Chart(t).mark_bar().encode(
                y=y, x=alt.X("count:Q", stack="zero", title="tokens"),
                color=alt.Color("tokens:N", scale=alt.Scale(domain=["input", "output"], range=["#8da0cb", "#1f5fa8"]),
                                title=None)).properties(width=300, height=height, title="tokens"))
        return alt.vconcat(*charts).resolve_scale(color="independent")

    @property
    def spec(self) -> dict[str, Any]:
        return self.chart().to_dict()

    #: the columns of the table beside the chart (every column stays in ``table``)
    TABLE_COLUMNS = ("score", "ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high", "p_value", "p_holm", "n",
                     "errors", "calls_paid", "calls_reused", "input_tokens", "output_tokens", "cost_usd")

    def table_columns(self) -> list[str]:
        cols = [self.variant, self.score] + [c for c in self.TABLE_COLUMNS if c in self.table.columns]
        return list(dict.fromkeys(cols))

    css_class = "moakit-ablation"

    def side(self):
        import ipywidgets as w

        return w.HTML(table_html(self.table, self.table_columns(), money_cols=("cost_usd",)))

    def __repr__(self) -> str:
        return f"AblationView({len(self.table)} variants: {self.reading or ''})"


class ImpactView(ChartView):
    """The aggregator-vs-proposer result of :func:`moakit.analysis.impact`: the score of every
    cell as a heat map (a full grid, or the paper design's two arms: one proposer set under
    every aggregator, every proposer under one aggregator), each level's mean with its 95%
    interval, every pairwise contrast with its simultaneous 95% interval, each factor's effect
    (the debiased SD of its level means) with its interval; beside them the MoA paper's Table 4
    layout with the paper's figures (paper design) and the effects table; the reading above.

    State: ``table`` (the impact DataFrame), ``table4`` (:func:`moakit.analysis.table4` of a
    paper-design result, else None), ``effects`` (the ``level == "effect"`` rows),
    ``contrasts`` (the ``level == "contrast"`` rows), ``reading``, ``spec``."""

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
        self.title = title or "score by aggregator and proposers"
        self._widget = None

    def chart(self):
        import altair as alt

        cells = self.table[self.table["level"] == "cell"].copy()
        heat = alt.Chart(cells).encode(x=alt.X("proposers:N", title="proposers", axis=alt.Axis(labelAngle=0),
                                               sort=list(dict.fromkeys(cells["proposers"]))),
                                       y=alt.Y("aggregator:N", title="aggregator",
                                               sort=list(dict.fromkeys(cells["aggregator"]))))
        grid = (heat.mark_rect().encode(color=alt.Color("score:Q", scale=alt.Scale(scheme="blues"), title="score"))
                + heat.mark_text(fontSize=13).encode(text=alt.Text("score:Q", format=".2f"))
                ).properties(width=90 * max(1, cells["proposers"].nunique()),
                             height=40 * max(1, cells["aggregator"].nunique()), title=self.title)
        marg = self.table[self.table["level"].isin(["aggregator", "proposers"])].copy()
        marg["choice"] = marg["aggregator"].where(marg["level"] == "aggregator", marg["proposers"])
        marg["as"] = marg["level"].map({"aggregator": "as aggregator", "proposers": "as proposer"})
        marg["row"] = marg["as"] + ": " + marg["choice"].astype(str)
        base = alt.Chart(marg).encode(y=alt.Y("row:N", title=None, sort=list(marg["row"])),
                                      color=alt.Color("as:N", title=None, legend=alt.Legend(orient="bottom")))
        margins = (base.mark_rule(strokeWidth=2).encode(x=alt.X("ci_low:Q", title="mean score"), x2="ci_high:Q")
                   + base.mark_point(filled=True, size=70, opacity=1).encode(x="score:Q")).properties(
            width=300, height=max(60, 22 * len(marg)),
            title=alt.TitleParams("mean score of each level", subtitle="95% interval (pointwise)"))
        charts = [grid, margins]
        con = self.contrasts.copy()
        if len(con):
            con["who"] = con["aggregator"].where(con["factor"] == "aggregator", con["proposers"])
            con["pair"] = con["factor"].map({"aggregator": "aggregator", "proposers": "proposers"}) + ": " + \
                con["who"].astype(str) + " - " + con["versus"].astype(str)
            cb = alt.Chart(con).encode(y=alt.Y("pair:N", title=None, sort=list(con["pair"]),
                                               axis=alt.Axis(labelLimit=320)),
                                       color=alt.Color("factor:N", title=None, legend=None))
            zero = alt.Chart(con.head(1)).mark_rule(color="#999", strokeDash=[3, 3]).encode(x=alt.datum(0))
            charts.append((cb.mark_rule(strokeWidth=2).encode(x=alt.X("ci_low:Q", title="difference in mean score"),
                                                              x2="ci_high:Q")
                           + cb.mark_point(filled=True, size=60, opacity=1).encode(x="score:Q") + zero).properties(
                width=300, height=max(60, 18 * len(con)),
                title=alt.TitleParams("pairwise contrasts", subtitle="simultaneous 95% intervals (max-t permutation)")))
        eff = self.effects[self.effects["factor"].isin(["aggregator", "proposers"]) & self.effects["score"].notna()]
        if len(eff):
            effb = alt.Chart(eff).encode(y=alt.Y("factor:N", title=None))
            charts.append((effb.mark_rule(strokeWidth=2, color="#1f5fa8").encode(
                x=alt.X("ci_low:Q", title="SD of level means"), x2="ci_high:Q")
                + effb.mark_point(filled=True, size=70, color="#1f5fa8", opacity=1).encode(x="score:Q")).properties(
                width=300, height=70, title=alt.TitleParams("effect of each choice (debiased SD of its level means)",
                                                            subtitle="95% interval")))
        return alt.vconcat(*charts).resolve_scale(color="independent")

    @property
    def spec(self) -> dict[str, Any]:
        return self.chart().to_dict()

    def _table4_compact(self):
        """Table 4 as the paper prints it, moakit's score [95% interval] beside the paper's figure."""
        import pandas as pd

        from .chart import fmt

        def cell(r, col):
            v = r[col]
            if v is None or v != v:
                return "–"
            return f"{fmt(float(v), 1)} [{fmt(float(r[col + '_ci_low']), 1)}, {fmt(float(r[col + '_ci_high']), 1)}]"

        rows = [{"model": r["model"], "as aggregator": cell(r, "as_aggregator"),
                 "paper": fmt(r["paper_as_aggregator"], 1), "as proposer": cell(r, "as_proposer"),
                 "paper ": fmt(r["paper_as_proposer"], 1)} for r in self.table4.to_dict("records")]
        return pd.DataFrame(rows, columns=["model", "as aggregator", "paper", "as proposer", "paper "])

    css_class = "moakit-impact"

    def side(self):
        import ipywidgets as w

        parts = []
        if self.table4 is not None:
            scorer = self.table4.attrs.get("scorer") or "moakit's scorer"
            parts.append(w.HTML(
                "<div style='font-size:12px'><b>Table 4 layout</b> (MoA paper): moakit's score x 100 "
                f"({scorer}) [95% interval] beside the paper's AlpacaEval 2.0 LC win rate (%)</div>"
                + table_html(self._table4_compact())))
        parts.append(w.HTML("<div style='font-size:12px;margin-top:8px'><b>effects</b>: SD of level means (debiased), "
                            "95% interval, permutation p; ratio: moakit's own statistic (Fieller)</div>"
                            + table_html(self.effects, ["factor", "arm", "score", "ci_low", "ci_high", "n",
                                                        "p_value"])))
        return w.VBox(parts)

    def __repr__(self) -> str:
        return f"ImpactView({len(self.table)} rows: {self.reading or ''})"
