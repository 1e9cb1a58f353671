"""The result of a run: the answer, its trace id, and DataFrames read back from the store."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """``output`` is the final answer (``None`` when the run failed: see ``error``; a raw
    proposal is never passed off as the answer). ``calls`` is a DataFrame of every LLM call."""

    output: str | None
    trace_id: str
    store: Any = field(repr=False)
    error: str | None = None
    responses: list = field(default_factory=list, repr=False)
    seed: int | None = None
    calls_paid: int = 0
    calls_reused: int = 0
    pipeline: list = field(default_factory=list, repr=False)
    query: list = field(default_factory=list, repr=False)
    view: Any = field(default=None, repr=False, compare=False)  # the live view that showed this run (live=True)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def calls(self):
        return self.store.calls(self.trace_id)

    @property
    def steps(self):
        return self.store.steps(self.trace_id)

    @property
    def cost_usd(self) -> float:
        """Money spent by this run (calls served from the store cost nothing)."""
        c = self.calls
        paid = c[~c["cached"]]
        return float(paid["cost_usd"].fillna(0).sum())

    @property
    def usage(self) -> dict[str, int]:
        c = self.calls
        return {"input_tokens": int(c["input_tokens"].fillna(0).sum()),
                "output_tokens": int(c["output_tokens"].fillna(0).sum()), "calls": int(len(c)),
                "attempts": int(c["attempts"].fillna(0).sum())}

    def summary(self) -> str:
        u = self.usage
        state = "ok" if self.ok else f"FAILED: {self.error}"
        return (f"run {self.trace_id[:12]} {state}: {u['calls']} calls ({self.calls_paid} paid, {self.calls_reused} "
                f"reused), {u['input_tokens']} input + {u['output_tokens']} output tokens, ${self.cost_usd:.4f}")

    def __repr__(self) -> str:
        out = self.output if self.output is None else (self.output[:200] + ("..." if len(self.output) > 200 else ""))
        return f"Result(trace_id={self.trace_id[:12]!r}, ok={self.ok}, output={out!r})"

    def _ipython_display_(self):
        # the viewer lives in a higher layer (widgets read runs; runs never draw): looked up by
        # name when a notebook displays the result, not imported by this module
        importlib.import_module("moakit.widgets").show_result(self)
