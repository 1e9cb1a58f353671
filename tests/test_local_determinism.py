"""A seeded batch on the embedded model is reproducible: the same outputs in fresh processes,
whatever order its concurrent calls reached the model in."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
import moakit
from moakit.pipelines import moa_lite
df = moakit.run_batch(moa_lite, ["Name a fruit.", "What is 2+2?", "Name a color."], models="local", seed=7,
                      max_tokens=12, progress=False, store=sys.argv[1])
calls = moakit.TraceStore(sys.argv[1]).calls()
print(json.dumps({"outputs": df.output.tolist(), "calls": sorted(zip(calls.request_key, calls.output))}))
"""


@pytest.mark.slow
def test_seeded_batch_on_the_embedded_model_is_identical_in_fresh_processes(tmp_path):
    seen = []
    for i in range(5):
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"run{i}.db")], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        seen.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert all(s["outputs"] for s in seen) and len(seen[0]["calls"]) == 3 * 13  # moa_lite: 6 proposers, 6 synthesizers, 1 aggregator
    for s in seen[1:]:
        assert s == seen[0]
