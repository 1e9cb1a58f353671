"""Widget state without a browser: which runs, steps and calls the views show, with which
numbers, and what a saved notebook holds.

Real traces: the embedded model (moa_lite and a Shuffle/Dropout/Rank pipeline, max_tokens 8)
for the call content, the stub server where failures, hundreds of calls or a batch are needed.
The analysis views are drawn from ``moakit.analysis`` results and from frames built here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

import moakit
from moakit import Aggregate, ClientConfig, Dropout, Propose, Rank, Shuffle
from moakit.pipelines import moa_lite
from moakit.widgets import view
from moakit.widgets.ablation import AblationView, ImpactView
from moakit.widgets.bias import BiasView
from moakit.widgets.tree import BatchView, PipelineTree, tree_text
from moakit.widgets.chart import CHART_WIDTH
from moakit.widgets.timeline import PHASES

ROBUST = [Propose(["a", "b", "c", "d"], max_tokens=8), Shuffle(), Dropout(0.5), Rank("judge", n=2),
          Aggregate("agg", max_tokens=8)]
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Two real runs on the embedded model, and an offline replay of the first."""
    store = moakit.TraceStore(tmp_path_factory.mktemp("widgets") / "local.db")
    lite = moakit.run(moa_lite, "Name a primary colour.", models="local", max_tokens=8, seed=0, store=store)
    robust = moakit.run(ROBUST, "Name a primary colour.", models="local", max_tokens=8, seed=0, store=store)
    replayed = moakit.replay(lite.trace_id, store=store)
    assert lite.ok and robust.ok and replayed.ok
    return store, lite, robust, replayed


def html_of(widget) -> str:
    """Every HTML/Label value in a widget tree, concatenated (what the saved state holds)."""
    out = []
    stack = [widget]
    while stack:
        w = stack.pop(0)
        if hasattr(w, "value") and isinstance(w.value, str):
            out.append(w.value)
        stack.extend(getattr(w, "children", ()))
    return "\n".join(out)


# ---- the pipeline tree on a real run ---------------------------------------------------------
def test_tree_shows_every_call_in_the_order_passed_on(local):
    store, lite, _, _ = local
    tree = PipelineTree(store, lite.trace_id)
    calls = lite.calls.set_index("span_id")
    steps = lite.steps.set_index("step_index")
    assert len(tree.rows) == 13 == len(calls)
    assert [s["step"] for s in tree.steps] == ["Propose", "Synthesize", "Aggregate"]
    assert [s["calls"] for s in tree.steps] == [6, 6, 1]
    # inside a step, call rows come in the order their answers were shown to the next step
    for i in (0, 1):
        shown = [r["span_id"] for r in tree.rows if r["step_index"] == i]
        assert shown == list(steps.loc[i, "responses_out"])
        assert [r["passed_on"] for r in tree.rows if r["step_index"] == i] == [1, 2, 3, 4, 5, 6]
    for row in tree.rows:
        c = calls.loc[row["span_id"]]
        assert (row["input_tokens"], row["output_tokens"]) == (c.input_tokens, c.output_tokens)
        assert row["latency_s"] == pytest.approx(c.latency_s)
        assert row["reused"] is False and row["error"] is None and row["model"] == "local/smollm2"

    s = tree.summary
    assert s["calls"] == 13 and s["calls_paid"] == 13 and s["calls_reused"] == 0 and s["calls_failed"] == 0
    assert s["input_tokens"] == lite.usage["input_tokens"] and s["output_tokens"] == lite.usage["output_tokens"]
    assert s["cost_usd"] == 0.0 and s["ok"] and s["output"] == lite.output
    assert s["query"] == "Name a primary colour." and s["pipeline"] == "moa_lite"

    for html in (tree.tree_html(), html_of(tree.widget())):  # the static copy and the live widget agree
        assert html.count("class='moakit-call'") == 13
        for agent in set(calls["agent"]):
            assert f"<b>{agent}</b>" in html
        assert f"<b>{s['input_tokens']:,}</b> input + <b>{s['output_tokens']:,}</b> output tokens" in html
        assert "13</b> calls (13 paid, 0 reused)" in html and "cached" not in html
        assert len(re.findall(r"<details><summary", html)) == 13  # prompts and outputs folded
        assert "You have been provided with a set of responses" in html
        assert "responses shown, in order: 1. " in html
        assert "what the columns mean" in html and "US dollars" in html  # the key, with units
    text = tree_text(store, lite.trace_id)
    assert text.count("local/smollm2") == 13 and "step 2 Aggregate" in text


def test_shuffle_dropout_rank_say_what_they_did(local):
    store, _, robust, _ = local
    tree = PipelineTree(store, robust.trace_id)
    steps = {s["step"]: s for s in tree.steps}
    recorded = robust.steps.set_index("step")
    # seed 0 draws permutation [3, 1, 0, 2] and keeps [0, 2, 3] (the engine's seeded RNG)
    assert steps["Shuffle"]["permutation"] == recorded.loc["Shuffle", "permutation"] == [3, 1, 0, 2]
    assert steps["Dropout"]["kept"] == recorded.loc["Dropout", "kept"] == [0, 2, 3]
    proposers = {r["span_id"]: r["agent"] for r in tree.rows if r["step"] == "Propose"}
    shuffled_in = [proposers[s] for s in recorded.loc["Shuffle", "responses_in"]]
    new_order = [shuffled_in[i] for i in [3, 1, 0, 2]]
    assert steps["Shuffle"]["action"] == ("permutation [3, 1, 0, 2]: new order "
                                          + ", ".join(f"{i}. {a}" for i, a in enumerate(new_order, 1)))
    assert steps["Dropout"]["action"] == (f"kept 3 of 4: {new_order[0]}, {new_order[2]}, {new_order[3]}; "
                                          f"dropped: {new_order[1]}")
    choice = recorded.loc["Rank", "rank_choice"]
    assert isinstance(choice, list) and 1 <= len(choice) <= 2  # the parsed reply may keep fewer than n
    kept = [new_order[i] for i in [0, 2, 3]]
    assert steps["Rank"]["action"].startswith("chose " + ", ".join(f"position {i + 1} ({kept[i]})" for i in choice)
                                              + " of 3 shown")
    html = tree.tree_html()
    assert "permutation [3, 1, 0, 2]" in html and f"dropped: {new_order[1]}" in html and "chose position" in html
    assert "Shuffle" in tree_text(store, robust.trace_id).split("permutation")[0]


def test_replayed_run_marks_every_call_reused_and_free(local):
    store, lite, _, replayed = local
    tree = PipelineTree(store, replayed.trace_id[:10])  # a unique prefix is enough
    assert tree.trace_id == replayed.trace_id
    assert all(r["reused"] for r in tree.rows) and len(tree.rows) == 13
    s = tree.summary
    assert s["calls_reused"] == 13 and s["calls_paid"] == 0 and s["cost_usd"] == 0.0
    assert s["output"] == lite.output
    html = tree.tree_html()
    assert html.count(">reused</span>") == 13 and "cached" not in html
    assert "replayed from span" in html


def test_view_and_show_pick_the_right_widget(local):
    store, lite, robust, _ = local
    assert isinstance(view(lite.trace_id, store), PipelineTree)
    assert isinstance(view(lite), PipelineTree)
    batch = view([lite.trace_id, robust.trace_id], store)
    assert isinstance(batch, BatchView) and [r["trace_id"] for r in batch.rows] == [lite.trace_id, robust.trace_id]
    bundle = PipelineTree(store, lite.trace_id)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    # the one-bundle form carries the whole view as static HTML too, the timeline as inline SVG
    assert bundle["text/html"].count("class='moakit-call'") == 13 and "<svg" in bundle["text/html"]


def displayed(v) -> list[dict]:
    """The outputs a view displays in a cell (what a notebook saves), as (mime bundle) dicts."""
    from unittest import mock

    out = []

    class Handle:
        def update(self, data, raw=True):
            out[handles.index(self)] = data

    handles = []

    def fake_display(data, raw=False, display_id=None):
        out.append(data)
        h = Handle()
        handles.append(h)
        return h if display_id else None

    with mock.patch("IPython.display.display", fake_display):
        v._ipython_display_()
    return out


def test_a_displayed_view_is_a_static_copy_then_its_widget_then_its_chart(local):
    """The outputs a saved notebook keeps: the tree as plain HTML (readable with no kernel,
    saying what needs one), the widget after it (with the CSS that hides whichever cannot
    work), and the timeline as Vega-Lite with its SVG."""
    from moakit.widgets.chart import VEGALITE_MIME

    store, lite, _, _ = local
    tree = PipelineTree(store, lite.trace_id)
    outs = displayed(tree)
    assert len(outs) == 3
    static, widget, chart = outs
    assert set(static) == {"text/html"} and static["text/html"].count("class='moakit-call'") == 13
    assert f"moakit-static-{tree.uid}" in static["text/html"] and "need a running kernel" in static["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in widget and "needs" not in widget.get("text/html", "")
    rules = html_of(tree.live_widget(tree.part("tree")))
    assert "jupyter-widgets-disconnected" in rules and f".moakit-static-live-{tree.uid}" in rules
    assert VEGALITE_MIME in chart and chart["image/svg+xml"].startswith("<svg")
    spec = chart[VEGALITE_MIME]
    assert spec["$schema"].endswith("/v5.json")
    tips = [t["title"] for layer in spec["layer"] for t in layer["encoding"].get("tooltip", [])]
    assert "what the call was doing" in tips and "cost (USD)" in tips


def test_widget_state_embeds_the_tree(local):
    """The state a notebook saves (ipywidgets' embed format) holds the drawn tree."""
    from ipywidgets.embed import dependency_state, embed_data

    store, lite, _, _ = local
    w = PipelineTree(store, lite.trace_id).widget()
    data = embed_data(views=[w], state=dependency_state(w))
    state = data["manager_state"]["state"]
    assert data["view_specs"][0]["model_id"] == w.model_id and w.model_id in state
    names = {m["model_name"] for m in state.values()}
    assert {"VBoxModel", "HTMLModel"} <= names
    values = " ".join(m["state"].get("value", "") for m in state.values() if m["model_name"] == "HTMLModel")
    assert values.count("class='moakit-call'") == 13 and "qwen1.5-72b-chat" in values


# ---- failures, hundreds of calls, batches (stub server) ---------------------------------------
def test_failed_calls_and_failed_runs_are_red(stub, tmp_path):
    models = {a: stub.model(a) for a in ("good", "agg")} | {"leaky": stub.model("leaky")}
    cfg = ClientConfig(retries=0)
    store = moakit.TraceStore(tmp_path / "t.db")
    r = moakit.run([Propose(["good", "leaky"]), Aggregate("agg")], "q", models=models, store=store,
                   client_config=cfg)
    assert r.ok
    tree = PipelineTree(store, r.trace_id)
    bad = [x for x in tree.rows if x["error"]]
    assert [x["agent"] for x in bad] == ["leaky"] and tree.summary["calls_failed"] == 1 and tree.summary["ok"]
    # the failed call was not passed on: it comes after the one that was
    assert [x["agent"] for x in tree.rows if x["step_index"] == 0] == ["good", "leaky"]
    html = tree.tree_html()
    assert "<tr class='moakit-call' style='color:#c62828;'><td" in html
    assert html.count("style='color:#c62828;'") == 1  # only the failed call's row
    assert "1 failed" in html

    failed = moakit.run([Propose(["good"]), Aggregate("leaky")], "q", models=models, store=store, client_config=cfg)
    assert not failed.ok
    t2 = PipelineTree(store, failed.trace_id)
    assert t2.summary["ok"] is False and t2.summary["output"] is None
    h2 = t2.header_html()
    assert "✗ failed:" in h2 and "color:#c62828" in h2 and "no answer" in h2


def test_a_retried_call_shows_its_wait_in_the_tree_and_the_timeline(stub, tmp_path):
    from moakit.widgets.timeline import run_segments

    store = moakit.TraceStore(tmp_path / "t.db")
    cfg = ClientConfig(retries=1, backoff=0.05, max_backoff=0.05)
    r = moakit.run([Propose(["good", "leaky"]), Aggregate("good")], "q", store=store, client_config=cfg,
                   models={a: stub.model(a) for a in ("good", "leaky")})
    tree = PipelineTree(store, r.trace_id)
    html = tree.tree_html()
    # the leaky proposer fails twice: its first attempt was followed by a backoff wait, its last by none
    assert html.count("retried after") == 1 and "(backoff)" in html, html.count("retried after")
    segs, order = run_segments(tree.data)
    leaky = [s for s in segs if s["agent"] == "leaky"]
    assert [s["phase"] for s in leaky] == ["failed attempt", "waiting to retry", "failed attempt"]
    # the backoff is jittered between half and all of 0.05 s
    assert 0.02 <= leaky[1]["seconds"] <= 0.07 and leaky[1]["t0"] == pytest.approx(leaky[0]["t1"])
    assert order == ["step 0 · Propose", "0 · good", "0 · leaky", "step 1 · Aggregate", "1 · good"]
    good = next(s for s in segs if s["row"] == "0 · good")
    assert good["phase"] == "in flight" and good["t0"] >= 0 and good["t1"] > good["t0"]


def test_hundreds_of_calls_are_paged_and_prompts_loaded_per_page(stub, tmp_path):
    n = 120
    models = {"p": stub.model("p"), "agg": stub.model("agg")}
    store = moakit.TraceStore(tmp_path / "big.db")
    r = moakit.run([Propose(["p"] * n, max_tokens=8), Aggregate("agg", max_tokens=8)], "q", models=models,
                   store=store)
    assert r.ok and len(r.calls) == n + 1
    tree = PipelineTree(store, r.trace_id, page_size=25)
    assert tree.summary["calls"] == n + 1
    propose = tree.steps[0]
    assert propose["pages"] == 5 and propose["page"] == 0
    assert len(tree.rows) == 26  # 25 proposals + the aggregator
    w = tree.widget()
    assert len(tree.data.contents) == 26  # prompts read for the pages shown only
    html = html_of(w)
    assert html.count("class='moakit-call'") == 26 and "calls 1–25 of 120" in html
    assert "calls 1–25 of 120 (other pages need a running kernel)" in tree.tree_html()
    assert "p#0" in tree_text(store, r.trace_id) and "p#119" in tree_text(store, r.trace_id)

    tree.set_page(0, 4)
    shown = [x["passed_on"] for x in tree.rows if x["step"] == "Propose"]
    assert shown == list(range(101, 121))
    assert "calls 101–120 of 120" in html_of(w) and len(tree.data.contents) == 46
    tree.set_page(0, 99)  # clamped to the last page
    assert tree.steps[0]["page"] == 4
    tree.set_page(0, -3)
    assert tree.steps[0]["page"] == 0 and html_of(w).count("class='moakit-call'") == 26


def test_batch_view_saved_holds_every_run_numbered_from_one(stub, tmp_path):
    models = {a: stub.model(a) for a in ("p1", "p2", "agg")}
    store = moakit.TraceStore(tmp_path / "batch.db")
    prompts = [f"question {i}" for i in range(12)]
    df = moakit.run_batch([Propose(["p1", "p2"]), Aggregate("agg")], prompts, models=models, store=store,
                          progress=False, name="two-proposers")
    bv = BatchView(store, df)
    s = bv.summary
    assert s["runs"] == 12 and s["calls"] == 36 and s["failed"] == 0 and s["calls_paid"] == 36
    assert [r["n"] for r in bv.rows] == list(range(1, 13))
    assert [r["prompt"] for r in bv.rows] == prompts and [r["trace_id"] for r in bv.rows] == list(df["trace_id"])
    # the static copy (what a saved notebook shows) lists every run, numbered as the labels count
    static = bv.batch_html()
    assert static.count("class='moakit-row'") == 12
    assert all(f">question {i}<" in static for i in range(12))
    assert "<b>run #1</b> of 12" in static and "need a running kernel" not in static  # said once, by the copy
    assert "run #1" in bv.static_copy(bv.part("batch")) and "need a running kernel" in bv.static_copy(bv.part("batch"))
    assert ">pipeline or variant<" in static and "two-proposers" in static and "what the columns mean" in static
    assert len(bv.trees) == 1  # only the opened run's tree was built
    bv.widget()
    bv.open(4)
    assert len(bv.trees) == 2 and "question 3" in bv.batch_html() and "<b>run #4</b>" in bv.batch_html()
    with pytest.raises(ValueError, match="runs 1 to 12"):
        bv.open(13)
    bv.table.sort_by("n", descending=True)
    assert [r["n"] for r in bv.rows][:2] == [12, 11] and "sorted by #, largest first" in bv.batch_html()
    bv.table.set_filter("question 1")
    assert {r["prompt"] for r in bv.rows} == {"question 1", "question 10", "question 11"}
    # the timeline: a row per run, every call on it
    chart = bv.timeline_chart().to_dict()
    data = max(chart["datasets"].values(), key=len)
    assert len([d for d in data if d["phase"] == "in flight"]) == 36
    assert {d["row"] for d in data} == {f"#{i} two-proposers" for i in range(1, 13)}
    # its SVG fallback (drawn by the view, not vl-convert): a bar per call with what it was in a
    # hover title, and the same bars in the saved HTML and in the chart's mime bundle
    svg = bv.timeline_svg()
    assert svg.startswith("<svg") and svg.count("<rect") - len(PHASES) == len(data)
    assert svg.count("<title>#1 two-proposers · in flight · step Propose") == 2
    assert svg in bv.static_html() and bv.chart_bundle(bv.part("timeline"))["image/svg+xml"] == svg
    assert "image/svg+xml" not in bv.chart_bundle(bv.part("timeline"), svg=False)
    # the same runs from trace ids only: prompts are read from the store
    assert [r["prompt"] for r in BatchView(store, list(df["trace_id"][:3])).rows] == prompts[:3]
    assert BatchView(store, batch_id=df.attrs["batch_id"]).summary["runs"] == 12


# ---- analysis views ----------------------------------------------------------------------------
def _bias_frame():
    return pd.DataFrame({
        "measure": ["copied"] * 3, "variant": ["shuffle"] * 3, "step": ["Aggregate"] * 3, "aggregator": [None] * 3,
        "randomized": [True] * 3, "design": ["shuffled"] * 3, "position": pd.array([1, 2, 3], dtype="Int64"),
        "agent": [None] * 3, "n": [40, 40, 40], "n_calls": [40] * 3, "share": [0.6, 0.2, 0.2], "chance": [1 / 3] * 3,
        "excess": [0.4, -0.2, -0.2], "ci_low": [0.25, -0.3, -0.31], "ci_high": [0.55, -0.1, -0.09],
        "p_value": [0.0005, 0.004, 0.006], "content_share": [0.5] * 3, "cramers_v": [0.05] * 3})


def _tooltip_titles(spec) -> list[str]:
    out = []
    stack = [spec]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            tips = x.get("encoding", {}).get("tooltip") if isinstance(x.get("encoding"), dict) else None
            out += [t["title"] for t in (tips or []) if isinstance(t, dict) and "title" in t]
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return out


def test_bias_view_draws_the_intervals_table_and_reading():
    from moakit.analysis import reading
    from moakit.widgets.chart import VEGALITE_MIME, chart_bundle

    df = _bias_frame()
    v = BiasView(df)
    assert v.reading == reading(df)
    # the view's reading leads with the estimate the chart draws, in a plain sentence
    assert v.lines == ["<b>shuffle, Aggregate</b> (order randomized by Shuffle): position 1 is drawn on more often "
                       "than chance (excess 0.40, 95% interval 0.25 to 0.55, p < 0.001)."]
    assert v.x == "position" and v.block is None and v.reference == 0.0
    main = v.spec["vconcat"][0]
    assert [l["mark"]["type"] for l in main["layer"]] == ["rule", "rule", "point", "point"]
    assert main["layer"][1]["encoding"]["y2"]["field"] == "ci_high"
    # a fixed width: a "container" chart resizes itself in a loop in JupyterLab until the page crashes
    assert main["width"] == CHART_WIDTH and '"container"' not in json.dumps(v.spec)
    data = max(v.spec["datasets"].values(), key=len)
    assert [d["excess"] for d in data] == [0.4, -0.2, -0.2] and [d["ci_low"] for d in data] == [0.25, -0.3, -0.31]
    tips = _tooltip_titles(v.spec)
    assert "excess over chance ((share − chance)/(1 − chance); 0 = no effect)" in tips
    assert "95% simultaneous interval" in tips and "p-value (adjusted over the block)" in tips
    assert any(p.get("select", {}).get("type") == "point" for p in v.spec["params"])  # click a point: its row
    bundle = chart_bundle(v.chart())
    assert bundle["image/svg+xml"].startswith("<svg") and "position shown" in bundle["image/svg+xml"]
    assert bundle[VEGALITE_MIME]["$schema"].endswith("v5.json")
    table = v.figures.static_html()
    assert ">excess over chance<" in table and ">95% interval<" in table and ">p (adjusted)<" in table
    assert "p_value" not in table and "ci_low" not in table  # column names in words
    assert ">0.25 to 0.55<" in table and ">&lt; 0.001<" in table
    assert "(share − chance) / (1 − chance)" in v.figures.key_html()  # the key defines each column
    # with a kernel the table's widget stands in for its static copy; the reading has no widget and always shows
    assert f"moakit-static-live-{v.uid}" in v.static_copy(v.part("table"))
    assert "moakit-static-live" not in v.static_copy(v.part("reading"))
    # two blocks (the shuffled variant and a fixed-order one) are drawn side by side, the fixed one open
    fixed = df.assign(variant="base", randomized=False, design="fixed", p_value=float("nan"), cramers_v=1.0)
    two = BiasView(pd.concat([df, fixed]))
    assert two.block == ["shuffle · randomized"] * 3 + ["base · fixed order"] * 3
    assert "xOffset" in two.spec["vconcat"][0]["layer"][1]["encoding"]
    assert "open marks" in str(two.spec["vconcat"][0]["title"])
    assert "not a position effect, and not tested" in two.lines[1] and "Cramér's V 1.00" in two.lines[1]
    with pytest.raises(ValueError, match="positional_bias"):
        BiasView(pd.DataFrame({"position": [1]}))


def test_bias_view_counts_every_call_left_out_with_its_reason():
    df = _bias_frame()
    df.attrs["blocks"] = [{"variant": "shuffle", "measure": "copied", "randomized": True, "step": "Aggregate",
                           "status": {"attributed": 1, "unattributed: a blend": 7, "not attributable: empty": 2}}]
    df.attrs["excluded"] = {"failed": 3}
    lines = BiasView(df).lines
    assert "Calls: 1 of 10 calls attributed; 9 left out: 7 unattributed (a blend); 2 not attributable (empty)." \
        in lines[1]
    assert lines[2] == "Left out before attribution: 3 calls failed."


def test_bias_view_of_a_real_analysis(local):
    from moakit.analysis import positional_bias

    store, lite, robust, _ = local
    df = positional_bias(store, draws=199)
    v = BiasView(df)
    assert len(v.table) == len(df) and v.reading == df.attrs["reading"]
    # moa_lite lists its proposals in agent order; ROBUST's Rank was shown a shuffled list
    assert "moa_lite" in v.reading and "never randomized" in v.reading
    assert set(df.loc[df["measure"] == "kept", "randomized"]) <= {True}
    by_agent = BiasView(positional_bias(store, by="agent", draws=199))
    assert by_agent.x == "agent" and by_agent.static_html().count("<svg") >= 1


def _ablation_frame():
    return pd.DataFrame({
        "variant": ["base", "shuffle", "dropout0.2"], "score": [0.5, 0.55, 0.45], "ci_low": [0.3, 0.35, 0.25],
        "ci_high": [0.7, 0.75, 0.65], "n": [20] * 3, "repeats": [1] * 3, "delta": [0.0, 0.05, -0.05],
        "delta_ci_low": [math.nan, -0.1, -0.2], "delta_ci_high": [math.nan, 0.2, 0.1], "p_value": [math.nan, 0.5, 0.6],
        "errors": [0] * 3, "calls": [80] * 3, "calls_paid": [80, 20, 20], "calls_reused": [0, 60, 60],
        "input_tokens": [9000, 9100, 7000], "output_tokens": [700, 690, 600], "cost_usd": [0.0123, 0.003, 0.0],
        "ci_method": ["wilson"] * 3, "scorer": ["answer_match"] * 3})


def test_ablation_view_shows_scores_cost_and_reuse():
    from moakit.analysis import reading

    df = _ablation_frame()
    v = AblationView(df)
    assert v.variants == ["base", "shuffle", "dropout0.2"] and v.reading == reading(df)
    assert v.lines[0].startswith("<b>base</b> (the baseline) scores 0.50 on average (95% interval 0.30 to 0.70")
    assert v.lines[1].startswith("<b>shuffle</b> scores 0.55, +0.05 against base (95% interval -0.10 to 0.20")
    assert "shuffle 20 paid, 60 reused" in v.lines[3]
    main = v.spec["vconcat"][0]
    assert main["title"]["text"] == "Mean score of each variant"
    axis = main["layer"][0]["encoding"]["x"]["axis"]
    assert axis["labelOverlap"] is True and axis["format"] == ".2f"  # no "0.000.05" tick labels
    cost = v.cost_chart().to_dict()
    calls = next(d for d in cost["datasets"].values() if d and "calls" in d[0] and "count" in d[0])
    assert {(d["variant"], d["calls"], d["count"]) for d in calls} >= {("shuffle", "paid", 20), ("shuffle", "reused", 60)}
    table = v.figures.static_html()
    assert "$0.0123" in table and "$0.00300" in table and ">$0<" in table
    assert ">calls reused<" in table and ">difference from base<" in table and "delta_ci_low" not in table
    assert "overflow-x:auto" in table  # a wide table scrolls inside the cell instead of being clipped
    assert v.static_html().count("<svg") == 2
    assert v.table_columns()[:4] == ["variant", "score", "ci", "delta"]


def test_impact_view_of_a_paper_design_result_shows_table4_beside_the_paper():
    import numpy as np

    from moakit.analysis import impact_statistics, reading, table4

    rng = np.random.default_rng(0)
    names = ["qwen1.5-110b-chat", "dbrx-instruct", "wizardlm-2-8x22b"]
    rows = []
    for p in range(30):
        for i, n in enumerate(names):
            rows.append({"arm": "aggregator", "aggregator": n, "proposers": "all", "item": p,
                         "score": float(rng.random() < 0.3 + 0.2 * i)})
            rows.append({"arm": "proposer", "aggregator": names[0], "proposers": n, "item": p,
                         "score": float(rng.random() < 0.5)})
    df = impact_statistics(pd.DataFrame(rows), n_perm=200, n_boot=100)
    v = ImpactView(df)
    assert v.reading == reading(df)
    assert list(v.table4["model"]) == list(table4(df)["model"]) == ["qwen1.5-110b-chat", "wizardlm-2-8x22b",
                                                                     "dbrx-instruct"]
    assert list(v.effects["factor"]) == ["aggregator", "proposers", "ratio"]
    assert len(v.contrasts) == 6
    titles = [c["title"]["text"] if isinstance(c["title"], dict) else c["title"] for c in v.spec["vconcat"]]
    assert titles[1:] == ["Mean score of each level", "Pairwise contrasts",
                          "Effect of each choice (debiased SD of its level means)"]
    html = v.static_html()
    assert "Table 4 layout" in html and "<svg" in html and "61.3" in html and "63.8" in html
    qwen = v.table4.iloc[0]
    assert f"{qwen['as_aggregator']:.1f} [{qwen['as_aggregator_ci_low']:.1f}, " in html


def test_impact_view_of_a_grid_has_no_table4():
    from moakit.analysis import impact_statistics

    rows = [{"aggregator": a, "proposers": s, "item": p, "score": float((p + i + j) % 3 == 0)}
            for p in range(12) for i, a in enumerate(["agg1", "agg2"]) for j, s in enumerate(["set1", "set2"])]
    v = ImpactView(impact_statistics(pd.DataFrame(rows), n_perm=100, n_boot=50))
    assert v.table4 is None and "table4" not in [p.name for p in v.parts()]
    html = v.static_html()
    assert "<b>Table 4 layout</b>" not in html and "Effects" in html and "<svg" in html


# ---- a notebook executed headless keeps its widgets ---------------------------------------------
@pytest.mark.slow
def test_quickstart_executed_headless_saves_the_tree_in_widget_state(tmp_path):
    """Execute notebooks/01_quickstart.ipynb as nbconvert does, with widget state stored, and
    check the saved file: its metadata holds the widget models of the trees and every widget
    output cell points at a model that is in it."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS / "01_quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = tmp_path / "executed.ipynb"
    nbformat.write(nb, out)
    saved = json.loads(out.read_text())
    state = saved["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]
    models = state["state"]
    assert state["version_major"] == 2 and len(models) > 20
    views = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
             for c in saved["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) >= 5 and all(v in models for v in views)
    # the first widget output is the moa_lite tree: a VBox whose HTML children hold 13 calls
    first = models[views[0]]
    assert first["model_name"] == "VBoxModel" and "moakit-tree" in first["state"]["_dom_classes"]

    def html_under(mid):
        m = models[mid]["state"]
        text = m.get("value", "") if isinstance(m.get("value"), str) else ""
        return text + "".join(html_under(c.removeprefix("IPY_MODEL_")) for c in m.get("children", []))

    tree_html = html_under(views[0])
    assert tree_html.count("class='moakit-call'") == 13
    assert "<b>moa_lite</b>" in tree_html and "13</b> calls (13 paid, 0 reused)" in tree_html
    for agent in ("wizardlm-2-8x22b", "qwen1.5-110b-chat", "dbrx-instruct", "qwen1.5-72b-chat"):
        assert f"<b>{agent}</b>" in tree_html
    # the Shuffle/Dropout run says what they did
    assert any("permutation [" in html_under(v) for v in views[1:])


def test_a_batch_progress_bar_saved_in_a_notebook_reads_as_text(tmp_path):
    """``run_batch`` in a notebook executed headless: the tqdm widget is wrapped like every live
    view (hidden once no kernel is behind it, which JupyterLab would otherwise draw as four
    broken-link icons), and its static copy, redrawn when the bar closed, holds the last line."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = ["import moakit\nfrom moakit import Aggregate, Propose\nfrom moakit.testing.stub_server import StubServer\n"
             "with StubServer() as stub:\n"
             "    models = {a: stub.model(a) for a in ('a', 'agg')}\n"
             f"    df = moakit.run_batch([Propose(['a']), Aggregate('agg')], ['q1', 'q2', 'q3'], models=models,\n"
             f"                          store={str(tmp_path / 'p.db')!r}, name='bar-test', seed=0)"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outs = nb.cells[0].outputs
    htmls = [o["data"]["text/html"] for o in outs if "text/html" in o.get("data", {})]
    static = [h for h in htmls if "moakit-progress" in h]
    assert len(static) == 1, htmls
    line = re.sub(r"<[^>]+>", "", static[0]).replace("\u2007", " ")
    assert "bar-test" in line and "3/3" in line and "calls 6 paid · 0 reused" in line, line
    assert "moakit-kernel-note" not in static[0]  # a finished bar needs no kernel to be read
    models = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    views = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for o in outs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1  # the bar is not displayed a second time by tqdm itself
    classes = models[views[0]]["state"]["_dom_classes"]
    assert "moakit-live" in classes and "moakit-progress" in classes
    assert not any(o.get("output_type") == "error" for o in outs)
