"""The ``moakit`` command.

    moakit pipelines
    moakit run PIPELINE "QUERY" [--models local] [--seed N] [--traces PATH] [--max-tokens N]
    moakit traces ls|show TRACE|export PATH|replay TRACE [--traces PATH]
    moakit traces export traces.parquet | out.jsonl | http://127.0.0.1:4318/v1/traces [--trace ID]
    moakit traces import model_outputs.json [--agent NAME]
    moakit traces search "TEXT" [--limit N]
    moakit traces diff A B [--all]     (two trace ids, or two batch ids; unique prefixes work)
"""

from __future__ import annotations

import argparse
import json
import sys


def _store(path):
    from .store import TraceStore

    return TraceStore(path)


def cmd_pipelines(args) -> int:
    from . import pipelines

    for name, p in pipelines.ALL.items():
        steps = " -> ".join(s.kind for s in p)
        print(f"{name:20s} {pipelines.count_calls(p):3d} calls  {steps}")
        print(f"{'':20s} {pipelines.SOURCES[name]}")
    return 0


def _models_arg(value: str | None):
    if value is None:
        return None
    if value.strip().startswith("{"):
        return json.loads(value)
    return value


def cmd_run(args) -> int:
    from . import pipelines
    from .runner import run

    pipeline = pipelines.get(args.pipeline)
    result = run(pipeline, args.query, models=_models_arg(args.models), seed=args.seed, store=args.traces,
                 max_tokens=args.max_tokens, templates=args.templates)
    print(result.output if result.output is not None else f"(no answer) {result.error}")
    print()
    print(result.summary())
    calls = result.calls
    cols = ["step_index", "step", "agent", "sample", "input_tokens", "output_tokens", "latency_s", "cached", "error"]
    with __import__("pandas").option_context("display.width", 160, "display.max_columns", 20):
        print(calls[cols].to_string(index=False))
    print(f"\ntrace {result.trace_id} written to {result.store.path}")
    return 0 if result.ok else 1


def cmd_traces(args) -> int:
    store = _store(args.traces)
    if args.action == "ls":
        runs = store.runs()
        imported = store.query("SELECT agent, model, count(*) FROM spans WHERE kind='call' AND cached=0 "
                               "AND model LIKE 'recorded/%' GROUP BY agent, model ORDER BY agent")
        if runs.empty:
            print(f"no runs in {store.path}")
        else:
            cols = ["trace_id", "pipeline", "calls", "calls_cached", "input_tokens", "output_tokens", "cost_usd",
                    "duration_s", "error"]
            print(runs[cols].to_string(index=False))
        for agent, model, n in imported:
            print(f"imported: agent {agent!r} ({model}): {n} outputs")
        return 0
    if args.action == "show":
        tid = store.resolve_trace_id(args.target)
        from .widgets.tree import tree_text

        print(tree_text(store, tid))
        return 0
    if args.action == "replay":
        from .runner import replay

        r = replay(args.target, store=store, offline=not args.fill)
        print(r.output if r.output is not None else f"(no answer) {r.error}")
        print(r.summary())
        return 0 if r.ok else 1
    if args.action == "export":
        from .store.io import export

        n = export(store, args.target, format=args.format, trace_id=args.trace)
        print(f"exported {n} spans to {args.target}")
        return 0
    if args.action == "search":
        hits = store.search(args.target, limit=args.limit)
        if hits.empty:
            print(f"no prompt or output in {store.path} matches {args.target!r}")
            return 1
        with __import__("pandas").option_context("display.width", 200, "display.max_colwidth", 90):
            print(hits.assign(trace_id=hits.trace_id.str[:12]).to_string(index=False))
        return 0
    if args.action == "diff":
        from .runner.diff import diff, diff_text

        d = diff(args.target, args.other, store=store)
        print(diff_text(d, max_changes=len(d) if args.all else 20))
        return 0
    if args.action == "import":
        from .store.io import import_outputs

        n = import_outputs(store, args.target, agent=args.agent)
        print(f"imported {n} outputs into {store.path}")
        return 0
    raise SystemExit(f"unknown traces action {args.action}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="moakit", description="Mixture-of-Agents pipelines, traced to SQLite.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("pipelines", help="list the named pipelines").set_defaults(fn=cmd_pipelines)

    r = sub.add_parser("run", help="run a named pipeline on one query")
    r.add_argument("pipeline")
    r.add_argument("query")
    r.add_argument("--models", help="'local' for the embedded model, or a JSON object agent -> model")
    r.add_argument("--seed", type=int)
    r.add_argument("--traces", help="trace file (default $MOAKIT_TRACES or traces/moakit.db)")
    r.add_argument("--max-tokens", type=int, help="cap every call's max_tokens")
    r.add_argument("--templates", default="together", choices=["together", "mixture-llm"])
    r.set_defaults(fn=cmd_run)

    t = sub.add_parser("traces", help="list, show, export, import or replay recorded runs")
    t.add_argument("action", choices=["ls", "show", "export", "import", "replay", "search", "diff"])
    t.add_argument("target", nargs="?", help="trace id (show, replay, diff), path (export, import) or text (search)")
    t.add_argument("other", nargs="?", help="diff: the run (or batch) to compare with the first")
    t.add_argument("--all", action="store_true", help="diff: every changed call, not the first 20")
    t.add_argument("--limit", type=int, default=20, help="search: at most this many matches")
    t.add_argument("--traces", help="trace file (default $MOAKIT_TRACES or traces/moakit.db)")
    t.add_argument("--format", default=None, help="export format: jsonl, parquet or otlp (default from the path)")
    t.add_argument("--agent", help="import: the agent name to record the outputs under")
    t.add_argument("--trace", action="append", help="export: only this trace (id or unique prefix; repeatable)")
    t.add_argument("--fill", action="store_true", help="replay: call the model for calls missing from the store")
    t.set_defaults(fn=cmd_traces)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "traces" and args.action != "ls" and not args.target:
        what = {"show": "trace id", "replay": "trace id", "search": "text to search for",
                "diff": "trace id (or batch id) and a second one"}.get(args.action, "path")
        print(f"moakit traces {args.action}: give a {what}", file=sys.stderr)
        return 2
    if args.command == "traces" and args.action == "diff" and not args.other:
        print("moakit traces diff: give two trace ids (or two batch ids): moakit traces diff A B", file=sys.stderr)
        return 2
    if args.command == "traces" and args.action != "diff" and getattr(args, "other", None):
        print(f"moakit traces {args.action}: unexpected argument {args.other!r}", file=sys.stderr)
        return 2
    from .errors import MoakitError

    try:
        return args.fn(args)
    except (MoakitError, KeyError, __import__("sqlite3").OperationalError) as e:
        print(f"moakit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
