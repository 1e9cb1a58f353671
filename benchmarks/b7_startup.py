"""B7 start-up: whole-process time of ``python -c "import moakit"`` against ``python -c "pass"``
(the interpreter's own start), run alternately; medians. Also checks that importing moakit
loads none of litellm, pandas, ipywidgets or llama_cpp, and times ``import mixture_llm``."""

from __future__ import annotations

import os
import subprocess
import sys

from .common import CaseResult, Row, alternate, median, spread


def _python(code: str):
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}

    def go(_i):
        subprocess.run([sys.executable, "-c", code], check=True, env=env, stdout=subprocess.DEVNULL)
    return go


def run(quick: bool) -> CaseResult:
    runs = 3 if quick else 15
    res = CaseResult("B7", "start-up: python -c 'import moakit'")
    a, b, c = alternate([_python("import moakit"), _python("pass"), _python("import mixture_llm")], runs, warmup=1)
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, moakit; print(','.join(m for m in ('litellm', 'pandas', 'ipywidgets', "
         "'llama_cpp', 'opentelemetry') if m in sys.modules))"],
        capture_output=True, text=True, check=True).stdout.strip()
    res.rows.append(Row("B7", "python -c 'import moakit', s (whole process)", f"{median(a):.3f}",
                        f"{median(c):.3f} (import mixture_llm)", goal="<= 0.3 s", met=median(a) <= 0.3))
    res.rows.append(Row("B7", "of which the interpreter's own start (python -c pass), s", f"{median(b):.3f}"))
    res.details = {"import_moakit_s": a, "pass_s": b, "import_mixture_llm_s": c, "heavy_modules_loaded": heavy}
    res.notes.append(f"{runs} alternating runs each; import moakit {spread(a)} s, pass {spread(b)} s; heavy modules "
                     f"loaded by 'import moakit': {heavy or 'none'}")
    return res
