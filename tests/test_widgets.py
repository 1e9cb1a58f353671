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
def test_tree_shows_every_call_with_its_numbers(local):
    store, lite, _, _ = local
    tree = PipelineTree(store, lite.trace_id)
    calls = lite.calls
    assert len(tree.rows) == 13 == len(calls)
    assert [r["span_id"] for r in tree.rows] == list(calls["span_id"])
    assert [r["agent"] for r in tree.rows] == list(calls["agent"])
    assert [s["step"] for s in tree.steps] == ["Propose", "Synthesize", "Aggregate"]
    assert [s["calls"] for s in tree.steps] == [6, 6, 1]
    for row, c in zip(tree.rows, calls.itertuples()):
        assert (row["input_tokens"], row["output_tokens"]) == (c.input_tokens, c.output_tokens)
        assert row["latency_s"] == pytest.approx(c.latency_s)
        assert row["cached"] is False and row["error"] is None and row["model"] == "local/smollm2"

    s = tree.summary
    assert s["calls"] == 13 and s["calls_paid"] == 13 and s["calls_cached"] == 0 and s["calls_failed"] == 0
    assert s["input_tokens"] == lite.usage["input_tokens"] and s["output_tokens"] == lite.usage["output_tokens"]
    assert s["cost_usd"] == 0.0 and s["ok"] and s["output"] == lite.output
    assert s["query"] == "Name a primary colour." and s["pipeline"] == "moa_lite"

    html = html_of(tree.widget())
    assert html.count("class='moakit-call'") == 13
    for agent in set(calls["agent"]):
        assert f"<b>{agent}</b>" in html
    assert f"<b>{s['input_tokens']:,}</b> input + <b>{s['output_tokens']:,}</b> output tokens" in html
    assert "13</b> calls (13 paid, 0 cached)" in html
    # prompts and outputs are folded: one closed <details> per call, the system prompt inside
    assert len(re.findall(r"<details><summary", html)) == 13
    assert "You have been provided with a set of responses" in html
    assert "responses shown, in order: 1. " in html
    # the CLI's text form stays in step with the widget
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
    assert steps["Rank"]["action"] == ("chose " + ", ".join(f"position {i + 1} ({kept[i]})" for i in choice)
                                       + " of 3 shown")
    html = html_of(tree.widget())
    assert "permutation [3, 1, 0, 2]" in html and f"dropped: {new_order[1]}" in html and "chose position" in html
    assert "Shuffle" in tree_text(store, robust.trace_id).split("permutation")[0]


def test_replayed_run_marks_every_call_cached_and_free(local):
    store, lite, _, replayed = local
    tree = PipelineTree(store, replayed.trace_id[:10])  # a unique prefix is enough
    assert tree.trace_id == replayed.trace_id
    assert all(r["cached"] for r in tree.rows) and len(tree.rows) == 13
    s = tree.summary
    assert s["calls_cached"] == 13 and s["calls_paid"] == 0 and s["cost_usd"] == 0.0
    assert s["output"] == lite.output
    html = html_of(tree.widget())
    assert html.count(">cached</span>") == 13
    assert "replayed from span" in html


def test_view_and_show_pick_the_right_widget(local):
    store, lite, robust, _ = local
    assert isinstance(view(lite.trace_id, store), PipelineTree)
    assert isinstance(view(lite), PipelineTree)
    batch = view([lite.trace_id, robust.trace_id], store)
    assert isinstance(batch, BatchView) and [r["trace_id"] for r in batch.rows] == [lite.trace_id, robust.trace_id]
    bundle = PipelineTree(store, lite.trace_id)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


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
    html = html_of(tree.widget())
    assert "<tr class='moakit-call' style='color:#c62828;'><td" in html
    assert html.count("style='color:#c62828;'") == 1  # only the failed call's row
    assert "1 failed" in html

    failed = moakit.run([Propose(["good"]), Aggregate("leaky")], "q", models=models, store=store, client_config=cfg)
    assert not failed.ok
    t2 = PipelineTree(store, failed.trace_id)
    assert t2.summary["ok"] is False and t2.summary["output"] is None
    h2 = t2.header_html()
    assert "✗ failed:" in h2 and "color:#c62828" in h2 and "no answer" in h2


def test_a_retried_attempt_shows_the_wait_that_followed(stub, tmp_path):
    store = moakit.TraceStore(tmp_path / "t.db")
    cfg = ClientConfig(retries=1, backoff=0.05, max_backoff=0.05)
    r = moakit.run([Propose(["good", "leaky"]), Aggregate("good")], "q", store=store, client_config=cfg,
                   models={a: stub.model(a) for a in ("good", "leaky")})
    html = html_of(PipelineTree(store, r.trace_id).widget())
    # the leaky proposer fails twice: its first attempt was followed by a backoff wait, its last by none
    assert html.count("retried after") == 1 and "(backoff)" in html, html.count("retried after")


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
    assert len(tree._contents) == 26  # prompts read for the pages shown only
    html = html_of(w)
    assert html.count("class='moakit-call'") == 26 and "calls 1–25 of 120" in html
    # repeated agents are told apart by sample index
    assert [x["sample"] for x in tree.rows[:25]] == sorted(x["sample"] for x in tree.rows[:25])
    assert "p#0" in tree_text(store, r.trace_id) and "p#119" in tree_text(store, r.trace_id)

    tree.set_page(0, 4)
    shown = [x["sample"] for x in tree.rows if x["step"] == "Propose"]
    assert len(shown) == 20 and set(shown) == set(range(100, 120))
    assert "calls 101–120 of 120" in html_of(w) and len(tree._contents) == 46
    tree.set_page(0, 99)  # clamped to the last page
    assert tree.steps[0]["page"] == 4
    tree.set_page(0, -3)
    assert tree.steps[0]["page"] == 0 and html_of(w).count("class='moakit-call'") == 26


def test_batch_view_pages_runs_and_builds_trees_when_opened(stub, tmp_path):
    models = {a: stub.model(a) for a in ("p1", "p2", "agg")}
    store = moakit.TraceStore(tmp_path / "batch.db")
    prompts = [f"question {i}" for i in range(12)]
    df = moakit.run_batch([Propose(["p1", "p2"]), Aggregate("agg")], prompts, models=models, store=store,
                          progress=False)
    bv = BatchView(store, df, page_size=5)
    s = bv.summary
    assert s["runs"] == 12 and s["pages"] == 3 and s["calls"] == 36 and s["failed"] == 0
    assert [r["prompt"] for r in bv.rows] == prompts[:5]
    assert [r["trace_id"] for r in bv.rows] == list(df["trace_id"][:5])
    w = bv.widget()
    acc = bv._acc
    assert len(acc.children) == 5 and acc.titles[0].startswith("✓ #0 ") and "question 0" in acc.titles[0]
    assert acc.selected_index == 0 and isinstance(bv._trees.get(bv.rows[0]["trace_id"]), PipelineTree)
    assert len(bv._trees) == 1  # only the opened run's tree was built
    acc.selected_index = 3
    assert len(bv._trees) == 2 and "question 3" in html_of(acc.children[3])
    bv.set_page(2)
    assert [r["prompt"] for r in bv.rows] == prompts[10:]
    assert len(acc.children) == 2 and "runs 11–12 of 12" in html_of(w)
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


def _layers(spec):
    return [l["mark"]["type"] if isinstance(l["mark"], dict) else l["mark"] for l in spec["layer"]]


def test_bias_view_draws_the_intervals_table_and_reading():
    from moakit.analysis import reading

    df = _bias_frame()
    v = BiasView(df)
    assert v.reading == reading(df)
    assert v.reading.startswith("shuffle, Aggregate [order randomized by Shuffle; 40 calls]: position 1 is drawn on "
                                "beyond chance: excess 0.40 [0.25, 0.55], p = 0.0005")
    assert v.x == "position" and v.block is None and v.reference == 0.0
    spec = v.spec
    assert _layers(spec) == ["rule", "rule", "point", "point"]  # no-effect line, interval, filled and open marks
    assert spec["layer"][1]["encoding"]["y2"]["field"] == "ci_high"
    assert spec["layer"][2]["mark"]["filled"] and not spec["layer"][3]["mark"]["filled"]
    data = max(spec["datasets"].values(), key=len)
    assert [d["excess"] for d in data] == [0.4, -0.2, -0.2] and [d["ci_low"] for d in data] == [0.25, -0.3, -0.31]
    assert "open marks" not in str(spec["title"])  # every row randomized
    html = html_of(v.widget())
    assert "<svg" in html and "p = 0.0005" in html
    assert "<td style='text-align:right;padding:2px 6px;border-bottom:1px solid var(--jp-border-color2, #ddd);" \
           "white-space:nowrap'>0.400</td>" in html
    assert "5.0e-04" in html  # the p-value, formatted
    # two blocks (the shuffled variant and a fixed-order one) are drawn side by side, the fixed one open
    fixed = df.assign(variant="base", randomized=False, design="fixed", p_value=float("nan"), cramers_v=1.0)
    two = BiasView(pd.concat([df, fixed]))
    assert two.block == ["shuffle · randomized"] * 3 + ["base · fixed order"] * 3
    assert "xOffset" in two.spec["layer"][1]["encoding"] and "open marks" in str(two.spec["title"])
    assert "never randomized" in two.reading and "Cramér's V 1.00" in two.reading
    with pytest.raises(ValueError, match="positional_bias"):
        BiasView(pd.DataFrame({"position": [1]}))


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
    assert by_agent.x == "agent" and "<svg" in html_of(by_agent.widget())


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
    charts = v.spec["vconcat"]
    assert [c["title"]["text"] if isinstance(c["title"], dict) else c["title"] for c in charts] == \
        ["score by variant", "calls paid and reused", "tokens"]
    datasets = v.spec["datasets"]
    calls = next(d for d in datasets.values() if d and "calls" in d[0] and "count" in d[0])
    assert {(d["variant"], d["calls"], d["count"]) for d in calls} >= {("shuffle", "paid", 20), ("shuffle", "reused", 60)}
    html = html_of(v.widget())
    assert "$0.0123" in html and "$0.00300" in html and "$0<" in html and "<svg" in html
    assert v.table_columns()[:4] == ["variant", "score", "ci_low", "ci_high"]


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
    assert v.reading == reading(df) and "aggregator effect SD" in v.reading
    assert list(v.table4["model"]) == list(table4(df)["model"]) == ["qwen1.5-110b-chat", "wizardlm-2-8x22b",
                                                                     "dbrx-instruct"]
    assert list(v.effects["factor"]) == ["aggregator", "proposers", "ratio"]
    assert len(v.contrasts) == 6
    titles = [c["title"]["text"] if isinstance(c["title"], dict) else c["title"] for c in v.spec["vconcat"]]
    assert titles[1:] == ["mean score of each level", "pairwise contrasts",
                          "effect of each choice (debiased SD of its level means)"]
    html = html_of(v.widget())
    assert "Table 4 layout" in html and "<svg" in html and "61.3" in html and "63.8" in html
    qwen = v.table4.iloc[0]
    assert f"{qwen['as_aggregator']:.1f} [{qwen['as_aggregator_ci_low']:.1f}, " in html


def test_impact_view_of_a_grid_has_no_table4():
    from moakit.analysis import impact_statistics

    rows = [{"aggregator": a, "proposers": s, "item": p, "score": float((p + i + j) % 3 == 0)}
            for p in range(12) for i, a in enumerate(["agg1", "agg2"]) for j, s in enumerate(["set1", "set2"])]
    v = ImpactView(impact_statistics(pd.DataFrame(rows), n_perm=100, n_boot=50))
    assert v.table4 is None
    html = html_of(v.widget())
    assert "Table 4 layout" not in html and "effects" in html and "<svg" in html


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
    assert "<b>moa_lite</b>" in tree_html and "13</b> calls (13 paid, 0 cached)" in tree_html
    for agent in ("wizardlm-2-8x22b", "qwen1.5-110b-chat", "dbrx-instruct", "qwen1.5-72b-chat"):
        assert f"<b>{agent}</b>" in tree_html
    # the Shuffle/Dropout run says what they did
    assert any("permutation [" in html_under(v) for v in views[1:])
