"""B10 views: a 500-call batch (100 prompts x four proposers and an aggregator, stub answers)
drawn as a BatchView with its timeline, the way a notebook cell shows it (read from the store,
the static copy, the live widget, the timeline as Vega-Lite with its SVG fallback), and as the
one piece of static HTML a saved notebook or an export holds; one run's PipelineTree likewise.
Medians of alternating rounds; no peer (no other MoA library draws its traces)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .common import CaseResult, Row, alternate, median, spread

GOAL_S = 1.0


class _Handle:
    def update(self, data, raw=True):
        pass


def _display_all(view) -> int:
    """What ``display(view)`` does in a notebook, with the outputs kept here: returns their size."""
    from unittest import mock

    size = [0]

    def fake(data, raw=False, display_id=None):
        size[0] += sum(len(str(v)) for v in data.values())
        return _Handle() if display_id else None

    with mock.patch("IPython.display.display", fake):
        view._ipython_display_()
    return size[0]


def run(quick: bool) -> CaseResult:
    import moakit
    from moakit import Aggregate, Propose
    from moakit.testing.stub_server import StubServer
    from moakit.widgets import BatchView, PipelineTree

    n_prompts = 20 if quick else 100
    rounds = 2 if quick else 7
    pipe = [Propose(["a", "b", "c", "d"], max_tokens=32), Aggregate("agg", max_tokens=32)]
    res = CaseResult("B10", f"views: a {n_prompts * 5}-call batch's BatchView and timeline")
    with tempfile.TemporaryDirectory() as d, StubServer() as stub:
        store = moakit.TraceStore(Path(d) / "b8.db")
        models = {a: stub.model(a) for a in ("a", "b", "c", "d", "agg")}
        df = moakit.run_batch(pipe, [f"question {i}: say something" for i in range(n_prompts)], models=models,
                              store=store, progress=False, seed=0)
        n_calls = int(df["calls"].sum())
        sizes = {}

        def live(_i):  # a cell showing the batch: read, static copy + widget + timeline (Vega-Lite and SVG)
            sizes["live"] = _display_all(BatchView(store, df))

        def saved(_i):  # the whole view as one static HTML (timeline inline SVG): what an export holds
            sizes["saved"] = len(BatchView(store, df).static_html())

        def tree(_i):
            _display_all(PipelineTree(store, df["trace_id"].iloc[0]))

        a, b, c = alternate([live, saved, tree], rounds, warmup=1)
        # where the live figure goes: the timeline's SVG is the largest part
        t0 = time.perf_counter()
        bv = BatchView(store, df)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        bv.batch_html()
        t_static = time.perf_counter() - t0
        from moakit.widgets.chart import chart_bundle

        chart = bv.timeline_chart()
        t0 = time.perf_counter()
        chart_bundle(chart, svg=False)
        t_spec = time.perf_counter() - t0
        t0 = time.perf_counter()
        bv.timeline_svg()  # the SVG fallback as the view draws it
        t_svg = time.perf_counter() - t0
        t0 = time.perf_counter()
        chart_bundle(chart, svg=True)  # the same chart rendered by vl-convert: what the fallback would cost that way
        t_vlc = time.perf_counter() - t0 - t_spec

    res.rows.append(Row("B10", f"BatchView + timeline shown in a cell (live), {n_calls} calls, s", f"{median(a):.3f}",
                        goal=f"< {GOAL_S:.0f} s", met=median(a) < GOAL_S))
    res.rows.append(Row("B10", f"BatchView + timeline as static HTML (saved), {n_calls} calls, s", f"{median(b):.3f}",
                        goal=f"< {GOAL_S:.0f} s", met=median(b) < GOAL_S))
    res.rows.append(Row("B10", "one run's PipelineTree + timeline shown in a cell, s", f"{median(c):.3f}"))
    res.details = {"live_s": a, "saved_s": b, "tree_s": c, "calls": n_calls, "output_chars": sizes,
                   "parts_s": {"read": t_read, "static_copy": t_static, "vega_lite_spec": t_spec, "svg": t_svg,
                             "svg_by_vl_convert": t_vlc}}
    res.notes.append(f"{rounds} alternating rounds; live {spread(a)} s, saved {spread(b)} s, tree {spread(c)} s; "
                     f"one live render: read {t_read:.3f} s, static copy {t_static:.3f} s, Vega-Lite spec "
                     f"{t_spec:.3f} s, SVG {t_svg:.3f} s (rendered by vl-convert instead: {t_vlc:.3f} s); outputs {sizes.get('live', 0):,} characters")
    return res
