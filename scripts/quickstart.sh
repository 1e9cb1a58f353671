#!/usr/bin/env bash
# The main job: install moakit, run the reference page's Together MoA on the embedded model
# (no API key, no network), write the traces to traces/moakit.db and show the answer and calls.
# The first install compiles llama-cpp-python (about 6 minutes on 2 cores; pip caches it).
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True
PY=${PYTHON:-python3}
"$PY" -m pip install -q -e .
"$PY" -m moakit.cli run together_moa "What are the advantages of combining several language models?" \
    --models local --seed 0 --max-tokens ${MAX_TOKENS:-96} --traces traces/moakit.db
echo
"$PY" -m moakit.cli traces ls --traces traces/moakit.db | tail -n 5
