#!/usr/bin/env bash
# The test command: install moakit with its test extras (and Debian's chromium for the browser
# test), then run the whole suite, notebooks included (nbmake), on the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True
PY=${PYTHON:-python3}
"$PY" -m pip install -q -e ".[dev]"
if [ ! -x /usr/lib/chromium/chromium ] && [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; the browser test will be skipped"
fi
exec "$PY" -m pytest tests notebooks --nbmake -q -p no:cacheprovider "$@"
