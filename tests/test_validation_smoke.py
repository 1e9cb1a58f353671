"""CI runs every validation case at its quick size: each simulates and analyses a few datasets
through the public API without error (the full run, which checks the goals, writes VALIDATION.md)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_validation_quick_runs_every_case():
    from validation.run import all_cases

    proc = subprocess.run([sys.executable, "-m", "validation.run", "--quick", "--jobs", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case in all_cases():
        assert f"| {case.analysis} | {case.name} |" in proc.stdout, f"case {case.analysis}/{case.name} did not report"
