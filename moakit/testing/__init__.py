"""Test helpers that users may reuse: a stub OpenAI-compatible server for latency and faults."""
