"""Bad input (issue 7, item 4): a table of invalid pipelines, arguments, model names, trace
files and imports. Each must be answered by a clear error naming what is wrong, raised before
any model is called (the stub server counts 0 new requests and moakit's one litellm call site
is never reached) and without touching recorded data (every file of the fixture folder keeps
its bytes; the recorded trace keeps its rows; no new file appears beside a foreign one).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

import moakit
from moakit import (Aggregate, ClientConfig, Dropout, Filter, ModelError, PipelineError, Propose, Rank, Take,
                    TraceFileError, TraceStore)
from moakit.testing.stub_server import StubServer

GOOD = [Propose(["p1", "p2"], max_tokens=8), Aggregate("agg", max_tokens=8)]

try:  # the import/export API (moakit.store.io) is built in a sibling issue
    from moakit.store import io as trace_io
except ImportError:  # pragma: no cover
    trace_io = None


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-input")
    with StubServer() as stub:
        models = {a: stub.model(a) for a in ("p1", "p2", "agg")}
        rec = d / "recorded.db"
        r = moakit.run(GOOD, "a recorded question", models=models, store=rec)
        assert r.ok
        r.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        r.store.close()
        (d / "notes.txt").write_text("not a trace file, just notes\n")
        c = sqlite3.connect(d / "other.db")  # someone else's SQLite file
        c.execute("CREATE TABLE foo (x)")
        c.execute("INSERT INTO foo VALUES (1)")
        c.commit()
        c.close()
        data = rec.read_bytes()
        (d / "truncated.db").write_bytes(data[: len(data) // 2])
        newer = d / "newer.db"
        shutil.copy(rec, newer)
        c = sqlite3.connect(newer)
        c.execute("INSERT INTO _moakit_migrations VALUES ('m999_from_the_future', 0)")
        c.commit()
        c.close()
        (d / "a-folder.db").mkdir()
        (d / "broken.json").write_text('[{"instruction": "hi", "output": ')
        (d / "dict.json").write_text('{"instruction": "hi", "output": "x"}')
        (d / "no-output.json").write_text('[{"instruction": "hi", "generator": "g"}]')
        (d / "empty.json").write_text("[]")
        (d / "ok.json").write_text('[{"instruction": "hi", "output": "hello", "generator": "g"}]')
        yield {"dir": d, "stub": stub, "models": models, "rec": rec}


def _snapshot(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def _rows(db: Path) -> tuple:
    c = sqlite3.connect(db)
    try:
        return (c.execute("SELECT count(*), max(rowid) FROM spans").fetchone(),
                c.execute("SELECT count(*) FROM texts").fetchone())
    finally:
        c.close()


def _run(ctx, pipeline=GOOD, query="q", **kw):
    kw.setdefault("models", ctx["models"])
    kw.setdefault("store", ctx["rec"])
    return moakit.run(pipeline, query, **kw)


def _batch(ctx, prompts, **kw):
    kw.setdefault("models", ctx["models"])
    kw.setdefault("store", ctx["rec"])
    return moakit.run_batch(GOOD, prompts, progress=False, **kw)


def _path(ctx, name):
    return ctx["dir"] / name


def _import(ctx, name, **kw):
    store = TraceStore(ctx["rec"])
    try:
        return store.import_outputs(_path(ctx, name), **kw)
    finally:
        store.close()


def _export(ctx, target, **kw):
    store = TraceStore(ctx["rec"])
    try:
        return store.export(_path(ctx, target), **kw)
    finally:
        store.close()


# (id, action, exception type, regex the message must match: it names what is wrong)
CASES = [
    # ---- pipelines and steps
    ("dropout-p-above-1", lambda c: _run(c, [Propose(["p1"]), Dropout(1.5)]), PipelineError,
     r"Dropout: p must be in \[0, 1\), got 1\.5"),
    ("rank-n-zero", lambda c: _run(c, [Propose(["p1"]), Rank("agg", n=0)]), PipelineError,
     r"Rank: n must be an integer >= 1, got 0"),
    ("empty-agent-list", lambda c: _run(c, [Propose([])]), PipelineError, r"Propose: the agent list is empty"),
    ("blank-agent-name", lambda c: _run(c, [Propose(["p1", " "])]), PipelineError,
     r"Propose: every agent must be a non-empty model name, got ' '"),
    ("temperature-out-of-range", lambda c: _run(c, [Propose(["p1"], temp=2.5)]), PipelineError,
     r"Propose: temp must be a number in \[0, 2\], got 2\.5"),
    ("step-max-tokens-zero", lambda c: _run(c, [Propose(["p1"], max_tokens=0)]), PipelineError,
     r"Propose: max_tokens must be a positive integer, got 0"),
    ("take-negative", lambda c: _run(c, [Propose(["p1"]), Take(-1)]), PipelineError,
     r"Take: n must be an integer >= 1, got -1"),
    ("filter-not-callable", lambda c: _run(c, [Propose(["p1"]), Filter("long")]), PipelineError,
     r"Filter: fn must be callable, got 'long'"),
    ("empty-pipeline", lambda c: _run(c, []), PipelineError, r"the pipeline is empty"),
    ("string-in-pipeline", lambda c: _run(c, [Propose(["p1"]), "Aggregate"]), PipelineError,
     r"step 1 is 'Aggregate' \(str\), not a moakit step"),
    ("pipeline-name-instead-of-steps", lambda c: _run(c, "moa_lite"), PipelineError,
     r"a pipeline is a list of steps, got str"),
    ("aggregate-first", lambda c: _run(c, [Aggregate("agg")]), PipelineError,
     r"the first step must be Propose .*got Aggregate"),
    # ---- arguments
    ("empty-query", lambda c: _run(c, query=""), PipelineError, r"the query is empty"),
    ("blank-query", lambda c: _run(c, query="  \n "), PipelineError, r"the query is empty"),
    ("query-not-text", lambda c: _run(c, query=42), PipelineError,
     r"the query must be a string or a non-empty list of chat messages, got int"),
    ("query-bad-role", lambda c: _run(c, query=[{"role": "robot", "content": "hi"}]), PipelineError,
     r"query message 0 must be \{'role': 'system'\|'user'\|'assistant'"),
    ("query-no-user-turn", lambda c: _run(c, query=[{"role": "system", "content": "be brief"}]), PipelineError,
     r"the query messages hold no user turn"),
    ("query-lone-surrogate", lambda c: _run(c, query="caf\udce9"), PipelineError,
     r"query message 0 is not valid Unicode: a lone surrogate U\+DCE9 at character 3"),
    ("seed-not-int", lambda c: _run(c, seed="42"), PipelineError, r"seed must be an integer or None, got '42'"),
    ("max-tokens-zero", lambda c: _run(c, max_tokens=0), PipelineError,
     r"max_tokens must be a positive integer or None, got 0"),
    ("unknown-prompt-set", lambda c: _run(c, templates="toghether"), PipelineError,
     r"unknown prompt set 'toghether'; choose one of"),
    ("negative-concurrency", lambda c: _run(c, max_concurrency=-1), PipelineError,
     r"max_concurrency must be a positive integer or None, got -1"),
    ("client-config-dict", lambda c: _run(c, client_config={"retries": 2}), PipelineError,
     r"client_config must be a moakit.ClientConfig, got dict"),
    ("client-config-negative-retries", lambda c: _run(c, client_config=ClientConfig(retries=-1)), ValueError,
     r"ClientConfig: retries must be an integer >= 0, got -1"),
    ("client-config-zero-timeout", lambda c: _run(c, client_config=ClientConfig(timeout=0)), ValueError,
     r"ClientConfig: timeout must be a positive number of seconds, got 0"),
    ("store-wrong-type", lambda c: _run(c, store=42), PipelineError,
     r"store must be a TraceStore, a path or None, got int"),
    ("offline-without-cache", lambda c: _run(c, offline=True), PipelineError, r"offline=True needs cache="),
    ("batch-no-prompts", lambda c: _batch(c, []), PipelineError, r"prompts is empty"),
    ("batch-prompts-a-string", lambda c: _batch(c, "one prompt"), PipelineError, r"prompts must be a list"),
    ("batch-frame-without-prompt-column", lambda c: _batch(c, pd.DataFrame({"text": ["a"]})), PipelineError,
     r"needs a column prompt, instruction, query or question; it has \['text'\]"),
    ("batch-one-empty-prompt", lambda c: _batch(c, ["fine", "also fine", ""]), PipelineError,
     r"prompt 2: the query is empty"),
    # ---- model names
    ("unknown-alias", lambda c: _run(c, models={**c["models"], "p1": "gpt-41"}), ModelError,
     r"unknown model 'gpt-41' \(agent 'p1'\).*Did you mean .*gpt-4\.1"),
    ("unknown-provider", lambda c: _run(c, models={**c["models"], "p1": "opnai/gpt-4.1"}), ModelError,
     r"agent 'p1': model 'opnai/gpt-4\.1' names the provider 'opnai'.*Did you mean .*openai"),
    ("unknown-local-model", lambda c: _run(c, models={**c["models"], "p2": "local/smolm2"}), ModelError,
     r"agent 'p2': unknown local model 'local/smolm2'; the embedded model is 'local/smollm2'"),
    ("model-dict-without-model", lambda c: _run(c, models={**c["models"], "agg": {"api_base": "http://x"}}),
     ModelError, r"models\['agg'\] is a dict without 'model'"),
    ("model-wrong-type", lambda c: _run(c, models={**c["models"], "agg": 42}), ModelError,
     r"models\['agg'\] must be a model string, a dict or a ModelSpec, got int"),
    ("models-wrong-type", lambda c: _run(c, models=42), ModelError, r"models must be 'local', a dict"),
    ("models-unknown-string", lambda c: _run(c, models="everything"), ModelError,
     r"models='everything': use 'local'"),
    ("missing-api-key", lambda c: _run(c, [Propose(["gpt-4.1"])], models=None), ModelError,
     r"agent 'gpt-4\.1' uses 'openai/gpt-4\.1'.*needs an API key: set OPENAI_API_KEY"),
    # ---- trace files
    ("trace-not-sqlite", lambda c: _run(c, store=_path(c, "notes.txt")), TraceFileError,
     r"notes\.txt is not a SQLite file"),
    ("trace-wrong-schema", lambda c: _run(c, store=_path(c, "other.db")), TraceFileError,
     r"other\.db is a SQLite file but not a moakit trace file \(tables: foo\)"),
    ("trace-truncated", lambda c: _run(c, store=_path(c, "truncated.db")), TraceFileError,
     r"cannot open trace file .*truncated\.db: database disk image is malformed"),
    ("trace-is-a-folder", lambda c: _run(c, store=_path(c, "a-folder.db")), TraceFileError,
     r"a-folder\.db is a directory, not a trace file"),
    ("trace-from-newer-moakit", lambda c: _run(c, store=_path(c, "newer.db")), TraceFileError,
     r"newer\.db was written by a newer moakit \(schema migrations m999_from_the_future"),
    ("cache-missing-file", lambda c: _run(c, cache=_path(c, "nowhere.db")), TraceFileError,
     r"no trace file at .*nowhere\.db"),
    ("cache-not-sqlite", lambda c: _run(c, cache=_path(c, "notes.txt")), TraceFileError,
     r"notes\.txt is not a SQLite file"),
    ("open-wrong-schema-directly", lambda c: TraceStore(_path(c, "other.db")), TraceFileError,
     r"not a moakit trace file"),
    ("replay-unknown-trace", lambda c: moakit.replay("feedface", store=c["rec"]), KeyError,
     r"no run with trace id 'feedface'"),
]

if trace_io is not None:
    E = trace_io.TraceIOError
    CASES += [
        ("import-missing-file", lambda c: _import(c, "nothing.json"), E, r"no outputs file at .*nothing\.json"),
        ("import-invalid-json", lambda c: _import(c, "broken.json"), E, r"broken\.json is not valid JSON"),
        ("import-not-a-list", lambda c: _import(c, "dict.json"), E, r"dict\.json holds a JSON dict; expected a list"),
        ("import-record-without-output", lambda c: _import(c, "no-output.json"), E, r"record 0 has no output"),
        ("import-empty-list", lambda c: _import(c, "empty.json"), E, r"empty\.json holds an empty list"),
        ("import-blank-agent", lambda c: _import(c, "ok.json", agent=" "), E, r"agent must be a non-empty name"),
        ("import-into-foreign-sqlite", lambda c: trace_io.import_outputs(TraceStore(_path(c, "other.db")),
                                                                           _path(c, "ok.json")),
         TraceFileError, r"not a moakit trace file"),
        ("export-unknown-extension", lambda c: _export(c, "spans.csv"), E, r"cannot tell the export format of"),
        ("export-unknown-format", lambda c: _export(c, "spans.out", format="xml"), E,
         r"unknown export format 'xml': use one of jsonl, parquet, otlp"),
    ]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_early_clearly_and_touches_nothing(case, ctx, monkeypatch):
    _id, action, exc_type, pattern = case
    attempted = []

    async def no_call(self, req, on_chunk=None):  # moakit's one litellm call site
        attempted.append(req.spec.model)
        raise AssertionError(f"a model call was attempted for {req.spec.model}")

    monkeypatch.setattr("moakit.llm.caller.Caller._complete", no_call)
    before_files = _snapshot(ctx["dir"])
    before_rows = _rows(ctx["rec"])
    before_requests = ctx["stub"].stats()["requests"]

    with pytest.raises(exc_type, match=pattern):
        action(ctx)

    assert attempted == []
    assert ctx["stub"].stats()["requests"] == before_requests
    assert _snapshot(ctx["dir"]) == before_files  # no file changed, none created (e.g. beside other.db)
    assert _rows(ctx["rec"]) == before_rows


def test_the_table_is_big_enough():
    assert len(CASES) >= 20
    groups = {"pipeline": 0, "argument": 0, "model": 0, "trace": 0, "import": 0}
    for case_id, *_ in CASES:
        if case_id.startswith(("trace-", "cache-", "open-", "replay-")):
            groups["trace"] += 1
        elif case_id.startswith(("import-", "export-")):
            groups["import"] += 1
        elif "model" in case_id or "provider" in case_id or "alias" in case_id or "api-key" in case_id:
            groups["model"] += 1
        elif case_id.startswith(("query", "seed", "max-tokens", "store", "batch", "client", "negative",
                                 "offline", "unknown-prompt", "empty-query", "blank-query")):
            groups["argument"] += 1
        else:
            groups["pipeline"] += 1
    assert all(groups[g] >= 3 for g in ("pipeline", "argument", "model", "trace")), groups
