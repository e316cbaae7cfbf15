#!/usr/bin/env bash
# The README's main command: set up, install the bundled LLM, build a store from the bundled BANKING77
# sample (once: later runs keep it, with the feedback it has recorded), start a local Ray cluster with
# the Serve application (serve_config.cpu.yaml), tag a few held-out queries over HTTP, print them and
# the dashboard URL, and keep serving until Ctrl-C.
#   MODEL=tiny bash scripts/serve.sh      the 135M test model: starts fast, but its answers are noise
#   PORT=8001 bash scripts/serve.sh       another HTTP port (default 8000)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=${MODEL:-default}
STORE=${STORE:-stores/sample}
.venv/bin/llm4tag models install "$MODEL"
if [ ! -f "$STORE/CURRENT" ]; then
    .venv/bin/llm4tag build --items data/sample/banking77/train.jsonl --tags data/sample/banking77/tags.jsonl \
        --knowledge data/sample/knowledge/banking77_rules.md --store "$STORE"
fi
exec .venv/bin/llm4tag serve --config serve_config.cpu.yaml --store "$STORE" --model "$MODEL" \
    ${PORT:+--port "$PORT"} --demo data/sample/banking77/queries.jsonl --demo-items "${ITEMS:-4}"
