"""moakit benchmarks, side by side with mixture-llm: ``python -m benchmarks.run [--quick|--full]``.

Cases B1..B7 (see ``BENCHMARKS.md`` and ``docs/benchmarks.md``): critical path, overhead per
call, batch throughput, replay, store scale, the embedded model, start-up. Every comparison runs
its contenders alternately (A B A B ...) in one process and quotes medians and pair-by-pair
ratios. Quick mode is a smoke test (small sizes, no timing asserts); full mode makes the figures.
"""
