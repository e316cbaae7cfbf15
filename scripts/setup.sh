#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with llm4tag (editable) and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Re-install only when the dependencies changed (the editable install tracks the code itself).
stamp=.venv/.llm4tag-installed
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/llm4tag ]; then
    exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: on our machines this takes the local CPU build; left to a dependency
# resolver, pip would fetch the newest CUDA build (gigabytes).
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]" 2> >(grep -v -e "Warning" -e "^ " -e "^$" -e "!!" >&2 || true)
echo "$want" > "$stamp"
