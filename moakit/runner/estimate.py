"""``moakit.estimate``: the bill before paying it.

For a pipeline (or an ablation's variants) over prompts, before any call: how many calls will
be paid and how many served from the cache, how many tokens they send and receive, and what
they cost at litellm's prices, one row per step and agent.

How it works, and what is exact
-------------------------------
The estimate walks each run through the engine's own step code (:class:`EstimateRunner`, a
:class:`~moakit.runner.engine.Runner` whose calls are answered from the cache or by a
placeholder instead of a model), so every request key is computed exactly as the run will
compute it: the same messages, settings, seeds, occurrence numbers, and the same Shuffle /
Dropout / Sample draws (the seeded generator of each run).

* A call whose prompt is made only of the query and of answers the cache holds has an
  **exact** key: whether it is paid or reused is known (``keys_exact`` counts them). Layer 0
  (the proposals) is always exact.
* A call that is shown an answer still to be paid for has a key that depends on that answer:
  it is **estimated**. It is counted as paid, except where the same request (the same upstream
  requests all the way down) is paid earlier in the same estimate: variants of an ablation share
  their upstream calls, and the later variants reuse them, exactly as the ablation will.
  Filter and Rank choices made on unknown answers, and Shuffle / Dropout / Sample without a
  ``seed``, make everything after them estimated.
* ``input_tokens`` are counted on the exact prompt with the model's tokenizer where litellm has
  one locally (``input_tokens_how`` says which); otherwise with ``cl100k_base``, scaled by the
  ratio of billed to counted tokens over up to 50 of the model's recorded calls when the store
  has them, and labelled an estimate. An answer not yet paid for is counted in a later prompt
  by its expected length.
* ``output_tokens`` are the mean of the store's recorded calls of the same agent, model and
  step (then agent and model, then model), capped by the call's ``max_tokens``; with no
  history, ``max_tokens`` itself (an upper bound). ``output_tokens_max`` is the bound.
* ``cost_usd`` is the expected cost of the paid calls at litellm's prices; ``cost_usd_max`` the
  worst case (what a budget reserves). A model without a price has NaN and ``priced=False``.

Failures and retries are not foreseen (a retried attempt that a provider bills would cost more).
Within one batch, two prompts that make the same request are both counted paid (they run
concurrently); across the batches of an estimate (variants, repeats) the later one reuses it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

from ..errors import PipelineError
from ..llm.pricing import count_input_tokens, price
from ..store.keys import derived_seed
from ..store.records import StepRecord, text_hash
from ..store.store import open_store
from .budget import worst_input_tokens
from .engine import Response, RunFailed, Runner, Session
from .loop import run_sync
from .plan import check_store, normalize_query, plan_run, prompt_list

ESTIMATE_COLUMNS = ["variant", "step_index", "step", "agent", "model", "calls", "calls_paid", "calls_reused",
                    "calls_missing", "keys_exact", "exact", "input_tokens", "input_tokens_how", "output_tokens",
                    "output_tokens_how", "output_tokens_max", "cost_usd", "cost_usd_max", "priced"]

MARK = "\u2063"  # placeholder texts are wrapped in this invisible separator
_PLACEHOLDER = re.compile(f"{MARK}moakit-estimate:([0-9a-f]+:\\d+){MARK}")
HISTORY_CALLS = 50  # recorded calls per model used to scale an estimated token count


def placeholder(key: str) -> str:
    """The stand-in for the answer to request ``key`` not yet paid for: the same request gives
    the same stand-in, so identical downstream requests get identical keys (as identical
    answers would give them)."""
    return f"{MARK}moakit-estimate:{key}{MARK}"


def unknown(r: Response) -> bool:
    return (r.span_id or "").startswith("?")


def tainted(r: Response) -> Response:
    """The same response, marked as not known for sure (a choice made on unknown answers)."""
    return r if unknown(r) else Response(r.text, r.agent, r.sample, "?" + (r.span_id or ""), r.text_hash)


class DryRecorder:
    """Records nothing; gives Map steps the content hash they ask for."""

    def content(self, text: str) -> tuple[str, str]:
        return text_hash(text), text


class Context:
    """What an estimate knows across its runs: the cache, its history, and what it will pay."""

    def __init__(self, cache):
        self.cache = cache
        self.rows: list[dict] = []
        self.variant: str | None = None
        self.paid_before: dict[str, str] = {}  # keys paid by earlier batches of this estimate
        self.paid_now: dict[str, str] = {}  # ... by the current batch
        self.expected_tokens: dict[str, float] = {}  # placeholder key -> expected output tokens
        self._history = None
        self._ratio: dict[str, tuple[float, int]] = {}

    def next_batch(self) -> None:
        self.paid_before.update(self.paid_now)
        self.paid_now = {}

    # ---- the store's history ---------------------------------------------------------------------
    def history(self) -> dict:
        if self._history is None:
            h: dict = {}
            if self.cache is not None:
                rows = self.cache.query(
                    "SELECT agent, model, step, sum(output_tokens), count(*) FROM spans WHERE kind = 'call' "
                    "AND cached = 0 AND error IS NULL AND output_tokens IS NOT NULL GROUP BY agent, model, step")
                for agent, model, step, total, n in rows:
                    for k in ((agent, model, step), (agent, model), (model,)):
                        t, c = h.get(k, (0, 0))
                        h[k] = (t + (total or 0), c + n)
            self._history = h
        return self._history

    def expected_output(self, agent: str, model: str, step: str, max_tokens: int) -> tuple[float, str]:
        h = self.history()
        for k, what in (((agent, model, step), f"{agent}'s {step} calls"), ((agent, model), f"{agent}'s calls"),
                        ((model,), f"calls of {model}")):
            if k in h and h[k][1]:
                total, n = h[k]
                return min(float(max_tokens), total / n), f"mean of {n} recorded {what}"
        return float(max_tokens), "max_tokens (no recorded calls: an upper bound)"

    def ratio(self, spec) -> tuple[float, int]:
        """Billed / counted input tokens over the model's recorded calls (1.0 with none)."""
        if spec.model in self._ratio:
            return self._ratio[spec.model]
        out = (1.0, 0)
        if self.cache is not None:
            rows = self.cache.query(
                "SELECT span_id, input_tokens FROM spans WHERE kind = 'call' AND cached = 0 AND error IS NULL "
                "AND model = ? AND input_hash IS NOT NULL AND input_tokens > 0 ORDER BY rowid DESC LIMIT ?",
                (spec.model, HISTORY_CALLS))
            if rows:
                contents = self.cache.call_contents([r[0] for r in rows])
                billed = counted = 0
                for span_id, n in rows:
                    msgs = contents.get(span_id, {}).get("messages")
                    if msgs:
                        counted += count_input_tokens(spec, msgs)[0]
                        billed += n
                if counted:
                    out = (billed / counted, len(rows))
        self._ratio[spec.model] = out
        return out

    def input_tokens(self, spec, messages: list[dict]) -> tuple[float, str, bool]:
        """Input tokens of a prompt that may hold placeholders (each counted by its expected length)."""
        extra = 0.0
        clean = []
        for m in messages:
            content = m.get("content") or ""
            for key in _PLACEHOLDER.findall(content):
                extra += self.expected_tokens.get(key, 0.0)
            clean.append({"role": m.get("role"), "content": _PLACEHOLDER.sub("", content)})
        n, how, exact = count_input_tokens(spec, clean)
        if not exact:
            r, k = self.ratio(spec)
            if k:
                n = n * r
                how += f" x {r:.2f} (billed/counted over {k} recorded calls)"
        if extra:
            how += "; answers not yet paid for counted by their expected length"
        return n + extra, how, exact and not extra


class EstimateRunner(Runner):
    """The engine's step code with calls answered from the cache or by placeholders."""

    def __init__(self, plan, session: Session, ctx: Context, seeded: bool):
        super().__init__(plan, session)
        self.ctx, self.seeded = ctx, seeded
        self.trace_id = "estimate"
        self.last_unknown = False

    async def call_layer(self, plans):
        ctx = self.ctx
        exact = [all(not unknown(r) for r in p.shown) for p in plans]
        hits = ctx.cache.lookup_many([p.key if e else "" for p, e in zip(plans, exact)]) if ctx.cache else \
            [None] * len(plans)
        out = []
        self.last_unknown = False
        for p, e, hit in zip(plans, exact, hits):
            spec = p.request.spec
            row = {"variant": ctx.variant, "step_index": p.step_index, "step": p.step_kind, "agent": p.agent,
                   "model": spec.model, "exact": e, "paid": False, "reused": False, "missing": False,
                   "max_tokens": p.request.max_tokens}
            if hit is not None:
                row["reused"] = True
                out.append(Response(hit[1], p.agent, p.sample, hit[0], None))
            else:
                self.last_unknown = True
                if p.key in ctx.paid_before:
                    row["reused"] = True
                elif spec.is_recorded:  # imported outputs only: the run would raise ReplayMiss
                    row["missing"] = True
                else:
                    row["paid"] = True
                    ctx.paid_now[p.key] = p.key
                    self.cost(p, row)
                if p.key not in ctx.expected_tokens:
                    ctx.expected_tokens[p.key] = ctx.expected_output(p.agent, spec.model, p.step_kind,
                                                                     p.request.max_tokens)[0]
                out.append(Response(placeholder(p.key), p.agent, p.sample, "?" + p.key, None))
            ctx.rows.append(row)
        return out

    def cost(self, p, row: dict) -> None:
        ctx, spec, req = self.ctx, p.request.spec, p.request
        n_in, in_how, in_exact = ctx.input_tokens(spec, req.messages)
        n_out, out_how = ctx.expected_output(p.agent, spec.model, p.step_kind, req.max_tokens)
        pr = price(spec)
        row.update(input_tokens=n_in, input_tokens_how=in_how, input_exact=in_exact, output_tokens=n_out,
                   output_tokens_how=out_how, output_tokens_max=req.max_tokens,
                   cost_usd=math.nan if pr is None else pr.cost(n_in, n_out),
                   cost_usd_max=math.nan if pr is None else pr.cost(worst_input_tokens(math.ceil(n_in)),
                                                                   req.max_tokens),
                   priced=pr is not None)

    async def step(self, index, step, responses, srec, texts):
        had_unknown = any(unknown(r) for r in responses)
        out = await super().step(index, step, responses, srec, texts)
        content_choice = step.kind == "Filter" and had_unknown
        rank_choice = step.kind == "Rank" and (had_unknown or self.last_unknown)
        random_choice = step.kind in ("Shuffle", "Dropout", "Sample") and not self.seeded
        if content_choice or rank_choice or random_choice:
            out = [tainted(r) for r in out]
        return out

    async def walk(self) -> None:
        responses: list[Response] = []
        for i, step in enumerate(self.plan.pipeline):
            srec = StepRecord("", "", "", 0, 0, i, step.kind, "")
            try:
                responses = await self.step(i, step, responses, srec, {})
            except RunFailed:  # e.g. a Filter that would drop everything: the run stops there
                return


def as_variants(pipeline) -> dict[str | None, Any]:
    if isinstance(pipeline, Mapping):
        if not pipeline:
            raise PipelineError("variants must be a non-empty dict of name -> pipeline")
        return dict(pipeline)
    return {None: pipeline}


async def aestimate(pipeline, prompts, *, models: Any = None, seed: int | None = None, cache: Any = None,
                    max_tokens: int | None = None, templates="together", repeats: int = 1, name: str | None = None):
    import pandas as pd

    variants = as_variants(pipeline)
    single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict))
    items = [prompts] if single else prompt_list(prompts)
    if not items:
        raise PipelineError("prompts is empty")
    queries = []
    for i, q in enumerate(items):
        try:
            queries.append(normalize_query(q))
        except PipelineError as e:
            raise PipelineError(f"prompt {i}: {e}") from None
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise PipelineError(f"repeats must be an integer >= 1, got {repeats!r}")
    if repeats > 1 and seed is None:
        raise PipelineError("repeats > 1 needs a seed (repeat r runs with seed + r, as ablate does)")
    if cache is True:
        raise PipelineError("estimate: cache= takes the store (or its path) the run will be served from")
    check_store(None if cache is False else cache)
    cache_store = None if cache is None or cache is False else open_store(cache, create=False)
    ctx = Context(cache_store)
    session = Session(None, DryRecorder(), None, cache=cache_store)
    plans = {v: plan_run(p, queries[0], seed=seed, models=models, templates=templates, max_tokens=max_tokens,
                         cache=cache_store, name=name, need_keys=False) for v, p in variants.items()}
    for r in range(repeats):
        s = None if seed is None else seed + r
        for v, base in plans.items():
            ctx.variant = "" if v is None else v
            base = dataclasses.replace(base, model_seed=s)
            for i, q in enumerate(queries):
                if single:
                    rng = s if s is not None else 0
                else:
                    rng = derived_seed(s, f"item{i}") if s is not None else 0
                runner = EstimateRunner(dataclasses.replace(base, query=q, rng_seed=rng), session, ctx,
                                        seeded=s is not None)
                await runner.walk()
            ctx.next_batch()
    return summarize(ctx.rows, variants=None not in variants, prompts=len(queries), repeats=repeats)


def summarize(rows: list[dict], *, variants: bool, prompts: int, repeats: int):
    import pandas as pd

    if not rows:
        return pd.DataFrame(columns=ESTIMATE_COLUMNS)
    df = pd.DataFrame(rows)
    for col, default in (("input_tokens", 0.0), ("output_tokens", 0.0), ("cost_usd", 0.0), ("cost_usd_max", 0.0),
                         ("output_tokens_max", 0), ("input_tokens_how", None), ("output_tokens_how", None),
                         ("priced", True), ("input_exact", True)):
        if col not in df.columns:
            df[col] = default
    df["output_tokens_max"] = df["output_tokens_max"].where(df["paid"], 0)
    keys = ["variant", "step_index", "step", "agent", "model"]
    df["variant"] = df["variant"].astype(object)
    out = []
    for k, g in df.groupby(keys, sort=False, dropna=False):
        paid = g[g["paid"]]
        hows_in = sorted({h for h in paid["input_tokens_how"] if isinstance(h, str)})
        hows_out = sorted({h for h in paid["output_tokens_how"] if isinstance(h, str)})
        priced = bool(paid["priced"].fillna(True).all())
        out.append(dict(zip(keys, k), calls=len(g), calls_paid=int(g["paid"].sum()),
                        calls_reused=int(g["reused"].sum()), calls_missing=int(g["missing"].sum()),
                        keys_exact=int(g["exact"].sum()), exact=bool(g["exact"].all()),
                        input_tokens=float(paid["input_tokens"].sum()), input_tokens_how="; ".join(hows_in) or None,
                        output_tokens=float(paid["output_tokens"].sum()),
                        output_tokens_how="; ".join(hows_out) or None,
                        output_tokens_max=int(paid["output_tokens_max"].sum()),
                        cost_usd=float(paid["cost_usd"].sum()) if priced else math.nan,
                        cost_usd_max=float(paid["cost_usd_max"].sum()) if priced else math.nan, priced=priced))
    res = pd.DataFrame(out, columns=ESTIMATE_COLUMNS)
    order = {v: i for i, v in enumerate(dict.fromkeys(res["variant"]))}
    res = res.assign(_order=[order[v] for v in res["variant"]]).sort_values(["_order", "step_index"], kind="stable")
    res = res.drop(columns=["_order"] + ([] if variants else ["variant"])).reset_index(drop=True)
    totals = {"calls": int(res["calls"].sum()), "calls_paid": int(res["calls_paid"].sum()),
              "calls_reused": int(res["calls_reused"].sum()), "calls_missing": int(res["calls_missing"].sum()),
              "keys_exact": int(res["keys_exact"].sum()), "cost_usd": float(res["cost_usd"].sum(skipna=False)),
              "cost_usd_max": float(res["cost_usd_max"].sum(skipna=False)),
              "input_tokens": float(res["input_tokens"].sum()), "output_tokens": float(res["output_tokens"].sum()),
              "prompts": prompts, "repeats": repeats}
    res.attrs["totals"] = totals
    res.attrs["summary"] = estimate_summary(res)
    return res


def estimate_summary(df) -> str:
    """One paragraph: calls paid and reused (how many exactly known), tokens, dollars."""
    t = df.attrs.get("totals") or {}
    if not t:
        return "nothing to estimate"
    cost = "unknown (a model has no price in litellm's map)" if t["cost_usd"] != t["cost_usd"] else \
        f"${t['cost_usd']:.4f} expected, at most ${t['cost_usd_max']:.4f}"
    est = t["calls"] - t["keys_exact"]
    exact = "all exact" if not est else f"{t['keys_exact']} exact, {est} estimated (their prompts hold answers " \
                                         "not yet paid for)"
    missing = f", {t['calls_missing']} imported outputs missing" if t["calls_missing"] else ""
    return (f"{t['calls']} calls: {t['calls_paid']} to pay, {t['calls_reused']} reused from the cache{missing} "
            f"({exact}); {t['input_tokens']:,.0f} input + {t['output_tokens']:,.0f} output tokens to pay for; {cost}")


def estimate(pipeline, prompts, *, models: Any = None, seed: int | None = None, cache: Any = None,
             max_tokens: int | None = None, templates="together", repeats: int = 1, name: str | None = None):
    """What running ``pipeline`` over ``prompts`` will pay for, before any call.

    Args:
        pipeline: a pipeline, or a dict of name -> pipeline (an ablation's variants, run one
            after another with the cache on, as :func:`moakit.analysis.ablate` runs them).
        prompts: one query (a string or message list: estimates :func:`moakit.run`) or a list /
            DataFrame of prompts (estimates :func:`moakit.run_batch`, whose items draw their
            own seeds).
        models, seed, max_tokens, templates: as the run will be given them (they are in the keys).
        cache: the store the run will be served from (``cache=`` of the run; a path or a TraceStore).
        repeats: ``ablate``'s repeats (repeat r uses seed + r).

    Returns a DataFrame, one row per step and agent (and variant): calls, calls_paid,
    calls_reused, calls_missing (imported outputs the store lacks), keys_exact (calls whose
    request key is known exactly) and exact (all of them), input_tokens and output_tokens of the
    calls to pay for, with how each was obtained, output_tokens_max (the bound by max_tokens),
    cost_usd (expected) and cost_usd_max (worst case), priced. ``df.attrs["totals"]`` sums it
    up and ``df.attrs["summary"]`` says it in a sentence. See the module doc for what is exact
    and what is estimated. No API key is needed and nothing is called."""
    return run_sync(aestimate(pipeline, prompts, models=models, seed=seed, cache=cache, max_tokens=max_tokens,
                              templates=templates, repeats=repeats, name=name))


async def ashow_estimate(pipeline, prompts, **kwargs):
    """Compute the estimate and show it (the table in a notebook, text elsewhere); returns it.
    (``run_batch(..., estimate=True)`` and ``ablate(..., estimate=True)`` call it first.)"""
    df = await aestimate(pipeline, prompts, **kwargs)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover
        shell = None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        from IPython.display import Markdown, display

        display(Markdown(f"**moakit estimate** (before any call): {df.attrs['summary']}"))
        display(df)
    else:
        print(f"moakit estimate (before any call): {df.attrs['summary']}")
    return df


def show_estimate(pipeline, prompts, **kwargs):
    """:func:`ashow_estimate` from synchronous code."""
    return run_sync(ashow_estimate(pipeline, prompts, **kwargs))
