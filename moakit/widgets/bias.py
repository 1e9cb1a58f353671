"""Positional-bias view: the chance-corrected excess rate at which aggregating calls draw on
the response at each position (or from each source agent), with simultaneous 95% intervals,
the table of numbers beside the chart, and the reading in words above it.

``BiasView(df)`` takes the DataFrame of :func:`moakit.analysis.positional_bias` (columns
``measure, variant, step, randomized, design, position | agent, n, share, chance, excess,
ci_low, ci_high, p_value, cramers_v, ...``). ``excess`` is 0 when position does not matter
(drawn as a dashed line), 1 when that position is always the one drawn on. Filled marks are
rows whose order was randomized (Shuffle, or exchangeable samples): effects, with a test.
Open marks are rows whose order was never randomized: a description of what was drawn on,
not a position effect (position and agent are tangled there), and they have no p-value.
Several blocks (variants, ``copied`` by Synthesize/Aggregate/Vote vs ``kept`` by Rank, or one
per step or aggregator) are drawn side by side in colours. The view draws what it is given;
the statistics and the words come from :mod:`moakit.analysis`.
"""

from __future__ import annotations

from typing import Any

from .chart import ChartView, analysis_reading, table_html

BLOCK_COLUMNS = ("variant", "measure", "step", "aggregator", "randomized")


def _nonnull(df, col) -> bool:
    return col in df.columns and df[col].notna().any()


def _block_label(col: str, value) -> str:
    if col == "randomized":
        return "randomized" if bool(value) else "fixed order"
    return str(value)


class BiasView(ChartView):
    """Chart (excess by position or agent with its interval; 0, no effect, dashed; open marks
    where the order was never randomized), table, reading.

    State: ``table`` (the DataFrame drawn), ``reading`` (str), ``x`` (``position`` or
    ``agent``), ``block`` (per-row label of the block a row belongs to, or None when there is
    one block), ``spec`` (the Vega-Lite dict)."""

    def __init__(self, df, reading: str | None = None, *, title: str | None = None, y: str = "excess",
                 reference: float | None = None):
        needed = {y, "ci_low", "ci_high"}
        if not needed <= set(df.columns) or not ({"position", "agent"} & set(df.columns)):
            raise ValueError(f"the positional-bias DataFrame needs position (or agent), {y}, ci_low, ci_high; "
                             f"it has {list(df.columns)} (give the output of moakit.analysis.positional_bias)")
        self.table = df.reset_index(drop=True)
        self.y = y
        self.x = "position" if _nonnull(self.table, "position") or not _nonnull(self.table, "agent") else "agent"
        varying = [c for c in BLOCK_COLUMNS if c in self.table.columns
                   and self.table[c].astype(str).nunique(dropna=False) > 1]
        self.block = None
        if varying:
            self.block = [" · ".join(_block_label(c, r[c]) for c in varying if r[c] is not None and r[c] == r[c])
                          for r in self.table[varying].to_dict("records")]
        self.reference = reference if reference is not None else (0.0 if y == "excess" else None)
        self.reading = reading if reading is not None else analysis_reading(df)
        self.title = title or f"{y} by {'source agent' if self.x == 'agent' else 'position shown'}"
        self._widget = None

    def chart(self):
        import altair as alt
        import pandas as pd

        data = self.table.copy()
        data = data[[c for c in data.columns if c != "aggregator" or data[c].notna().any()]]
        data[self.x] = data[self.x].astype(str)
        data["order"] = ["randomized" if r else "fixed order (not an effect)"
                         for r in data.get("randomized", pd.Series(True, index=data.index))]
        data = data.assign(block=self.block) if self.block else data
        color = alt.Color("block:N", title=None, legend=alt.Legend(orient="bottom", direction="vertical")) \
            if self.block else alt.value("#1f5fa8")
        offset = {"xOffset": alt.XOffset("block:N")} if self.block else {}
        order = list(dict.fromkeys(data[self.x]))
        x = alt.X(f"{self.x}:O", title=self.x.replace("_", " "), sort=order, axis=alt.Axis(labelAngle=0, labelLimit=90))
        base = alt.Chart(data).encode(x=x, color=color, **offset)
        randomized = alt.datum.order == "randomized"
        layers = [base.mark_rule(strokeWidth=2).encode(y=alt.Y("ci_low:Q", title=self.y), y2="ci_high:Q"),
                  base.transform_filter(randomized).mark_point(filled=True, size=70, opacity=1).encode(
                      y=f"{self.y}:Q"),
                  base.transform_filter(~randomized).mark_point(filled=False, size=70, opacity=1, strokeWidth=2)
                  .encode(y=f"{self.y}:Q")]
        if self.reference is not None:
            layers.insert(0, alt.Chart(pd.DataFrame({"no_effect": [self.reference]})).mark_rule(
                strokeDash=[5, 4], color="#888").encode(y="no_effect:Q"))
        width = max(220, 48 * len(order) * (1 + 0.5 * (len(set(self.block)) - 1 if self.block else 0)))
        sub = "simultaneous 95% intervals" + ("; dashed: no effect" if self.reference is not None else "")
        if (data["order"] != "randomized").any():
            sub += "; open marks: order never randomized (a description, not an effect)"
        return alt.layer(*layers).properties(width=min(width, 640), height=220,
                                             title=alt.TitleParams(self.title, subtitle=sub))

    @property
    def spec(self) -> dict[str, Any]:
        return self.chart().to_dict()

    def table_columns(self) -> list[str]:
        # block columns only when they tell rows apart (a constant one is in the reading)
        cols = [c for c in BLOCK_COLUMNS if c in self.table.columns and self.table[c].notna().any()
                and self.table[c].astype(str).nunique() > 1]
        cols += [self.x] + [c for c in ("n", "share", "chance", self.y, "ci_low", "ci_high", "p_value", "randomized",
                                        "cramers_v") if c in self.table.columns]
        return list(dict.fromkeys(cols))

    css_class = "moakit-bias"

    def side(self):
        import ipywidgets as w

        return w.HTML(table_html(self.table, self.table_columns()))

    def widget(self):
        if self._widget is None and len(self.table) == 0:  # nothing attributed: the reading says why
            import ipywidgets as w

            from .chart import reading_html

            self._widget = w.VBox([w.HTML(reading_html(self.reading or "nothing to draw"))])
            self._widget.add_class(self.css_class)
        return super().widget()

    def __repr__(self) -> str:
        return f"BiasView({len(self.table)} rows by {self.x}: {self.reading or ''})"
