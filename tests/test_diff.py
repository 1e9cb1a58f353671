"""Issue 17: moakit.diff, DiffView's state and HTML, and ``moakit traces diff`` on real SQLite files.

Runs go to the **stub** server (moakit.testing.stub_server: an OpenAI-compatible process that
answers with a hash of the request, not a model), so the reference page's Together MoA (19
calls) records in a fraction of a second and every answer depends only on its request."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

import moakit
from moakit import Dropout, Shuffle
from moakit.pipelines import together_moa
from moakit.runner.diff import DIFF_COLUMNS, DiffError, diff_text, text_diff
from moakit.widgets import DiffView

QUERY = "What is a mixture of agents?"
SHUFFLED = [*together_moa[:-1], Shuffle(), together_moa[-1]]


@pytest.fixture
def models(stub):
    return {"*": stub.model("stub-m")}


@pytest.fixture
def moa_and_shuffle(tmp_path, models):
    """Together MoA, then the same run (same seed, cache on) with a Shuffle before the Aggregate."""
    path = tmp_path / "diff.db"
    a = moakit.run(together_moa, QUERY, models=models, seed=5, store=path, cache=True)
    b = moakit.run(SHUFFLED, QUERY, models=models, seed=5, store=path, cache=True)
    assert a.ok and b.ok
    assert (b.calls_paid, b.calls_reused) == (1, 18)
    perm = moakit.TraceStore(path).steps(b.trace_id).query("step == 'Shuffle'")["permutation"].iloc[0]
    assert perm != sorted(perm), "seed 5 must draw a permutation that is not the identity"
    return path, a, b


def test_shuffle_before_aggregate_changes_exactly_one_call_and_names_the_shuffle(moa_and_shuffle):
    path, a, b = moa_and_shuffle
    d = moakit.diff(a, b)
    assert list(d.columns) == DIFF_COLUMNS and len(d) == 19
    changed = d[d["status"] != "same"]
    assert len(changed) == 1, changed[["step", "agent", "status"]]
    row = changed.iloc[0]
    assert (row["step"], row["agent"], row["status"]) == ("Aggregate", "qwen1.5-110b-chat", "changed input")
    assert (row["step_index_a"], row["step_index_b"]) == (3, 4)  # aligned across the inserted Shuffle
    assert row["cause_kind"] == "order"
    assert "Shuffle at step 3 of b (a has none)" in row["cause"] and "permutation" in row["cause"]
    assert row["root_cause"] == ["step 3 Shuffle (order)"] and row["root_step"] == [3]
    assert row["request_changes"] == []  # the same seed: only the order shown differs
    # the prompt diff shows the numbered responses moving; the answers differ
    assert row["prompt_diff"].startswith("--- prompt a\n+++ prompt b") and "\n-1. " in row["prompt_diff"]
    assert row["output_diff"] and row["output_a"] != row["output_b"]
    same = d[d["status"] == "same"]
    assert same["cached_b"].all() and (same["request_key_a"] == same["request_key_b"]).all()
    assert (same["prompt_diff"] == "").all() and same["cause"].isna().all()
    assert d.attrs["summary"] == "19 calls: 18 same, 1 changed input; the changes begin at step 3 Shuffle (order)"
    runs = d.attrs["runs"]
    assert len(runs) == 1 and not runs["output_same"].iloc[0] and runs["same"].iloc[0] == 18


def test_two_seeds_change_every_call_and_each_change_goes_back_to_layer_0(tmp_path, models):
    path = tmp_path / "seeds.db"
    a = moakit.run(together_moa, QUERY, models=models, seed=1, store=path)
    b = moakit.run(together_moa, QUERY, models=models, seed=2, store=path)
    d = moakit.diff(a.trace_id, b.trace_id[:10], store=path)  # a unique prefix is enough
    assert len(d) == 19 and (d["status"] == "changed input").all()
    props = d[d["step"] == "Propose"]
    assert (props["cause_kind"] == "request").all()
    assert all(c == ["run seed: 1 -> 2"] for c in props["request_changes"])
    later = d[d["step"] != "Propose"]
    assert (later["cause_kind"] == "upstream").all()
    assert all(rs == [0] for rs in d["root_step"]), "every change is traced back to layer 0"
    agg = d[d["step"] == "Aggregate"].iloc[0]
    assert len(agg["root_cause"]) == 6 and all(r.startswith("step 0 Propose ") for r in agg["root_cause"])
    assert "step 2 Synthesize" in agg["cause"]  # its immediate cause: the layer it was shown
    assert d.attrs["summary"].endswith("the changes begin at step 0 Propose (6 calls: request)")


def test_dropout_is_named_when_it_keeps_other_responses(tmp_path, models):
    path = tmp_path / "drop.db"
    a = moakit.run(together_moa, QUERY, models=models, seed=3, store=path, cache=True)
    variant = [*together_moa[:-1], Dropout(0.5), together_moa[-1]]
    b = moakit.run(variant, QUERY, models=models, seed=3, store=path, cache=True)
    kept = moakit.TraceStore(path).steps(b.trace_id).query("step == 'Dropout'")["kept"].iloc[0]
    assert len(kept) < 6
    d = moakit.diff(a, b)
    row = d[d["status"] != "same"].iloc[0]
    assert (d["status"] != "same").sum() == 1 and row["cause_kind"] == "selection"
    assert "Dropout at step 3 of b" in row["cause"] and f"kept {kept}" in row["cause"]
    assert row["root_cause"] == ["step 3 Dropout (selection)"]


def test_changed_output_and_only_in(tmp_path, models):
    path = tmp_path / "out.db"
    a = moakit.run(together_moa, QUERY, models=models, seed=4, store=path)
    b = moakit.run(together_moa, QUERY, models=models, seed=4, store=path)  # no cache: paid again
    # a model that answers one request two ways: rewrite one recorded answer of b in the file
    con = sqlite3.connect(path)
    span = moakit.TraceStore(path).calls(b.trace_id).query("step == 'Propose'")["span_id"].iloc[0]
    con.execute("INSERT INTO texts (hash, text) VALUES ('feedface', 'another answer')")
    con.execute("UPDATE spans SET output_hash = 'feedface' WHERE span_id = ?", (span,))
    con.commit()
    con.close()
    d = moakit.diff(a, b, store=path)
    row = d[d["span_id_b"] == span].iloc[0]
    assert row["status"] == "changed output" and row["cause_kind"] == "model output"
    assert "another answer" in row["output_diff"]
    assert (d["status"] == "same").sum() == 18  # the calls shown that answer recorded the original text
    # a pipeline with one proposer fewer: that proposer's calls are only in a
    fewer = [moakit.Propose(together_moa[0].agents[:-1], max_tokens=512), *together_moa[1:]]
    c = moakit.run(fewer, QUERY, models=models, seed=4, store=path, cache=True)
    d2 = moakit.diff(a, c, store=path)
    assert (d2["status"] == "only in a").sum() == 1
    gone = d2[d2["status"] == "only in a"].iloc[0]
    assert gone["agent"] == together_moa[0].agents[-1] and not isinstance(gone["span_id_b"], str)
    assert "makes no such call" in gone["cause"]


def test_batches_are_matched_by_prompt(tmp_path, models):
    path = tmp_path / "batch.db"
    prompts = ["one?", "two?", "three?"]
    a = moakit.run_batch(together_moa, prompts, models=models, seed=9, store=path, cache=True, progress=False)
    b = moakit.run_batch(SHUFFLED, prompts[::-1] + ["four?"], models=models, seed=9, store=path, cache=True,
                         progress=False)
    d = moakit.diff(a, b)
    runs = d.attrs["runs"]
    assert len(runs) == 4 and runs["trace_id_a"].isna().sum() == 1  # "four?" is only in b
    both = runs.dropna(subset=["trace_id_a"])
    # matched by prompt, not by item: a's item 0 ("one?") is b's item 2
    assert dict(zip(both["item_a"], both["item_b"])) == {0: 2, 1: 1, 2: 0}
    assert (d["status"] == "only in b").sum() == 19
    # the batch seed derives each item's Shuffle from its item number, so the items' permutations
    # differ; every matched prompt's Aggregate is the change, and the Shuffle its root
    matched = d[d["trace_id_a"].notna()]
    assert set(matched.loc[matched["status"] != "same", "step"]) <= {"Aggregate"}
    assert d.attrs["kind"] == "batch"
    # a batch id works as well as the DataFrame
    d2 = moakit.diff(a.attrs["batch_id"], b.attrs["batch_id"][:8], store=path)
    assert list(d2["status"]) == list(d["status"])


def test_bad_input_says_what_is_wrong(tmp_path, models, moa_and_shuffle):
    path, a, b = moa_and_shuffle
    with pytest.raises(DiffError, match="neither a run"):
        moakit.diff("nope", b.trace_id, store=path)
    batch = moakit.run_batch(together_moa, [QUERY], models=models, seed=5, store=path, cache=True, progress=False)
    with pytest.raises(DiffError, match="a run with a run or a batch with a batch"):
        moakit.diff(a, batch, store=path)
    with pytest.raises(DiffError, match="scorer"):
        moakit.diff(a, b, scorer="exact")


def test_scores_and_deltas(moa_and_shuffle):
    path, a, b = moa_and_shuffle
    d = moakit.diff(a, b, scorer=lambda out, ref: float(ref in out), reference="What is")
    agg = d[d["step"] == "Aggregate"].iloc[0]
    assert agg["score_a"] == 1.0 and agg["delta_score"] == 0.0
    assert agg["delta_input_tokens"] == agg["input_tokens_b"] - agg["input_tokens_a"]
    assert agg["delta_latency_s"] == pytest.approx(agg["latency_s_b"] - agg["latency_s_a"])
    runs = d.attrs["runs"]
    assert runs["score_a"].iloc[0] == 1.0 and runs["delta_score"].iloc[0] == 0.0


def test_text_diff():
    assert text_diff("a\nb", "a\nb") == ""
    out = text_diff("a\nb", "a\nc", "x", "y")
    assert out.splitlines()[:2] == ["--- x", "+++ y"] and "-b" in out and "+c" in out


def test_diffview_state_and_html(moa_and_shuffle):
    path, a, b = moa_and_shuffle
    v = DiffView(a, b, store=path)
    steps = v.pairs[0]["steps"]
    # the Shuffle of b has a row of its own; the Aggregates face each other
    assert [(s["a"], s["b"]) for s in steps] == [("0 Propose", "0 Propose"), ("1 Synthesize", "1 Synthesize"),
                                                 ("2 Synthesize", "2 Synthesize"), (None, "3 Shuffle"),
                                                 ("3 Aggregate", "4 Aggregate")]
    assert [s["changed"] for s in steps] == [False, False, False, True, True]
    html = v.html
    # unchanged steps folded, changed ones open; the changed call is marked and explained
    assert html.count("<details class='moakit-diff-stepbox' >") == 6
    assert html.count("<details class='moakit-diff-stepbox' open>") == 3
    assert html.count("data-status='changed input'") >= 2 and "the Shuffle at step 3 of b" in html
    assert "no Shuffle here (only in b)" in html
    bundle = v._repr_mimebundle_()
    assert bundle["text/html"] == html and bundle["text/plain"].startswith("DiffView: 19 calls")
    w = v.widget()
    assert w.value == html and "moakit-diff-widget" in w._dom_classes
    # the view takes a diff DataFrame as well
    assert DiffView(moakit.diff(a, b)).html == html


def test_cli_traces_diff(moa_and_shuffle):
    path, a, b = moa_and_shuffle
    out = subprocess.run([sys.executable, "-m", "moakit.cli", "traces", "diff", a.trace_id[:8], b.trace_id[:8],
                          "--traces", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("19 calls: 18 same, 1 changed input; the changes begin at step 3 Shuffle (order)")
    assert "Aggregate qwen1.5-110b-chat#0 (step 3 in a, 4 in b): CHANGED INPUT" in text
    assert "cause: shown the same responses in another order" in text and "--- prompt a" in text
    assert text == diff_text(moakit.diff(a, b)) + "\n"
    bad = subprocess.run([sys.executable, "-m", "moakit.cli", "traces", "diff", a.trace_id[:8], "--traces",
                          str(path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "give two trace ids" in bad.stderr
