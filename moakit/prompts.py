"""Prompt templates, each with its source. No logic beyond laying out messages.

Two template sets:

* ``"together"`` (default): the aggregate-and-synthesize prompt of Wang et al. 2024
  (arXiv 2406.04692, Table 1), laid out as the reference code togethercomputer/MoA
  (``utils.inject_references_to_messages``) lays it out: a **system** message holding the
  prompt followed by the numbered responses (``"\\n1. ..."``), placed before the user turn,
  which is the original query. If the conversation already starts with a system message, the
  block is appended to it after a blank line, as the reference code does.
* ``"mixture-llm"``: the shorter prompts of the mixture-llm library (src/mixture_llm/core.py),
  with the responses in the user message (``"Responses:\\n1. ...\\n\\n2. ...\\n\\nQuery: ..."``).

Refine, Rank and Vote have no prompt in the MoA paper; both sets use mixture-llm's wording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

Message = dict  # {"role": str, "content": str}

# Wang et al. 2024, Table 1 (identical to the reference code's system prompt).
TOGETHER_AGGREGATE = (
    "You have been provided with a set of responses from various open-source models to the latest user query. "
    "Your task is to synthesize these responses into a single, high-quality response. It is crucial to critically "
    "evaluate the information provided in these responses, recognizing that some of it may be biased or incorrect. "
    "Your response should not simply replicate the given answers but should offer a refined, accurate, and "
    "comprehensive reply to the instruction. Ensure your response is well-structured, coherent, and adheres to the "
    "highest standards of accuracy and reliability.\n\nResponses from models:"
)

# mixture-llm 0.1.3, src/mixture_llm/core.py
MIXTURE_SYNTH = (
    "You have been provided with responses from various models to a query. "
    "Synthesize into a single, high-quality response. "
    "Critically evaluate—some may be biased or incorrect. "
    "Do not simply replicate; offer a refined, accurate reply."
)
MIXTURE_REFINE = "Improve this response:\n\n{text}\n\nOriginal query: {query}"
MIXTURE_VOTE = (
    "These responses answer the same question. "
    "Identify the consensus view shared by the majority. "
    "If no clear consensus, select the most accurate answer. "
    "Return only that answer, restated clearly."
)
MIXTURE_RANK = (
    "Rank these responses by quality for the query: '{query}'\n\n"
    "{responses}\n\n"
    "Return the top {n} as comma-separated numbers (e.g., '3, 1, 5')."
)

SOURCES = {
    "TOGETHER_AGGREGATE": "Wang et al. 2024, arXiv 2406.04692, Table 1; togethercomputer/MoA utils.py",
    "MIXTURE_SYNTH": "mixture-llm 0.1.3 core.P_SYNTH",
    "MIXTURE_REFINE": "mixture-llm 0.1.3 core.P_REFINE",
    "MIXTURE_VOTE": "mixture-llm 0.1.3 core.P_VOTE",
    "MIXTURE_RANK": "mixture-llm 0.1.3 core.P_RANK",
}


def query_text(messages: Sequence[Message]) -> str:
    """The text of the last user turn: what Refine and Rank quote as the query."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return str(messages[-1].get("content", "")) if messages else ""


def numbered_system(prompt: str, responses: Sequence[str]) -> str:
    """The reference code's layout: prompt, then ``\\n1. r1\\n2. r2 ...``."""
    return prompt + "".join(f"\n{i + 1}. {r}" for i, r in enumerate(responses))


def numbered_blocks(responses: Sequence[str]) -> str:
    """mixture-llm's layout: ``1. r1\\n\\n2. r2``."""
    return "\n\n".join(f"{i + 1}. {r}" for i, r in enumerate(responses))


@dataclass(frozen=True)
class TemplateSet:
    """How each LLM step turns (query messages, current responses) into chat messages."""

    name: str
    synthesize: str
    vote: str
    refine: str
    rank: str
    responses_in_system: bool  # True: Together layout; False: mixture-llm layout

    def aggregate_messages(self, query: Sequence[Message], responses: Sequence[str], prompt: str | None = None,
                           vote: bool = False) -> list[Message]:
        """Messages for Synthesize / Aggregate (and Vote, with ``vote=True``)."""
        text = prompt or (self.vote if vote else self.synthesize)
        query = [dict(m) for m in query]
        if self.responses_in_system:
            system = numbered_system(text, responses)
            if query and query[0].get("role") == "system":
                query[0]["content"] = f"{query[0]['content']}\n\n{system}"
                return query
            return [{"role": "system", "content": system}, *query]
        user = f"Responses:\n{numbered_blocks(responses)}\n\nQuery: {query_text(query)}"
        return [{"role": "system", "content": text}, {"role": "user", "content": user}]

    def refine_messages(self, query: Sequence[Message], response: str, prompt: str | None = None) -> list[Message]:
        return [{"role": "user", "content": (prompt or self.refine).format(text=response, query=query_text(query))}]

    def rank_messages(self, query: Sequence[Message], responses: Sequence[str], n: int,
                      prompt: str | None = None) -> list[Message]:
        text = (prompt or self.rank).format(query=query_text(query), responses=numbered_blocks(responses), n=n)
        return [{"role": "user", "content": text}]


TOGETHER = TemplateSet(
    name="together",
    # Vote in the Together layout: mixture-llm's vote instruction, then the numbered responses.
    synthesize=TOGETHER_AGGREGATE,
    vote=MIXTURE_VOTE + "\n\nResponses from models:",
    refine=MIXTURE_REFINE,
    rank=MIXTURE_RANK,
    responses_in_system=True,
)

MIXTURE_LLM = TemplateSet(
    name="mixture-llm",
    synthesize=MIXTURE_SYNTH,
    vote=MIXTURE_VOTE,
    refine=MIXTURE_REFINE,
    rank=MIXTURE_RANK,
    responses_in_system=False,
)

TEMPLATE_SETS = {"together": TOGETHER, "mixture-llm": MIXTURE_LLM}


def get_template_set(name: str | TemplateSet) -> TemplateSet:
    if isinstance(name, TemplateSet):
        return name
    try:
        return TEMPLATE_SETS[name]
    except KeyError:
        from .errors import PipelineError

        raise PipelineError(f"unknown prompt set {name!r}; choose one of {sorted(TEMPLATE_SETS)}") from None
