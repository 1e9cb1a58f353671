"""Everything checked before the first call: the pipeline, the query (or prompts), the seed,
the model mapping, API keys, the store. Bad input fails here, before any model is called and
before the trace file is written."""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

from .. import steps as S
from ..errors import PipelineError
from ..llm.providers import check_providers
from ..models import PROVIDER_KEYS, ModelSpec, check_keys, resolve
from ..prompts import TemplateSet, get_template_set
from ..store import redact
from ..store.store import TraceStore, open_store


def normalize_query(query: Any) -> list[dict]:
    """A string or a list of chat messages -> a list of {"role", "content"} dicts."""
    if isinstance(query, str):
        if not query.strip():
            raise PipelineError("the query is empty")
        query = [{"role": "user", "content": query}]
    if isinstance(query, dict):
        query = [query]
    if not isinstance(query, (list, tuple)) or not query:
        raise PipelineError(f"the query must be a string or a non-empty list of chat messages, got {type(query).__name__}")
    out = []
    for i, m in enumerate(query):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise PipelineError(f"query message {i} must be {{'role': 'system'|'user'|'assistant', 'content': str}}, got {m!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" for m in out):
        raise PipelineError("the query messages hold no user turn")
    for i, m in enumerate(out):
        bad = redact.lone_surrogate(m["content"])
        if bad:
            raise PipelineError(f"query message {i} is not valid Unicode: a lone surrogate U+{ord(bad.group()):04X} at "
                                f"character {bad.start()} (no provider accepts it; decode the text with "
                                "errors='replace' first)")
    return out


def prompt_list(prompts: Any) -> list:
    """The prompts of a batch: a list (or Series) of queries, or a DataFrame's ``prompt`` /
    ``instruction`` / ``query`` / ``question`` column."""
    try:
        import pandas as pd

        if isinstance(prompts, pd.DataFrame):
            for col in ("prompt", "instruction", "query", "question"):
                if col in prompts.columns:
                    return list(prompts[col])
            raise PipelineError(f"the prompts DataFrame needs a column prompt, instruction, query or question; "
                                f"it has {list(prompts.columns)}")
        if isinstance(prompts, pd.Series):
            return list(prompts)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise PipelineError("prompts must be a list of queries (strings or message lists) or a DataFrame")
    return list(prompts)


def check_store(store: Any) -> None:
    if store is not None and not isinstance(store, (TraceStore, str, os.PathLike)):
        raise PipelineError(f"store must be a TraceStore, a path or None, got {type(store).__name__}")


def open_cache(cache: Any, store: TraceStore) -> TraceStore | None:
    """The store whose recorded calls are served: ``True`` means ``store`` itself."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return store
    check_store(cache)
    return open_store(cache, create=False)


def check_positive(name: str, v: Any) -> None:
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        raise PipelineError(f"{name} must be a positive integer or None, got {v!r}")


@dataclass
class RunPlan:
    """A run checked before its first call."""

    pipeline: list[S.Step]
    query: list[dict]
    specs: dict[str, ModelSpec]
    tset: TemplateSet
    rng_seed: int  # drives Shuffle / Dropout / Sample
    model_seed: int | None  # None: the seed is not sent to models (and not part of request keys)
    max_tokens: int | None
    name: str | None

    def pipeline_json(self) -> str:
        return pipeline_json(self.pipeline)

    def models_json(self) -> str:
        return memo_json(self.specs, lambda specs: json.dumps({a: s.model for a, s in specs.items()}))


def plan_run(pipeline, query, *, seed=None, models=None, templates="together", max_tokens=None, cache=None,
             offline=False, name=None, rng_seed=None, need_keys=True) -> RunPlan:
    """The run checked before its first call. ``need_keys=False`` (``moakit.estimate``) does not
    require the providers' API keys: nothing will be called."""
    steps = S.validate_pipeline(pipeline)
    q = normalize_query(query)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise PipelineError(f"seed must be an integer or None, got {seed!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise PipelineError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    agents = [a for s in steps if s.calls_llm for a in s.agents]
    recorded = cache.recorded_agents() if cache is not None else None
    specs = resolve(agents, models, recorded=recorded)
    register_secrets(specs)
    if not offline:
        if need_keys:
            check_keys(specs)
        check_providers(specs)
    elif cache is None:
        raise PipelineError("offline=True needs cache= (a trace store, or True for store=) to serve the calls from")
    if rng_seed is None:
        rng_seed = seed if seed is not None else secrets.randbits(31)
    return RunPlan(steps, q, specs, get_template_set(templates), rng_seed, seed, max_tokens,
                   name or pipeline_name(pipeline))


def register_secrets(specs: dict[str, ModelSpec]) -> None:
    """Mask every credential this run may send (api_key=, key-like extra kwargs and headers, the
    provider key variables set in the environment) wherever it would be written to a trace,
    e.g. when a provider echoes it back in an error message. Placeholders (``api_key="EMPTY"``)
    are too short to be secrets: masking them would blank that word out of every text."""
    redact.add_env_secrets(n for group in PROVIDER_KEYS.values() for n in group)
    for spec in specs.values():
        redact.add_secret(spec.api_key)
        for k, v in spec.extra:
            if isinstance(v, dict):  # headers / extra_headers
                for hk, hv in v.items():
                    if isinstance(hv, str) and re.search(r"(?i)auth|key|token|secret", str(hk)):
                        redact.add_secret(hv.split(" ", 1)[-1] if hv.lower().startswith("bearer ") else hv)
            elif isinstance(v, str) and re.search(r"(?i)key|token|secret|password", str(k)):
                redact.add_secret(v)


def pipeline_name(pipeline) -> str | None:
    """The name of a pipeline of :mod:`moakit.pipelines` (None for any other)."""
    from .. import pipelines

    for k, v in pipelines.ALL.items():
        if v is pipeline:
            return k
    return None


# A batch's runs share their steps and pipeline: their JSON is made once.
_json_memo: dict[int, tuple[Any, str]] = {}


def memo_json(obj, make) -> str:
    hit = _json_memo.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    if len(_json_memo) >= 1024:
        _json_memo.clear()
    value = _json_memo[id(obj)] = (obj, make(obj))
    return value[1]


def step_json(step: S.Step) -> str:
    return memo_json(step, lambda st: json.dumps(st.to_dict()))


def pipeline_json(pipeline: list) -> str:
    """``json.dumps(S.pipeline_to_json(pipeline))``, from each step's memoized JSON."""
    return memo_json(pipeline, lambda p: "[" + ", ".join(step_json(s) for s in p) + "]")
