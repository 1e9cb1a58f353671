"""Calling models: the caller (caps, adaptive limits, retries, timeouts, cost) over the direct
transport for OpenAI-compatible endpoints or litellm, and the embedded model. One outcome per
attempt; nothing here builds rows or spans."""

from .caller import Caller, ClientConfig, Outcome, Request, classify, get_litellm, retry_after

__all__ = ["Caller", "ClientConfig", "Outcome", "Request", "classify", "get_litellm", "retry_after"]
