"""Two commits of moakit, side by side: each case run by each commit's own benchmark code in a
fresh process, alternating (base, new, base, new, ...), so a drift of the machine's speed hits
both alike. Prints and returns each figure's median per commit and the median of the pair-by-pair
ratios (new / base).

    python -m benchmarks.compare_commits --base 7dc159d --new HEAD --cases B2,B4,B5 --rounds 3

Each commit is checked out into a temporary git worktree (removed afterwards); the benchmarks
run there with that commit's code. ``--b5-calls`` sizes B5 (its full size, a million calls,
takes minutes per run)."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = {"B1": "b1_critical_path", "B2": "b2_overhead", "B3": "b3_batch", "B4": "b4_replay", "B5": "b5_store",
           "B6": "b6_local", "B7": "b7_startup"}

RUNNER = r"""
import json, sys
from benchmarks import {module} as m
res = m.run(False{extra})
print("COMPARE " + json.dumps({{"error": res.error, "rows": [[r.measure, r.moakit] for r in res.rows]}}))
"""


def number(text: str) -> float | None:
    m = re.match(r"\s*([-+]?[0-9][0-9,]*\.?[0-9]*(?:e[-+]?\d+)?)", str(text))
    return float(m.group(1).replace(",", "")) if m else None


def run_once(tree: Path, case: str, b5_calls: int | None) -> dict[str, float]:
    extra = f", n={b5_calls}" if case == "B5" and b5_calls else ""
    env = {**os.environ, "PYTHONPATH": str(tree), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.run([sys.executable, "-c", RUNNER.format(module=MODULES[case], extra=extra)], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=3600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("COMPARE ")), None)
    if line is None:
        raise RuntimeError(f"{case} at {tree} printed no figures:\n{proc.stderr[-3000:]}")
    data = json.loads(line[len("COMPARE "):])
    if data["error"]:
        raise RuntimeError(f"{case} at {tree} failed: {data['error']}")
    return {measure: v for measure, value in data["rows"] if (v := number(value)) is not None}


def compare(base: str, new: str, cases: list[str], rounds: int, b5_calls: int | None, log=print) -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory(prefix="moakit-compare-") as tmp:
        trees = {}
        for label, ref in (("base", base), ("new", new)):
            tree = Path(tmp) / label
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], cwd=ROOT, check=True,
                           capture_output=True)
            trees[label] = tree
        try:
            for case in cases:
                seen: dict[str, dict[str, list[float]]] = {"base": {}, "new": {}}
                for r in range(rounds):
                    for label in ("base", "new") if r % 2 == 0 else ("new", "base"):
                        figures = run_once(trees[label], case, b5_calls)
                        for k, v in figures.items():
                            seen[label].setdefault(k, []).append(v)
                        log(f"{case} round {r + 1} {label}: " + "; ".join(f"{k}: {v:g}" for k, v in figures.items()))
                for measure in seen["base"]:
                    b, n = seen["base"][measure], seen["new"].get(measure)
                    if not n:
                        continue
                    ratios = [y / x for x, y in zip(b, n) if x]
                    out.append({"case": case, "measure": measure, "base": statistics.median(b),
                                "new": statistics.median(n), "ratio": statistics.median(ratios) if ratios else None,
                                "runs": len(b)})
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare_commits", description=__doc__)
    ap.add_argument("--base", required=True)
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--cases", default="B2,B4,B5")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--b5-calls", type=int, default=200_000)
    ap.add_argument("--json", help="write the comparison here")
    a = ap.parse_args(argv)
    rows = compare(a.base, a.new, [c.strip() for c in a.cases.split(",")], a.rounds, a.b5_calls)
    print(f"\n| case | figure | {a.base} | {a.new} | new / base (median of pairs) |\n|---|---|---|---|---|")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(f"| {r['case']} | {r['measure']} | {r['base']:,.4g} | {r['new']:,.4g} | {ratio} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"base": a.base, "new": a.new, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
