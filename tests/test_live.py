"""Views that fill in while a run is in flight, streamed answers and the batch's progress bar.

The stub server answers after a set latency, one call at a time (``max_concurrency=1``), so a
run's calls finish seconds apart and a live view must be seen growing; it streams (server-sent
events) when asked, so the aggregator's time to first chunk is measured on a real HTTP stream.
No browser here: ``tests/test_browser.py`` watches the same in JupyterLab.
"""

from __future__ import annotations

import warnings

import pytest

import moakit
from moakit import Aggregate, Propose
from moakit.runner.recorder import StreamChunk
from moakit.store import schema as A
from moakit.testing.stub_server import StubServer
from moakit.widgets import live as live_mod


@pytest.fixture(scope="module")
def slow_stub():
    with StubServer(latency=0.4) as s:
        yield s


def _models(stub, *names):
    return {n: stub.model(n) for n in names}


def test_a_live_run_fills_in_its_tree_as_calls_finish(slow_stub, tmp_path, monkeypatch):
    seen: list[tuple[int, bool, str]] = []  # (calls drawn, run ended, header) at each redraw during the run
    draw = live_mod.LiveRun.draw

    def watching(self):
        draw(self)
        seen.append((len(self.view.rows), self.data.ended, self.view.header_html()))

    monkeypatch.setattr(live_mod.LiveRun, "draw", watching)
    store = moakit.TraceStore(tmp_path / "live.db")
    before = slow_stub.stats().get("streamed", 0)
    r = moakit.run([Propose(["a", "b", "c"]), Aggregate("agg")], "q", store=store, max_concurrency=1,
                   models=_models(slow_stub, "a", "b", "c", "agg"), live=True)
    assert r.ok and r.view is not None
    during = [n for n, ended, _ in seen if not ended]
    # the tree was drawn with 0, then 1, 2, 3 calls while the run went on: it grew, never shrank
    assert {1, 2, 3} <= set(during), during
    assert during == sorted(during)
    assert any("⏳ running: 1 of 4 calls finished" in h for _, _, h in seen)
    # in flight, the calls not yet finished are listed as such
    # at the end the view is the stored run, the same as a tree drawn afterwards
    tree = r.view.view
    assert len(tree.rows) == 4 and tree.summary["ok"] and "✓ ok" in tree.tree_html()
    assert tree.tree_html() == moakit.widgets.PipelineTree(store, r.trace_id).tree_html()
    # the aggregator streamed (a live view wants its text), the proposers did not
    assert slow_stub.stats()["streamed"] - before == 1
    timing = store.call_timing(r.trace_id).merge(r.calls[["span_id", "step", "latency_s"]], on="span_id")
    agg = timing[timing["step"] == "Aggregate"].iloc[0]
    assert 0.3 < agg["ttft_s"] < agg["latency_s"]  # the first chunk after the stub's latency, before the end
    assert timing.loc[timing["step"] == "Propose", "ttft_s"].isna().all()
    attrs = store.frame(f"SELECT json_extract(attributes, '$.\"{A.RESPONSE_TIME_TO_FIRST_CHUNK}\"') AS t FROM spans "
                        f"WHERE span_id = ?", [agg["span_id"]])
    assert attrs["t"].iloc[0] == pytest.approx(agg["ttft_s"])
    # the streamed answer is the one a whole call gets
    whole = moakit.run([Propose(["a", "b", "c"]), Aggregate("agg")], "q", store=tmp_path / "whole.db",
                       max_concurrency=1, models=_models(slow_stub, "a", "b", "c", "agg"))
    assert whole.output == r.output


@pytest.mark.parametrize("transport", ["direct", "litellm"])
def test_a_streamed_call_is_the_same_call_on_either_transport(slow_stub, tmp_path, transport):
    """Streaming goes over the direct transport's server-sent events or litellm's stream; either
    way the recorded call (answer, tokens, request key, transport) is the one an unstreamed call
    records, plus its time to first chunk."""
    chunks = []

    class Wants:
        wants_chunks = True

        def __call__(self, event):
            if isinstance(event, StreamChunk):
                chunks.append(event.text)

    cfg = moakit.ClientConfig(transport=transport)
    pipeline = [Propose(["a"]), Aggregate("agg")]
    before = slow_stub.stats().get("streamed", 0)
    s1, s2 = moakit.TraceStore(tmp_path / "streamed.db"), moakit.TraceStore(tmp_path / "whole.db")
    streamed = moakit.run(pipeline, "q", store=s1, seed=3, models=_models(slow_stub, "a", "agg"),
                          client_config=cfg, listeners=[Wants()])
    whole = moakit.run(pipeline, "q", store=s2, seed=3, models=_models(slow_stub, "a", "agg"), client_config=cfg)
    assert slow_stub.stats()["streamed"] - before == 1
    assert chunks and chunks[-1] == streamed.output == whole.output
    cols = ["step", "agent", "request_key", "output", "input_tokens", "output_tokens"]
    a, b = streamed.calls[cols].reset_index(drop=True), whole.calls[cols].reset_index(drop=True)
    assert a.equals(b)
    q = (f"SELECT json_extract(attributes, '$.\"{A.TRANSPORT}\"') AS tr, "
         f"json_extract(attributes, '$.\"{A.RESPONSE_TIME_TO_FIRST_CHUNK}\"') AS t FROM spans "
         f"WHERE name LIKE 'chat %' ORDER BY start_ns")
    got = s1.frame(q)
    assert set(got["tr"]) == {transport}
    assert got["t"].notna().sum() == 1 and got["t"].dropna().iloc[0] > 0


def test_a_live_view_shows_the_answer_while_it_streams(tmp_path, monkeypatch):
    texts: list[str] = []
    draw = live_mod.LiveRun.draw

    def watching(self):
        draw(self)
        texts.extend(v["text"] for v in self.data.streaming.values())

    monkeypatch.setattr(live_mod.LiveRun, "draw", watching)
    with StubServer(latency=2.0) as stub:  # the answer's words arrive over 2 s
        r = moakit.run([Propose(["a"]), Aggregate("agg")], "q", store=tmp_path / "s.db",
                       models=_models(stub, "a", "agg"), live=True)
    assert r.ok
    partial = [t for t in texts if t and t != r.output]
    assert partial and all(r.output.startswith(t) for t in partial), texts


def test_a_listener_that_raises_is_dropped_and_the_run_goes_on(slow_stub, tmp_path):
    heard = []

    def broken(rec):
        raise RuntimeError("boom")

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = moakit.run([Propose(["a"]), Aggregate("agg")], "q", store=tmp_path / "l.db",
                       models=_models(slow_stub, "a", "agg"), listeners=[broken, heard.append])
    assert r.ok
    assert sum("listener raised RuntimeError: boom" in str(x.message) for x in w) == 1
    kinds = [type(e).__name__ for e in heard]
    assert kinds[0] == "RunRecord" and kinds[-1] == "RunRecord" and kinds.count("CallRecord") == 2
    assert heard[0].end_ns == 0 and heard[-1].end_ns > 0


class FakeBar:
    def __init__(self, total=None, desc=None, unit=None):
        self.total, self.desc, self.postfix, self.n, self.closed = total, desc, [], 0, False

    def set_postfix_str(self, s, refresh=True):
        self.postfix.append(s)

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


def test_the_batch_progress_bar_names_the_variant_and_counts_calls_and_dollars(tmp_path, monkeypatch):
    import tqdm.auto

    bars = []
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda **kw: bars.append(FakeBar(**kw)) or bars[-1])
    store = moakit.TraceStore(tmp_path / "b.db")
    pipe = [Propose(["a", "b"]), Aggregate("agg")]
    with StubServer() as stub:
        models = _models(stub, "a", "b", "agg")
        moakit.run_batch(pipe, ["q1", "q2"], models=models, store=store, name="shuffle-variant", seed=0)
        moakit.run_batch(pipe, ["q1", "q2", "q3"], models=models, store=store, cache=True, seed=0)
    first, second = bars
    assert first.desc == "shuffle-variant" and first.total == 2 and first.closed
    # the stub's models have no price: said, not counted as $0
    assert first.postfix[-1] == "calls 6 paid · 0 reused · $0.0000 (+6 calls without a price)"
    assert second.desc == "Propose×2 → Aggregate"  # an unnamed pipeline: its steps
    assert second.postfix[-1].startswith("calls 3 paid · 6 reused · ")


def test_a_live_batch_lists_runs_as_they_start_and_keeps_every_run(slow_stub, tmp_path, monkeypatch):
    seen: list[int] = []
    draw = live_mod.LiveBatch.draw

    def watching(self):
        draw(self)
        seen.append(len(self.view.order))

    monkeypatch.setattr(live_mod.LiveBatch, "draw", watching)
    made = []
    make = live_mod.live_view
    monkeypatch.setattr(live_mod, "live_view", lambda kind, **info: made.append(make(kind, **info)) or made[-1])
    store = moakit.TraceStore(tmp_path / "lb.db")
    df = moakit.run_batch([Propose(["a"]), Aggregate("agg")], [f"q{i}" for i in range(4)], store=store,
                          models=_models(slow_stub, "a", "agg"), max_concurrency=1, progress=False, live=True,
                          name="live-batch")
    assert len(df) == 4 and df["error"].isna().all()
    assert seen and min(seen) < 4 and seen == sorted(seen)
    assert len(made) == 1
    bv = made[0].view
    assert bv.name == "live-batch" and bv.total is None  # finished: no "of 4" left
    assert [r["prompt"] for r in bv.rows] == ["q0", "q1", "q2", "q3"] and [r["n"] for r in bv.rows] == [1, 2, 3, 4]
    assert bv.batch_html().count("class='moakit-row'") == 4 and "⏳" not in bv.batch_html()
