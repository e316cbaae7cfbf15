#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with llm4tag (editable) and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: on our machines this takes the local CPU build; left to a dependency
# resolver, pip would fetch the newest CUDA build (gigabytes).
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
