"""The named pipelines of the mixture-llm "Pipelines" page, exactly as written there, and
paper-faithful variants where the page differs from the papers.

Differences from the papers (see docs in README):

* ``together_moa`` (page): Propose + 2 x Synthesize + Aggregate = 19 calls with 6 proposers.
  The MoA paper's 3-layer Together MoA (reference code: ``rounds = layers - 1 = 2``) is
  Propose + 1 x Synthesize + Aggregate = 13 calls: :data:`together_moa_paper`. Reference
  settings: temperature 0.7, max_tokens 2048 (AlpacaEval).
* ``moa_gpt5`` (page) quotes 65.7% with GPT-5.2; the paper's 65.7% was measured with a
  GPT-4o aggregator: :data:`moa_gpt4o_paper`.
* ``moa_lite`` (page) = the paper's MoA-Lite (2 layers, Qwen1.5-72B aggregator), but with the
  page's max_tokens 512; :data:`moa_lite_paper` uses the reference 2048.
"""

from __future__ import annotations

from .steps import Aggregate, Dropout, Propose, Rank, Refine, Shuffle, Synthesize, Vote

PROPOSERS = [
    "wizardlm-2-8x22b",
    "qwen1.5-110b-chat",
    "qwen1.5-72b-chat",
    "llama-3-70b-instruct",
    "mixtral-8x22b-instruct",
    "dbrx-instruct",
]

# ---- exactly as on the page -------------------------------------------------------------
together_moa = [
    Propose(PROPOSERS, temp=0.7, max_tokens=512),
    Synthesize(PROPOSERS, temp=0.7, max_tokens=512),
    Synthesize(PROPOSERS, temp=0.7, max_tokens=512),
    Aggregate("qwen1.5-110b-chat"),
]

moa_lite = [
    Propose(PROPOSERS, temp=0.7, max_tokens=512),
    Synthesize(PROPOSERS, temp=0.7, max_tokens=512),
    Aggregate("qwen1.5-72b-chat"),
]

moa_gpt5 = [
    Propose(PROPOSERS, temp=0.7, max_tokens=512),
    Synthesize(PROPOSERS, temp=0.7, max_tokens=512),
    Synthesize(PROPOSERS, temp=0.7, max_tokens=512),
    Aggregate("gpt-5.2-chat-latest"),
]

self_moa = [
    Propose(["gpt-4.1"] * 6, temp=0.7),
    Aggregate("gpt-4.1"),
]

self_moa_seq = [
    Propose(["gpt-4.1"] * 3, temp=0.7),
    Aggregate("gpt-4.1"),
    Propose(["gpt-4.1"] * 3, temp=0.7),
    Aggregate("gpt-4.1"),
]

robust_moa = [
    Propose(["gpt-5.2-chat-latest", "claude-sonnet-4-5", "llama-3.3-70b", "gemini-2.5-flash"]),
    Shuffle(),
    Dropout(0.2),
    Aggregate("gpt-5.2-chat-latest"),
]

rank_aggregate = [
    Propose(["gpt-5.2-chat-latest", "claude-sonnet-4-5", "llama-3.3-70b", "gemini-2.5-flash", "gpt-4.1-mini"]),
    Rank("gpt-5.2-chat-latest", n=3),
    Aggregate("gpt-5.2-chat-latest"),
]

vote_pipeline = [
    Propose(["gpt-5.2-chat-latest", "claude-sonnet-4-5", "llama-3.3-70b"], temp=0.3),
    Vote("gpt-5.2-chat-latest"),
]

refine_pipeline = [
    Propose(["gpt-4.1-mini", "claude-haiku-4", "llama-3.1-8b"]),
    Refine(["gpt-5.2-chat-latest"]),
    Aggregate("gpt-5.2-chat-latest"),
]

# ---- paper-faithful variants ------------------------------------------------------------
together_moa_paper = [  # 3 layers in the reference code's counting: 13 calls
    Propose(PROPOSERS, temp=0.7, max_tokens=2048),
    Synthesize(PROPOSERS, temp=0.7, max_tokens=2048),
    Aggregate("qwen1.5-110b-chat", temp=0.7, max_tokens=2048),
]

moa_lite_paper = [  # 2 layers, Qwen1.5-72B aggregator
    Propose(PROPOSERS, temp=0.7, max_tokens=2048),
    Aggregate("qwen1.5-72b-chat", temp=0.7, max_tokens=2048),
]

moa_gpt4o_paper = [  # the paper's 65.7%: Together MoA proposers, GPT-4o as final aggregator
    Propose(PROPOSERS, temp=0.7, max_tokens=2048),
    Synthesize(PROPOSERS, temp=0.7, max_tokens=2048),
    Aggregate("gpt-4o", temp=0.7, max_tokens=2048),
]

PAGE = ["together_moa", "moa_lite", "moa_gpt5", "self_moa", "self_moa_seq", "robust_moa",
        "rank_aggregate", "vote_pipeline", "refine_pipeline"]
PAPER = ["together_moa_paper", "moa_lite_paper", "moa_gpt4o_paper"]

SOURCES = {
    "together_moa": "mixture-llm Pipelines page (19 calls; one Synthesize more than the paper)",
    "moa_lite": "mixture-llm Pipelines page",
    "moa_gpt5": "mixture-llm Pipelines page (its 65.7% was measured with GPT-4o)",
    "self_moa": "mixture-llm Pipelines page; Li et al. 2025, arXiv 2502.00674",
    "self_moa_seq": "mixture-llm Pipelines page; Li et al. 2025 (sliding window)",
    "robust_moa": "mixture-llm Pipelines page",
    "rank_aggregate": "mixture-llm Pipelines page",
    "vote_pipeline": "mixture-llm Pipelines page",
    "refine_pipeline": "mixture-llm Pipelines page",
    "together_moa_paper": "Wang et al. 2024 Together MoA, 3 layers, reference settings (13 calls)",
    "moa_lite_paper": "Wang et al. 2024 MoA-Lite, 2 layers, Qwen1.5-72B aggregator",
    "moa_gpt4o_paper": "Wang et al. 2024 MoA w/ GPT-4o aggregator (65.7% LC)",
}

ALL = {name: globals()[name] for name in PAGE + PAPER}


def get(name: str):
    """A named pipeline, or a clear error listing the names."""
    from .errors import PipelineError

    try:
        return ALL[name]
    except KeyError:
        raise PipelineError(f"unknown pipeline {name!r}; known: {', '.join(ALL)}") from None


def count_calls(pipeline) -> int:
    """LLM calls the pipeline makes when nothing fails and Dropout drops nothing."""
    calls = responses = 0
    for s in pipeline:
        if s.kind == "Propose":
            calls += len(s.agents)
            responses += len(s.agents)
        elif s.kind == "Synthesize":
            calls += len(s.agents)
            responses = len(s.agents)
        elif s.kind in ("Aggregate", "Vote"):
            calls += 1
            responses = 1
        elif s.kind == "Rank":
            calls += 1
            responses = min(responses, s.n)
        elif s.kind == "Refine":
            calls += responses
        elif s.kind in ("Take", "Sample"):
            responses = min(responses, s.n)
    return calls
