"""Span ids are sequential per process from a random start (rows append to the store's span-id
and parent indexes); trace ids stay random. Every span a run records, whichever path wrote it
(row spans, replayed rows, OpenTelemetry SDK spans, imported outputs), takes its id from the one
sequence."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

import moakit
from moakit.pipelines import together_moa
from moakit.testing.stub_server import StubServer
from moakit.store import ids
from moakit.store.store import TraceStore

QUERY = "Name two rivers."


def test_span_ids_are_consecutive_unique_and_never_zero():
    a = [ids.new_span_id() for _ in range(1000)]
    assert all(0 < x < 2 ** 64 for x in a)
    # consecutive (mod 2^64), unless another thread took one in between
    assert sum((b - x) % 2 ** 64 == 1 for x, b in zip(a, a[1:])) >= 990
    assert len(set(a)) == len(a)
    assert len(ids.span_id_hex()) == 16 and len(ids.trace_id_hex()) == 32


def test_span_ids_wrap_around_and_skip_zero(monkeypatch):
    import itertools

    monkeypatch.setattr(ids, "_next_span", itertools.count(2 ** 64 - 2))
    assert [ids.new_span_id() for _ in range(3)] == [2 ** 64 - 2, 2 ** 64 - 1, 1]


def test_span_ids_unique_across_threads():
    got: list[list[int]] = [[] for _ in range(4)]

    def take(out):
        for _ in range(20_000):
            out.append(ids.new_span_id())

    threads = [threading.Thread(target=take, args=(g,)) for g in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [x for g in got for x in g]
    assert len(set(every)) == len(every) == 80_000


def _child_ids(q):
    q.put([ids.new_span_id() for _ in range(3)])


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this system")
def test_a_forked_child_starts_a_sequence_of_its_own():
    ids.new_span_id()
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_ids, args=(q,))
    p.start()
    child = q.get(timeout=60)
    p.join(60)
    mine = ids.new_span_id()
    # without a restart at fork the child would have continued the parent's sequence from here
    assert all(abs(c - mine) > 2 ** 20 for c in child)
    assert [(b - a) % 2 ** 64 for a, b in zip(child, child[1:])] == [1, 1]


def test_ids_do_not_follow_the_random_module():
    """random.seed() (a notebook's reproducibility habit; Hypothesis does it for each example)
    must not repeat ids."""
    import random

    random.seed(42)
    a = (ids.new_trace_id(), ids.new_span_id())
    random.seed(42)
    b = (ids.new_trace_id(), ids.new_span_id())
    assert a[0] != b[0] and a[1] != b[1]


def test_runs_after_the_same_random_seed_keep_their_own_spans(tmp_path):
    """Before moakit had its own ids, two runs each started after random.seed(42) got the same
    trace id and span ids, and the second run's rows replaced the first's (24 spans of 48 kept)."""
    import random

    agents = [a for s in together_moa for a in s.agents]
    store = TraceStore(tmp_path / "t.db")
    with StubServer(latency=0.0) as s:
        models = {a: s.model(a) for a in agents}
        runs = []
        for q in ("Name a river.", "Name a mountain."):
            random.seed(42)
            runs.append(moakit.run(together_moa, q, models=models, seed=1, store=store))
    assert all(r.ok for r in runs) and runs[0].trace_id != runs[1].trace_id
    per_run = 1 + len(together_moa) + 19
    assert store.query("SELECT count(*) FROM spans")[0][0] == 2 * per_run
    assert [len(store.calls(r.trace_id)) for r in runs] == [19, 19]
    store.close()


def test_trace_ids_are_random():
    t = [ids.new_trace_id() for _ in range(50)]
    assert len({format(x, "032x")[:8] for x in t}) == 50  # prefixes tell runs apart


def test_every_span_of_a_run_takes_its_id_from_the_sequence(tmp_path):
    """A paid run, its replay and a replay mirrored to an OpenTelemetry exporter: each run's span
    ids are a run of the sequence, the exporter gets the same ids, and trace ids differ from
    their first digits on."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    path, sdk_path = tmp_path / "t.db", tmp_path / "sdk.db"
    agents = [a for s in together_moa for a in s.agents]
    with StubServer(latency=0.0) as s:
        models = {a: s.model(a) for a in agents}
        paid = moakit.run(together_moa, QUERY, models=models, seed=1, store=path)
    replayed = moakit.run(together_moa, QUERY, models=models, seed=1, store=path, cache=True, offline=True)
    sdk_store = TraceStore(sdk_path)
    exporter = InMemorySpanExporter()
    via_sdk = moakit.run(together_moa, QUERY, models=models, seed=1, store=sdk_store, cache=path, offline=True,
                         otel=exporter)
    assert paid.ok and replayed.calls_reused == 19 and via_sdk.calls_reused == 19
    mirrored = {format(s.context.span_id, "016x") for s in exporter.get_finished_spans()}
    assert mirrored == {x for (x,) in sdk_store.query("SELECT span_id FROM spans WHERE trace_id = ?",
                                                      (via_sdk.trace_id,))}, "the exporter got the rows' spans"
    store = TraceStore(path)
    for st, r in ((store, paid), (store, replayed), (sdk_store, via_sdk)):
        span_ids = sorted(int(x, 16) for (x,) in st.query("SELECT span_id FROM spans WHERE trace_id = ?", (r.trace_id,)))
        assert len(span_ids) == 1 + len(together_moa) + 19
        assert span_ids[-1] - span_ids[0] < 1000, "one run's spans are consecutive ids"
    assert len({r.trace_id[:8] for r in (paid, replayed, via_sdk)}) == 3
    store.close()
    sdk_store.close()


def test_imported_outputs_take_sequential_ids(tmp_path):
    import json

    f = tmp_path / "outputs.json"
    f.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}", "generator": "g"} for i in range(20)]))
    store = TraceStore(tmp_path / "t.db")
    assert store.import_outputs(f) == 20
    span_ids = sorted(int(x, 16) for (x,) in store.query("SELECT span_id FROM spans"))
    assert len(span_ids) == 21 and span_ids[-1] - span_ids[0] < 1000
    store.close()
