"""Prices and token counts before a call is made, from litellm's local price map and its
tokenizers (for the budget's worst case and for ``moakit.estimate``).

Nothing here touches the network: litellm's price map is the local copy
(``LITELLM_LOCAL_MODEL_COST_MAP=True``), and a tokenizer litellm would download from a hub
(Llama, Cohere) is never asked for: those models are counted with ``cl100k_base`` and the count
is labelled an estimate.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

from ..models import ModelSpec
from .caller import get_litellm

# tokenizers litellm ships inside its package (no download)
BUNDLED_TOKENIZERS = ("anthropic", "deepseek")
# OpenAI models whose tokenizer is cl100k_base, litellm's default encoding: counted exactly
_CL100K_MODELS = re.compile(r"(?:^|/)(?:gpt-3\.5|gpt-4(?![o.\d])|gpt-4-|text-embedding-3|text-embedding-ada)")


@dataclass(frozen=True)
class Price:
    """USD per token, and where the price came from."""

    input: float
    output: float
    source: str  # "litellm price map" | "embedded model (free)" | "imported outputs (never paid)"

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        return self.input * input_tokens + self.output * output_tokens


FREE_LOCAL = Price(0.0, 0.0, "embedded model (free)")
FREE_RECORDED = Price(0.0, 0.0, "imported outputs (never paid)")


def price(spec: ModelSpec) -> Price | None:
    """The model's price per token (None: litellm's price map has no price for it)."""
    if spec.is_local:
        return FREE_LOCAL
    if spec.is_recorded:
        return FREE_RECORDED
    litellm = get_litellm()
    try:
        info = litellm.get_model_info(spec.model)
    except Exception:  # noqa: BLE001 - litellm raises for a model it does not know
        return None
    i, o = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if i is None and o is None:
        return None
    return Price(float(i or 0.0), float(o or 0.0), "litellm price map")


_counts: dict[tuple[str, str], tuple[int, str, bool]] = {}


def tokenizer_for(model: str) -> tuple[str | None, str, bool]:
    """(model name to give ``litellm.token_counter``, the tokenizer's description, exact):
    the model's own tokenizer when litellm has it locally, else cl100k_base (an estimate)."""
    try:
        from litellm.utils import huggingface_tokenizer_kind
    except ImportError:  # pragma: no cover - older litellm
        huggingface_tokenizer_kind = None
    bare = model.split("/", 1)[-1]
    kind = None
    if huggingface_tokenizer_kind is not None:
        kind = huggingface_tokenizer_kind(model) or huggingface_tokenizer_kind(bare)
    if kind in BUNDLED_TOKENIZERS:
        name = model if huggingface_tokenizer_kind(model) else bare
        if kind == "anthropic" and not re.search(r"claude-(?:2|instant)", model):
            # litellm's bundled Anthropic tokenizer is Claude 2's: later Claudes tokenize differently
            return name, "estimated with litellm's anthropic (Claude 2) tokenizer", False
        return name, f"litellm's {kind} tokenizer", True
    if kind is None and _CL100K_MODELS.search(model):
        return model, "cl100k_base (the model's tokenizer)", True
    # no local tokenizer for this model (Llama and Cohere ones would be downloaded): cl100k_base
    return "", "estimated with cl100k_base", False


def count_input_tokens(spec: ModelSpec, messages: Sequence[dict]) -> tuple[int, str, bool]:
    """(input tokens of a chat request, how they were counted, exact). Memoized per model and
    messages: a layer's calls share their prompt."""
    h = hashlib.blake2b(repr([(m.get("role"), m.get("content")) for m in messages]).encode("utf-8", "surrogatepass"),
                        digest_size=16).hexdigest()
    hit = _counts.get((spec.model, h))
    if hit is not None:
        return hit
    name, how, exact = tokenizer_for(spec.model)
    litellm = get_litellm()
    msgs = [{"role": m.get("role"), "content": m.get("content") or ""} for m in messages]
    n = int(litellm.token_counter(model=name, messages=msgs))
    if len(_counts) > 65536:
        _counts.clear()
    _counts[(spec.model, h)] = out = (n, how, exact)
    return out


def count_text_tokens(spec: ModelSpec, text: str) -> int:
    """Tokens of a bare text with the tokenizer :func:`tokenizer_for` picks."""
    name, _, _ = tokenizer_for(spec.model)
    return int(get_litellm().token_counter(model=name, text=text))
