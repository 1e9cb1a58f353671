"""Re-executing a recorded run from its trace alone: the pipeline JSON, query, seed, prompt set
and model mapping stored on the run span; every call served from the store."""

from __future__ import annotations

import json
from typing import Any

from .engine import arun, open_store, run_sync
from .steps import pipeline_from_json


def replay_args(store, trace_id: str) -> dict[str, Any]:
    """The arguments that re-create a recorded run (everything but the store)."""
    trace_id = store.resolve_trace_id(trace_id)
    a = store.run_attributes(trace_id)
    sent = bool(a.get("moakit.seed.sent_to_models"))
    return {
        "pipeline": pipeline_from_json(json.loads(a["moakit.pipeline"])),
        "query": json.loads(a["moakit.query"]),
        "seed": a.get("moakit.seed") if sent else None,
        "_rng_seed": a.get("moakit.seed"),
        "models": json.loads(a.get("moakit.models") or "{}"),
        "templates": a.get("moakit.prompts", "together"),
        "max_tokens": a.get("moakit.max_tokens_cap"),
        "name": a.get("moakit.pipeline.name"),
    }


async def areplay(trace_id: str, *, store: Any = None, offline: bool = True, pipeline=None, record_to: Any = None):
    store = open_store(store)
    args = replay_args(store, trace_id)
    if pipeline is not None:  # a variant: named after itself (if it is a named pipeline), not the original
        args["pipeline"] = pipeline
        args["name"] = None
    return await arun(args.pop("pipeline"), args.pop("query"), store=record_to or store, cache=store,
                      offline=offline, **args)


def replay(trace_id: str, *, store: Any = None, offline: bool = True, pipeline=None, record_to: Any = None):
    """Re-run the recorded run ``trace_id`` (a unique prefix is enough) from ``store``.

    With ``offline=True`` (default) every call must be in the store, no socket is opened and
    litellm is never imported; the new run is recorded (to ``record_to`` or the same store) with
    all its calls marked cached, and its output equals the recorded one."""
    return run_sync(areplay(trace_id, store=store, offline=offline, pipeline=pipeline, record_to=record_to))
