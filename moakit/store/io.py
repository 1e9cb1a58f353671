"""Getting traces in and out of a :class:`~moakit.tracing.store.TraceStore`.

* :func:`import_outputs` reads AlpacaEval ``model_outputs.json`` files (a list of
  ``{instruction, output, generator}``) and records every output as the Propose call that
  agent would have made, so a pipeline run with ``cache=store`` is served those outputs
  instead of regenerating them (``models="local"`` or any mapping still applies to the other
  agents: imported agents resolve to the model ``recorded/<generator>``, served from the store
  only).
* :func:`export` writes spans to JSONL, to Parquet (DuckDB, polars, pandas) or as OTLP/HTTP
  protobuf to any OpenTelemetry collector (Phoenix, Jaeger, Langfuse, the OTel Collector).

Both read and write the store the way live runs do: texts content-addressed, every string
through :func:`moakit.tracing.redact.redact`, promoted columns restored as their GenAI /
``moakit.*`` attribute names on the way out.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ..errors import MoakitError
from . import schema as A
from .ids import span_id_hex, trace_id_hex
from .keys import request_hash, request_key
from .records import CallRecord, RowBuilder, Rows, output_messages
from .redact import redact

if TYPE_CHECKING:
    from .store import TraceStore

FORMATS = ("jsonl", "parquet", "otlp")


class TraceIOError(MoakitError, ValueError):
    """An outputs file cannot be imported, or an export target / format is unusable."""


# ---- import -------------------------------------------------------------------------------
def _load_records(path: Path) -> list:
    if path.is_dir():
        path = path / "model_outputs.json"
    if not path.exists():
        raise TraceIOError(f"no outputs file at {path} (give an AlpacaEval model_outputs.json or its folder)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise TraceIOError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); expected "
                           "an AlpacaEval model_outputs.json: a list of {instruction, output, generator}") from e
    except UnicodeDecodeError as e:
        raise TraceIOError(f"{path} is not UTF-8 text: {e}") from e
    if not isinstance(data, list):
        raise TraceIOError(f"{path} holds a JSON {type(data).__name__}; expected a list of "
                           "{instruction, output, generator} records (AlpacaEval model_outputs.json)")
    return data


def import_outputs(store: TraceStore, path: str | os.PathLike, agent: str | None = None, model: str | None = None,
                   temp: float = 0.7, max_tokens: int = 2048) -> int:
    """Record published outputs as Propose-layer calls; return how many calls were written.

    Each record ``{instruction, output, generator}`` becomes a call span keyed exactly as a
    ``Propose([agent], temp=temp, max_tokens=max_tokens)`` call on the query ``instruction``
    would be (messages ``[{"role": "user", "content": instruction}]``, no seed, occurrence 0)
    for agent ``agent`` (default: the record's ``generator``) and model
    ``recorded/<generator>`` (or ``recorded/<model>``). ``temp`` and ``max_tokens`` default to
    the AlpacaEval reference settings (0.7, 2048), which are also :class:`~moakit.Propose`'s
    defaults. The calls hang under one span of kind ``import`` (so :meth:`TraceStore.runs`
    does not list it) and are written in one transaction. Records already in the store (same
    request key) and repeated instructions are skipped, so importing a file twice is harmless.

    Raises :class:`TraceIOError` (before writing anything) for a missing file, invalid JSON,
    or records without a string ``instruction`` / ``output`` or without a generator name when
    ``agent`` is not given.
    """
    path = Path(path)
    records = _load_records(path)
    if agent is not None and (not isinstance(agent, str) or not agent.strip()):
        raise TraceIOError(f"agent must be a non-empty name, got {agent!r}")
    if not isinstance(temp, (int, float)) or isinstance(temp, bool) or not 0 <= temp <= 2:
        raise TraceIOError(f"temp must be a number in [0, 2], got {temp!r}")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise TraceIOError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    bad: list[str] = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            bad.append(f"record {i} is a {type(r).__name__}, not an object")
        elif not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            bad.append(f"record {i} has no instruction")
        elif not isinstance(r.get("output"), str):
            bad.append(f"record {i} has no output (got {type(r.get('output')).__name__})")
        elif agent is None and model is None and not (isinstance(r.get("generator"), str) and r["generator"].strip()):
            bad.append(f"record {i} has no generator: pass agent=... to name the agent")
        if len(bad) >= 5:
            break
    if bad:
        raise TraceIOError(f"{path}: cannot import: {'; '.join(bad)}. Each record needs a string 'instruction' "
                           "and 'output' (and 'generator', or give agent=)")
    if not records:
        raise TraceIOError(f"{path} holds an empty list: nothing to import")

    now = time.time_ns()
    trace_id = trace_id_hex()
    import_span = span_id_hex()
    known = store.cache_index()
    out = Rows()
    builder = RowBuilder()
    seen: set[str] = set()
    agents: dict[str, str] = {}
    skipped = 0
    for i, r in enumerate(records):
        generator = (r.get("generator") or "").strip() or None
        name = agent or generator or model
        mstr = A.RECORDED_PREFIX + (model or generator or name)
        if mstr.startswith(A.RECORDED_PREFIX + A.RECORDED_PREFIX):
            mstr = mstr[len(A.RECORDED_PREFIX):]
        messages = [{"role": "user", "content": r["instruction"]}]
        # keyed on the text as a live run would send it; stored redacted, as live runs are
        key = request_key(request_hash(agent=name, model=mstr, messages=messages, temperature=temp,
                                       max_tokens=max_tokens, seed=None), 0)
        if key in known or key in seen:
            skipped += 1
            continue
        seen.add(key)
        agents[name] = mstr
        extra = {A.IMPORT_SOURCE: str(path), A.IMPORT_INDEX: i}
        if isinstance(r.get("dataset"), str):
            extra[A.IMPORT_DATASET] = r["dataset"]
        builder.call(CallRecord(
            span_id=span_id_hex(), trace_id=trace_id, parent_id=import_span, start_ns=now, end_ns=now, model=mstr,
            provider="recorded", agent=name, sample=0, step_index=0, step_kind="Propose", request_key=key,
            temperature=float(temp), max_tokens=int(max_tokens), messages=messages, output=r["output"],
            finish_reason="stop", response_model=generator or mstr[len(A.RECORDED_PREFIX):], extra=extra), out)
    written = len(out.rows)
    if written:  # nothing new: leave no empty import span behind
        out.rows.append({
            "span_id": import_span, "trace_id": trace_id, "parent_id": None, "name": f"import {path.name}",
            "kind": A.KIND_IMPORT, "start_ns": now, "end_ns": time.time_ns(), "status": "OK", "cached": 0,
            "attributes": json.dumps({A.IMPORT_SOURCE: str(path), "moakit.import.records": len(records),
                                      "moakit.import.written": written, "moakit.import.skipped": skipped,
                                      "moakit.import.agents": json.dumps(agents), A.REQUEST_TEMPERATURE: float(temp),
                                      A.REQUEST_MAX_TOKENS: int(max_tokens)}, ensure_ascii=False),
        })
        store.write(out.rows, out.texts)
    return written


# ---- export -------------------------------------------------------------------------------
_COLUMN_ATTRIBUTES = {  # promoted columns -> the attribute each was recorded as
    "kind": A.SPAN_KIND, "step_index": A.STEP_INDEX, "step": A.STEP_KIND, "agent": A.AGENT, "model": A.REQUEST_MODEL,
    "sample": A.SAMPLE, "input_tokens": A.USAGE_INPUT_TOKENS, "output_tokens": A.USAGE_OUTPUT_TOKENS,
    "cost_usd": A.COST_USD, "request_key": A.REQUEST_KEY, "attempt": A.ATTEMPT,
}
RECORD_FIELDS = ("trace_id", "span_id", "parent_id", "name", "kind", "start_ns", "end_ns", "status", "error",
                 "step_index", "step", "agent", "model", "sample", "attempt", "input_tokens", "output_tokens",
                 "cost_usd", "cached", "request_key", "output", "attributes")


@functools.lru_cache(maxsize=8192)
def _redact_text(text: str) -> str:
    return redact(text)


def span_record(store: TraceStore, row: dict[str, Any]) -> dict[str, Any]:
    """One stored span as an export record: promoted columns, the output text, and every
    attribute as recorded (content texts restored by :meth:`TraceStore.full_attributes`,
    promoted columns put back under their attribute names)."""
    attrs = store.full_attributes(row)
    for col, name in _COLUMN_ATTRIBUTES.items():
        if row.get(col) is not None and name not in attrs:
            attrs[name] = row[col]
    if row.get("kind") == "call":
        attrs[A.CACHED] = bool(row.get("cached"))
    rec = {f: row.get(f) for f in RECORD_FIELDS if f not in ("output", "attributes")}
    rec["cached"] = bool(row.get("cached"))
    rec["output"] = store.text(row.get("output_hash"))
    rec["attributes"] = attrs
    # The store is redacted on write; the texts (prompts, outputs, errors) pass again here, which
    # catches secrets in files written before a redactor was added.
    for k in ("output", "error"):
        if isinstance(rec[k], str):
            rec[k] = _redact_text(rec[k])
    for k in A.CONTENT_ATTRIBUTES:
        if isinstance(attrs.get(k), str):
            attrs[k] = _redact_text(attrs[k])
    return rec


def _select_trace_ids(store: TraceStore, trace_id) -> list[str] | None:
    if trace_id is None:
        return None
    wanted = [trace_id] if isinstance(trace_id, str) else list(trace_id)
    out = []
    for t in wanted:
        rows = store.query("SELECT DISTINCT trace_id FROM spans WHERE trace_id LIKE ?", (t + "%",))
        if not rows:
            raise KeyError(f"no trace with id {t!r} in {store.path}")
        if len(rows) > 1 and not any(r[0] == t for r in rows):
            raise KeyError(f"trace id prefix {t!r} is ambiguous in {store.path} ({len(rows)} traces)")
        out.append(t if any(r[0] == t for r in rows) else rows[0][0])
    return out


def iter_records(store: TraceStore, trace_id: str | Sequence[str] | None = None, chunk: int = 2000
                 ) -> Iterator[dict[str, Any]]:
    """Export records of every span (or of the given traces; unique prefixes accepted), in
    start order, read in chunks so a large store is never loaded at once."""
    ids = _select_trace_ids(store, trace_id)
    if ids is None:
        rowids = [r[0] for r in store.query("SELECT rowid FROM spans ORDER BY start_ns, rowid")]
    else:
        rowids = [r[0] for r in store.query(
            f"SELECT rowid FROM spans WHERE trace_id IN ({', '.join('?' * len(ids))}) ORDER BY start_ns, rowid", ids)]
    for row in store.span_rows(rowids, chunk=chunk):
        yield span_record(store, row)


def _format_for(target: str, format: str | None) -> str:
    if format is not None:
        f = format.lower().lstrip(".")
        f = {"ndjson": "jsonl", "pq": "parquet", "otel": "otlp", "json": "jsonl"}.get(f, f)
        if f not in FORMATS:
            raise TraceIOError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
        return f
    low = target.lower()
    if low.startswith(("http://", "https://")):
        return "otlp"
    if low.endswith((".jsonl", ".ndjson", ".jsonl.gz")):
        return "jsonl"
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    raise TraceIOError(f"cannot tell the export format of {target!r}: name a .jsonl or .parquet file, give an "
                       "http(s)://host:port/v1/traces endpoint, or pass format='jsonl'|'parquet'|'otlp'")


def export(store: TraceStore, path_or_endpoint: str | os.PathLike, format: str | None = None,
           trace_id: str | Sequence[str] | None = None, *, headers: dict[str, str] | None = None,
           timeout: float = 10.0) -> int:
    """Export spans (all, or the traces ``trace_id``) and return how many were exported.

    ``format`` is ``"jsonl"`` (one span a line: columns + ``attributes`` object), ``"parquet"``
    (one row a span: the same columns, ``attributes`` as a JSON string; needs pyarrow) or
    ``"otlp"`` (OTLP/HTTP protobuf POSTed to a collector endpoint such as
    ``http://127.0.0.1:4318/v1/traces``; ``headers`` for collectors that need auth; needs
    opentelemetry-exporter-otlp-proto-http). Without ``format`` it follows the target: an
    ``http(s)://`` URL is OTLP, ``.jsonl`` / ``.parquet`` files are what they say.
    """
    target = os.fspath(path_or_endpoint)
    fmt = _format_for(target, format)
    if fmt == "jsonl":
        return _export_jsonl(store, target, trace_id)
    if fmt == "parquet":
        return _export_parquet(store, target, trace_id)
    return _export_otlp(store, target, trace_id, headers=headers, timeout=timeout)


def _export_jsonl(store, path, trace_id) -> int:
    import gzip

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if p.name.endswith(".gz") else open
    n = 0
    tmp = p.with_name(p.name + ".part")
    with opener(tmp, "wt", encoding="utf-8") as f:
        for rec in iter_records(store, trace_id):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, p)
    return n


def parquet_schema():
    import pyarrow as pa

    return pa.schema([
        ("trace_id", pa.string()), ("span_id", pa.string()), ("parent_id", pa.string()), ("name", pa.string()),
        ("kind", pa.string()), ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("status", pa.string()),
        ("error", pa.string()), ("step_index", pa.int64()), ("step", pa.string()), ("agent", pa.string()),
        ("model", pa.string()), ("sample", pa.int64()), ("attempt", pa.int64()), ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()), ("cost_usd", pa.float64()), ("cached", pa.bool_()),
        ("request_key", pa.string()), ("output", pa.string()), ("attributes", pa.string()),
    ])


def _export_parquet(store, path, trace_id, chunk: int = 5000) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise TraceIOError("Parquet export needs pyarrow: pip install 'moakit[export]'") from e
    schema = parquet_schema()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    n = 0
    batch: list[dict] = []

    def flush(writer):
        if batch:
            for r in batch:
                r["attributes"] = json.dumps(r["attributes"], ensure_ascii=False)
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            batch.clear()

    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for rec in iter_records(store, trace_id):
            batch.append(rec)
            n += 1
            if len(batch) >= chunk:
                flush(writer)
        flush(writer)
    os.replace(tmp, p)
    return n


def _otel_value(v):
    """An attribute value OTLP accepts: a primitive or a homogeneous list of primitives."""
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, str) for x in v) or v and all(isinstance(x, bool) for x in v):
            return list(v)
        if v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            return [float(x) for x in v] if any(isinstance(x, float) for x in v) else list(v)
    return json.dumps(v, ensure_ascii=False)


def readable_spans_from_rows(rows: list, texts: dict[str, str]) -> list:
    """OpenTelemetry ``ReadableSpan`` objects of rows made by :class:`~moakit.store.records.RowBuilder`
    (lists in SPAN_COLUMNS order) and their texts, as :func:`export` would send them."""
    records = []
    for values in rows:
        row = dict(zip(A.SPAN_COLUMNS, values)) if type(values) is list else dict(values)
        attrs = json.loads(row.get("attributes") or "{}")
        for key, col in A.PROMOTED.items():
            if row.get(col) is not None:
                attrs[key] = bool(row[col]) if col == "cached" else row[col]
        if row.get("input_hash") in texts:
            attrs[A.INPUT_MESSAGES] = texts[row["input_hash"]]
        out = texts.get(row.get("output_hash"))
        if out is not None:
            attrs[A.OUTPUT if row.get("kind") == A.KIND_RUN else A.OUTPUT_MESSAGES] = \
                out if row.get("kind") == A.KIND_RUN else output_messages(out)
        records.append({**row, "attributes": attrs})
    return readable_spans(records)


def readable_spans(records, resource=None) -> list:
    """Rebuild OpenTelemetry ``ReadableSpan`` objects (original ids, times, parents, status,
    attributes) from export records, for any SDK span exporter."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    from ..version import __version__

    resource = resource or Resource.create({"service.name": "moakit"}, schema_url=A.SCHEMA_URL)
    scope = InstrumentationScope("moakit", __version__, schema_url=A.SCHEMA_URL)
    flags = TraceFlags(TraceFlags.SAMPLED)
    out = []
    for rec in records:
        tid = int(rec["trace_id"], 16)
        ctx = SpanContext(tid, int(rec["span_id"], 16), is_remote=False, trace_flags=flags)
        parent = SpanContext(tid, int(rec["parent_id"], 16), is_remote=False, trace_flags=flags) \
            if rec.get("parent_id") else None
        code = {"OK": StatusCode.OK, "ERROR": StatusCode.ERROR}.get(rec.get("status") or "", StatusCode.UNSET)
        status = Status(code, rec.get("error") or None) if code is StatusCode.ERROR else Status(code)
        attrs = {k: _otel_value(v) for k, v in rec["attributes"].items() if v is not None}
        out.append(ReadableSpan(
            name=rec["name"], context=ctx, parent=parent, resource=resource, attributes=attrs,
            kind=SpanKind.CLIENT if rec.get("kind") in (A.KIND_CALL, A.KIND_ATTEMPT) else SpanKind.INTERNAL, status=status,
            start_time=rec.get("start_ns"), end_time=rec.get("end_ns") or rec.get("start_ns"),
            instrumentation_scope=scope))
    return out


def _export_otlp(store, endpoint, trace_id, *, headers=None, timeout=10.0, chunk: int = 512) -> int:
    from urllib.parse import urlsplit

    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import SpanExportResult
    except ImportError as e:
        raise TraceIOError("OTLP export needs opentelemetry-exporter-otlp-proto-http: "
                           "pip install 'moakit[export]'") from e
    if urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=timeout)
    n = 0
    batch: list[dict] = []

    def send():
        nonlocal n
        if not batch:
            return
        result = exporter.export(readable_spans(batch))
        if result is not SpanExportResult.SUCCESS:
            raise TraceIOError(f"the OTLP collector at {endpoint} did not accept the spans "
                               f"({n} of them were sent before); is it running and listening for OTLP/HTTP?")
        n += len(batch)
        batch.clear()

    try:
        for rec in iter_records(store, trace_id):
            batch.append(rec)
            if len(batch) >= chunk:
                send()
        send()
    finally:
        exporter.shutdown()
    return n
