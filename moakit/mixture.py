"""mixture-llm's step objects -> moakit steps, by their class names and fields.

The code of the mixture-llm "Pipelines" page builds its pipelines from ``mixture_llm``'s steps
(``from mixture_llm import Propose, Aggregate``). They are NamedTuples with the fields of
moakit's steps, under the same class names: this module turns each into the moakit step it
describes, so ``moakit.run(pipeline, query)`` runs that code unchanged. It never imports
mixture_llm (moakit does not depend on it): an object is recognised by its class name and the
fields it has, and any object that looks the same converts the same way.

What carries over and what differs:

* Every field keeps its value: agents (a list becomes a tuple), ``temp``, ``max_tokens``,
  Rank's ``n``, Filter's and Map's ``fn``, Dropout's ``rate`` (moakit calls it ``p``).
* A ``prompt`` equal to mixture-llm's default (``P_SYNTH``, ``P_VOTE``, ``P_REFINE``,
  ``P_RANK``: the texts of :mod:`moakit.prompts`' "mixture-llm" set) becomes ``None``: the
  run's ``templates=`` then decides. ``templates="mixture-llm"`` sends exactly the messages
  mixture-llm sends (``tests/test_prompts.py``); the default ``"together"`` lays them out as the
  MoA paper does. A prompt the user wrote is kept as written.
* The steps then run with moakit's semantics, which differ from mixture-llm's in two places:
  a ``Propose`` after earlier steps appends its answers to the responses carried over (mixture-llm
  replaces them), and Shuffle / Dropout / Sample draw from the run's seeded generator, not
  from Python's global ``random``.
* Invalid values fail as moakit's steps fail (``Dropout(1.0)``, which mixture-llm accepts,
  is refused: moakit keeps ``p`` in [0, 1)).

:func:`moakit.steps.validate_pipeline` calls :func:`convert_step` on every element that is
not a moakit step, so every entry point (``run``, ``run_batch``, ``ablate``, ``estimate``)
accepts these pipelines.
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import PipelineError
from .prompts import MIXTURE_RANK, MIXTURE_REFINE, MIXTURE_SYNTH, MIXTURE_VOTE

# class name -> (fields read, moakit's name for each, mixture-llm's default prompt or None)
FIELDS: dict[str, tuple[tuple[str, ...], dict[str, str], str | None]] = {
    "Propose": (("agents", "temp", "max_tokens"), {}, None),
    "Synthesize": (("agents", "prompt", "temp", "max_tokens"), {}, MIXTURE_SYNTH),
    "Aggregate": (("agent", "prompt", "temp", "max_tokens"), {}, MIXTURE_SYNTH),
    "Refine": (("agents", "prompt", "temp", "max_tokens"), {}, MIXTURE_REFINE),
    "Rank": (("agent", "n", "prompt", "temp", "max_tokens"), {}, MIXTURE_RANK),
    "Vote": (("agent", "prompt", "temp", "max_tokens"), {}, MIXTURE_VOTE),
    "Shuffle": ((), {}, None),
    "Dropout": (("rate",), {"rate": "p"}, None),
    "Sample": (("n",), {}, None),
    "Take": (("n",), {}, None),
    "Filter": (("fn",), {}, None),
    "Map": (("fn",), {}, None),
}


def looks_like_mixture_step(obj: Any) -> bool:
    """True when ``obj`` has the class name and every field of one of mixture-llm's steps."""
    spec = FIELDS.get(type(obj).__name__)
    return spec is not None and all(hasattr(obj, f) for f in spec[0])


def convert_step(obj: Any, step_types: Mapping[str, type], index: int | None = None):
    """The moakit step (an instance from ``step_types``, class name -> class) that ``obj``,
    one of mixture-llm's steps, describes; ``None`` when ``obj`` is not one of them.

    ``step_types`` is passed in (it is :data:`moakit.steps.STEP_TYPES`) so that this module
    need not import :mod:`moakit.steps`, which calls it."""
    if not looks_like_mixture_step(obj):
        return None
    name = type(obj).__name__
    fields, renamed, default_prompt = FIELDS[name]
    kwargs = {}
    for f in fields:
        value = getattr(obj, f)
        if f == "prompt" and value == default_prompt:
            continue  # mixture-llm's default: the run's template set decides (see the module doc)
        if f == "agents" and isinstance(value, list):
            value = tuple(value)
        kwargs[renamed.get(f, f)] = value
    where = "" if index is None else f"step {index} "
    try:
        return step_types[name](**kwargs)
    except PipelineError as e:
        raise PipelineError(f"{where}({name} from mixture_llm, converted by its fields): {e}") from None
    except TypeError as e:  # a field of an unexpected type the step's constructor cannot take
        raise PipelineError(f"{where}{obj!r} looks like mixture_llm's {name} but cannot be converted: {e}") from None
