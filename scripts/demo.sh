#!/usr/bin/env bash
# Set up, build a graph store from the bundled BANKING77 sample, and recall candidate tags for a few
# held-out queries with the bundled encoder (no network, no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
STORE=${STORE:-stores/banking77-sample}
mkdir -p out
.venv/bin/llm4tag build --items data/sample/banking77/train.jsonl --tags data/sample/banking77/tags.jsonl \
    --store "$STORE"
.venv/bin/llm4tag recall --store "$STORE" --input data/sample/banking77/queries.jsonl \
    --output out/banking77-candidates.jsonl
.venv/bin/llm4tag eval --gold data/sample/banking77/queries.jsonl --pred out/banking77-candidates.jsonl
.venv/bin/python - <<'PY'
import json
with open("data/sample/banking77/queries.jsonl") as fh:
    queries = {row["id"]: row for row in map(json.loads, fh)}
with open("out/banking77-candidates.jsonl") as fh:
    for row in list(map(json.loads, fh))[:5]:
        query = queries[row["id"]]
        top = ", ".join(f"{c['tag']} ({c['score']:.2f}, {'+'.join(c['paths'])})" for c in row["candidates"][:3])
        print(f"{query['text']!r}\n    gold: {query['tags'][0]}\n    top 3 of {len(row['candidates'])}: {top}")
PY
